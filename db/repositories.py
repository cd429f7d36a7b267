"""SQL repositories: one class per repository Protocol of :mod:`storm.ports.store`.  See docs/database.md.

Each repository runs Core statements on the unit of work's connection (``db.store._Connection``) and maps
rows to the frozen dataclasses of :mod:`storm.domain` (no ORM objects, so no identity map to go stale after
an UPDATE).
Every tenant-owned statement filters on ``workspace_id``, the first argument of each method; a row id
from another workspace therefore finds nothing.  Database errors leave through :func:`db.errors.translated`
as Conflict / NotFound / Unavailable / SerializationFailure.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import (
    CursorResult,
    Executable,
    Result,
    Table,
    any_,
    bindparam,
    case,
    delete,
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from db import models as m
from db.dml import insert_or_skip
from db.errors import translated
from storm.domain import (
    Channel,
    ChannelKind,
    Membership,
    Message,
    Reaction,
    ReadMarker,
    Role,
    User,
    Workspace,
)
from storm.errors import NotFound
from storm.ports.store import NO_HEAD, UNREAD_MAX
from storm.webhooks import DeliveryAttempt, DeliveryStatus, IncomingWebhook, Webhook

# Bound parameters per statement: SQLite before 3.32 allowed 999, later builds 32766; asyncpg allows
# 32767.  Batches are cut so a chunk of messages stays under the smaller limit that applies.
_SQLITE_MAX_PARAMS = 32766 if sqlite3.sqlite_version_info >= (3, 32) else 999
_PG_MAX_PARAMS = 32767


def to_db_time(value: datetime | None) -> datetime | None:
    """UTC, aware.  SQLite stores the wall clock and drops the zone, so convert before storing."""
    if value is None or value.tzinfo is UTC:  # the common case: the persistence worker makes UTC times
        return value
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def from_db_time(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes (stored as UTC); PostgreSQL aware ones.  Both become aware UTC."""
    return to_db_time(value)


def _aware(value: datetime) -> datetime:
    result = from_db_time(value)
    assert result is not None
    return result


READ_STATE_CHUNK = 100  # (user, channel) pairs per statement of SqlReadMarkerRepository.unread_at


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class _Executes(Protocol):
    """What a repository executes its Core statements on (``db.store._Connection``)."""

    async def execute(self, statement: Executable, parameters: Any = None) -> Result[Any]: ...


def _in(name: str) -> Any:
    """An expanding bind parameter: ``column.in_(_in("ids"))``, the list given at execution (through
    :func:`_listed`)."""
    return bindparam(name, expanding=True)


def _any(name: str, column: Any) -> Any:
    """``column = ANY(:name)``, the list given at execution as one array parameter (PostgreSQL)."""
    return column == any_(bindparam(name, type_=postgresql.ARRAY(column.type)))


def _forms(build: Callable[[Any], Any], name: str, column: Any) -> tuple[Any, Any]:
    """A batched look-up in its two forms, ``build(condition)`` with ``column = ANY(:name)`` (PostgreSQL) and
    with ``column IN (:name…)`` (elsewhere); :meth:`_Repository._lookup` picks one."""
    return build(_any(name, column)), build(column.in_(_in(name)))


def _listed(values: Sequence[Any]) -> list[Any]:
    """The values of an expanding ``IN``, padded to a power of two with the last one repeated.

    An expanding parameter renders one placeholder per value, so each list length is a statement of its
    own, and the driver prepares each once per pooled connection (asyncpg through SQLAlchemy keeps 100 per
    connection): the directory's batched reads, of any length from 1 to 500, kept evicting one another and
    a storm day gateway spent ≈ 4 % of its samples preparing statements again (py-spy, 2026-12-08).  Padded,
    a statement has at most ten forms; a value repeated in an ``IN`` changes no result.
    """
    out = list(values)
    if out:
        size = 1 << (len(out) - 1).bit_length()
        out.extend(out[-1:] * (size - len(out)))
    return out


# The reads of a connect and of a history page, built once (docs/database.md "Statements built once"): a
# statement built at each call costs its construction and its cache key (SQLAlchemy keys every execution to
# find the compiled form; a statement object reused keeps its key), about half of a one-statement read's
# CPU on the gateway (≈ 366 against ≈ 183 µs for a user look-up by subject, in-process).
_WORKSPACE = select(m.workspaces).where(m.workspaces.c.id == bindparam("id"))
_WORKSPACE_BY_SLUG = select(m.workspaces).where(m.workspaces.c.slug == bindparam("slug"))
# the batched look-ups in two forms: PostgreSQL's array (one statement, one parameter, whatever the length:
# 9-35 % less client CPU than the expanding IN for 1-200 ids, measured 2026-12-08), the padded expanding IN
# elsewhere (SQLite has no arrays; CockroachDB keeps the portable form until this has run on a cluster)
_USERS = _forms(select(m.users).where, "ids", m.users.c.id)
_USERS_BY_SUBJECT = _forms(select(m.users).where, "subjects", m.users.c.subject)
_MEMBERSHIP = select(m.memberships).where(m.memberships.c.workspace_id == bindparam("ws"),
                                          m.memberships.c.user_id == bindparam("user"))
_MEMBERSHIPS = _forms(select(m.memberships).where(m.memberships.c.workspace_id == bindparam("ws")).where, "users",
                      m.memberships.c.user_id)
_CHANNEL = select(m.channels).where(m.channels.c.workspace_id == bindparam("ws"), m.channels.c.id == bindparam("id"))
_CHANNEL_MEMBER = select(m.channel_members.c.user_id).where(
    m.channel_members.c.workspace_id == bindparam("ws"), m.channel_members.c.channel_id == bindparam("channel"),
    m.channel_members.c.user_id == bindparam("user"))
_NEWEST = (select(m.messages)
           .where(m.messages.c.workspace_id == bindparam("ws"), m.messages.c.channel_id == bindparam("channel"))
           .order_by(m.messages.c.offset.desc()).limit(bindparam("limit")))
_BEFORE = _NEWEST.where(m.messages.c.offset < bindparam("before"))
_REACTION_COUNTS = _forms(lambda ids: select(m.reactions.c.message_id, m.reactions.c.emoji, func.count())
                          .where(m.reactions.c.workspace_id == bindparam("ws"), ids)
                          .group_by(m.reactions.c.message_id, m.reactions.c.emoji), "ids", m.reactions.c.message_id)


class _Repository:
    def __init__(self, session: _Executes, dialect: str) -> None:
        self._session = session
        self._dialect = dialect

    async def _execute(self, statement: Executable, parameters: Mapping[str, Any] | None = None) -> Result[Any]:
        with translated():
            return await self._session.execute(statement, parameters)

    async def _rowcount(self, statement: Executable) -> int:
        """Rows an UPDATE or DELETE (without RETURNING) matched."""
        result = await self._execute(statement)
        if not isinstance(result, CursorResult):  # what a DML statement always answers with
            raise TypeError(f"expected a cursor result, got {type(result).__name__}")
        return result.rowcount

    def _lookup(self, statements: tuple[Any, Any], name: str, values: Sequence[Any],
                **params: Any) -> tuple[Any, dict[str, Any]]:
        """A batched look-up's statement and parameters: the array form on PostgreSQL, else the padded IN."""
        if self._dialect == "postgresql":
            return statements[0], {**params, name: list(values)}
        return statements[1], {**params, name: _listed(values)}

    def _insert(self, table: Table) -> Any:
        """The dialect's INSERT, which has ON CONFLICT (CockroachDB speaks PostgreSQL's)."""
        if self._dialect == "sqlite":
            return sqlite.insert(table)
        if self._dialect in ("postgresql", "cockroachdb"):
            return postgresql.insert(table)
        raise NotImplementedError(f"the SQL store does not support the {self._dialect!r} dialect")

    @property
    def _max_params(self) -> int:
        return _SQLITE_MAX_PARAMS if self._dialect == "sqlite" else _PG_MAX_PARAMS


# ---- workspaces -----------------------------------------------------------------------------------------
def _workspace(row: Any) -> Workspace:
    return Workspace(id=row.id, slug=row.slug, name=row.name, plan=row.plan,
                     created_at=_aware(row.created_at))


class SqlWorkspaceRepository(_Repository):
    async def add(self, workspace: Workspace) -> None:
        await self._execute(m.workspaces.insert().values(
            id=workspace.id, slug=workspace.slug, name=workspace.name, plan=workspace.plan,
            created_at=to_db_time(workspace.created_at)))

    async def get(self, workspace_id: uuid.UUID) -> Workspace | None:
        row = (await self._execute(_WORKSPACE, {"id": workspace_id})).first()
        return None if row is None else _workspace(row)

    async def get_by_slug(self, slug: str) -> Workspace | None:
        row = (await self._execute(_WORKSPACE_BY_SLUG, {"slug": slug})).first()
        return None if row is None else _workspace(row)

    async def list(self, *, limit: int = 100, after_slug: str | None = None) -> builtins.list[Workspace]:
        query = select(m.workspaces).order_by(m.workspaces.c.slug).limit(max(limit, 0))
        if after_slug is not None:
            query = query.where(m.workspaces.c.slug > after_slug)
        return [_workspace(row) for row in await self._execute(query)]

    async def list_for_user(self, user_id: uuid.UUID) -> builtins.list[Workspace]:
        query = (select(m.workspaces)
                 .join(m.memberships, m.memberships.c.workspace_id == m.workspaces.c.id)
                 .where(m.memberships.c.user_id == user_id)
                 .order_by(m.workspaces.c.slug))
        return [_workspace(row) for row in await self._execute(query)]

    async def delete(self, workspace_id: uuid.UUID) -> None:
        # Explicit per-table DELETEs in one transaction: no reliance on ON DELETE CASCADE (off in SQLite,
        # absent on most tables), and each statement stays within the tenant's key range.
        for table in m.TENANT_TABLES:
            await self._execute(delete(table).where(table.c.workspace_id == workspace_id))
        await self._execute(delete(m.workspaces).where(m.workspaces.c.id == workspace_id))


# ---- users (global, not tenant-owned) -------------------------------------------------------------------
def _user(row: Any) -> User:
    return User(id=row.id, subject=row.subject, name=row.name, created_at=_aware(row.created_at))


class SqlUserRepository(_Repository):
    async def add(self, user: User) -> None:
        await self._execute(m.users.insert().values(
            id=user.id, subject=user.subject, name=user.name, created_at=to_db_time(user.created_at)))

    async def get(self, user_id: uuid.UUID) -> User | None:
        row = (await self._execute(select(m.users).where(m.users.c.id == user_id))).first()
        return None if row is None else _user(row)

    async def get_by_subject(self, subject: str) -> User | None:
        row = (await self._execute(select(m.users).where(m.users.c.subject == subject))).first()
        return None if row is None else _user(row)

    async def get_many(self, user_ids: Sequence[uuid.UUID]) -> list[User]:
        """In the order asked for; unknown ids are left out, repeated ones returned once."""
        wanted = list(dict.fromkeys(user_ids))
        found: dict[uuid.UUID, User] = {}
        for chunk in _chunks(wanted, 500):
            for row in await self._execute(*self._lookup(_USERS, "ids", chunk)):
                found[row.id] = _user(row)
        return [found[i] for i in wanted if i in found]

    async def get_many_by_subject(self, subjects: Sequence[str]) -> list[User]:
        found: list[User] = []
        for chunk in _chunks(list(dict.fromkeys(subjects)), 500):
            found.extend(_user(row) for row in await self._execute(*self._lookup(_USERS_BY_SUBJECT, "subjects", chunk)))
        return found


# ---- memberships ----------------------------------------------------------------------------------------
def _membership(row: Any) -> Membership:
    return Membership(workspace_id=row.workspace_id, user_id=row.user_id, role=Role(row.role),
                      created_at=_aware(row.created_at))


class SqlMembershipRepository(_Repository):
    def _key(self, workspace_id: uuid.UUID, user_id: uuid.UUID) -> Any:
        return (m.memberships.c.workspace_id == workspace_id) & (m.memberships.c.user_id == user_id)

    async def add(self, membership: Membership) -> None:
        await self._execute(m.memberships.insert().values(
            workspace_id=membership.workspace_id, user_id=membership.user_id, role=membership.role.value,
            created_at=to_db_time(membership.created_at)))

    async def get(self, workspace_id: uuid.UUID, user_id: uuid.UUID) -> Membership | None:
        row = (await self._execute(_MEMBERSHIP, {"ws": workspace_id, "user": user_id})).first()
        return None if row is None else _membership(row)

    async def get_many(self, workspace_id: uuid.UUID, user_ids: Sequence[uuid.UUID]) -> builtins.list[Membership]:
        found: builtins.list[Membership] = []
        for chunk in _chunks(list(dict.fromkeys(user_ids)), 500):
            rows = await self._execute(*self._lookup(_MEMBERSHIPS, "users", chunk, ws=workspace_id))
            found.extend(_membership(row) for row in rows)
        return found

    async def list(self, workspace_id: uuid.UUID) -> builtins.list[Membership]:
        """Oldest member first."""
        query = (select(m.memberships).where(m.memberships.c.workspace_id == workspace_id)
                 .order_by(m.memberships.c.created_at, m.memberships.c.user_id))
        return [_membership(row) for row in await self._execute(query)]

    async def count(self, workspace_id: uuid.UUID) -> int:
        query = select(func.count()).select_from(m.memberships).where(
            m.memberships.c.workspace_id == workspace_id)
        return int((await self._execute(query)).scalar_one())

    async def set_role(self, workspace_id: uuid.UUID, user_id: uuid.UUID, role: Role) -> None:
        """No effect when the user is not a member (the port returns nothing to report it with)."""
        await self._execute(update(m.memberships).where(self._key(workspace_id, user_id))
                            .values(role=role.value))

    async def remove(self, workspace_id: uuid.UUID, user_id: uuid.UUID) -> None:
        cm = m.channel_members
        await self._execute(delete(cm).where((cm.c.workspace_id == workspace_id) & (cm.c.user_id == user_id)))
        await self._execute(delete(m.memberships).where(self._key(workspace_id, user_id)))


# ---- channels -------------------------------------------------------------------------------------------
def _channel(row: Any) -> Channel:
    return Channel(id=row.id, workspace_id=row.workspace_id, name=row.name, kind=ChannelKind(row.kind),
                   archived=bool(row.archived), created_by=row.created_by, created_at=_aware(row.created_at))


class SqlChannelRepository(_Repository):
    def _key(self, workspace_id: uuid.UUID, channel_id: uuid.UUID) -> Any:
        return (m.channels.c.workspace_id == workspace_id) & (m.channels.c.id == channel_id)

    def _member_key(self, workspace_id: uuid.UUID, channel_id: uuid.UUID, user_id: uuid.UUID) -> Any:
        cm = m.channel_members
        return ((cm.c.workspace_id == workspace_id) & (cm.c.channel_id == channel_id)
                & (cm.c.user_id == user_id))

    async def add(self, channel: Channel) -> None:
        await self._execute(m.channels.insert().values(
            id=channel.id, workspace_id=channel.workspace_id, name=channel.name, kind=channel.kind.value,
            archived=channel.archived, created_by=channel.created_by,
            created_at=to_db_time(channel.created_at)))

    async def get(self, workspace_id: uuid.UUID, channel_id: uuid.UUID) -> Channel | None:
        row = (await self._execute(_CHANNEL, {"ws": workspace_id, "id": channel_id})).first()
        return None if row is None else _channel(row)

    async def get_by_name(self, workspace_id: uuid.UUID, name: str) -> Channel | None:
        query = select(m.channels).where(m.channels.c.workspace_id == workspace_id, m.channels.c.name == name)
        row = (await self._execute(query)).first()
        return None if row is None else _channel(row)

    async def list(self, workspace_id: uuid.UUID, *, include_archived: bool = False) -> builtins.list[Channel]:
        """Ordered by name."""
        query = (select(m.channels).where(m.channels.c.workspace_id == workspace_id)
                 .order_by(m.channels.c.name))
        if not include_archived:
            query = query.where(m.channels.c.archived.is_(False))
        return [_channel(row) for row in await self._execute(query)]

    async def count(self, workspace_id: uuid.UUID) -> int:
        """All channels, archived ones included: they keep their names (and count against the plan)."""
        query = select(func.count()).select_from(m.channels).where(m.channels.c.workspace_id == workspace_id)
        return int((await self._execute(query)).scalar_one())

    async def archive(self, workspace_id: uuid.UUID, channel_id: uuid.UUID) -> None:
        statement = update(m.channels).where(self._key(workspace_id, channel_id)).values(archived=True)
        await self._execute(statement)

    async def add_member(self, workspace_id: uuid.UUID, channel_id: uuid.UUID, user_id: uuid.UUID) -> None:
        """Idempotent.  Raises NotFound when the channel is not one of the workspace's: membership rows
        grant access to private channels, so none may point across workspaces."""
        exists = select(m.channels.c.id).where(self._key(workspace_id, channel_id))
        if (await self._execute(exists)).first() is None:
            raise NotFound("no such channel in this workspace", field="channel_id")
        await self._execute(insert_or_skip(self._dialect, m.channel_members).values(
            workspace_id=workspace_id, channel_id=channel_id, user_id=user_id))

    async def remove_member(self, workspace_id: uuid.UUID, channel_id: uuid.UUID, user_id: uuid.UUID) -> None:
        key = self._member_key(workspace_id, channel_id, user_id)
        await self._execute(delete(m.channel_members).where(key))

    async def is_member(self, workspace_id: uuid.UUID, channel_id: uuid.UUID, user_id: uuid.UUID) -> bool:
        params = {"ws": workspace_id, "channel": channel_id, "user": user_id}
        return (await self._execute(_CHANNEL_MEMBER, params)).first() is not None

    async def list_members(self, workspace_id: uuid.UUID, channel_id: uuid.UUID) -> builtins.list[uuid.UUID]:
        cm = m.channel_members
        query = (select(cm.c.user_id).where(cm.c.workspace_id == workspace_id, cm.c.channel_id == channel_id)
                 .order_by(cm.c.user_id))
        return list((await self._execute(query)).scalars())

    async def list_for_user(self, workspace_id: uuid.UUID, user_id: uuid.UUID) -> builtins.list[Channel]:
        cm = m.channel_members
        joined = select(cm.c.channel_id).where(cm.c.workspace_id == workspace_id, cm.c.user_id == user_id)
        query = (select(m.channels)
                 .where(m.channels.c.workspace_id == workspace_id, m.channels.c.archived.is_(False),
                        (m.channels.c.kind == ChannelKind.PUBLIC.value) | m.channels.c.id.in_(joined))
                 .order_by(m.channels.c.name))
        return [_channel(row) for row in await self._execute(query)]


# ---- messages -------------------------------------------------------------------------------------------
def _message(row: Any) -> Message:
    return Message(id=row.id, workspace_id=row.workspace_id, channel_id=row.channel_id,
                   author_id=row.author_id, body=row.body, offset=row.offset,
                   created_at=_aware(row.created_at), client_msg_id=row.client_msg_id,
                   thread_id=row.thread_id, edited_at=from_db_time(row.edited_at),
                   deleted_at=from_db_time(row.deleted_at))


def _message_values(msg: Message) -> Mapping[str, Any]:
    return {"id": msg.id, "workspace_id": msg.workspace_id, "channel_id": msg.channel_id,
            "author_id": msg.author_id, "body": msg.body, "offset": msg.offset,
            "client_msg_id": msg.client_msg_id, "thread_id": msg.thread_id,
            "created_at": to_db_time(msg.created_at), "edited_at": to_db_time(msg.edited_at),
            "deleted_at": to_db_time(msg.deleted_at)}


# PostgreSQL: a whole batch as one row of arrays, unnested by the server (one parameter per column, whatever
# the batch's size).  The executemany path below spent ≈ 10 µs of Python per row binding parameters one by
# one (SQLAlchemy's insertmanyvalues); asyncpg encodes each array in one go.  Same ON CONFLICT DO NOTHING.
# The server counts the inserted rows (one result row) instead of returning each id: decoding and wrapping
# 500 returned rows per batch cost the worker ≈ 2 µs per message for a number.
_UNNEST_ROWS = 5000
_INSERT_MESSAGES_UNNEST = text(
    "WITH inserted AS ("
    'INSERT INTO messages (id, workspace_id, channel_id, author_id, body, "offset", client_msg_id, thread_id, '
    "created_at, edited_at, deleted_at) "
    "SELECT * FROM unnest(CAST(:id AS uuid[]), CAST(:workspace_id AS uuid[]), CAST(:channel_id AS uuid[]), "
    "CAST(:author_id AS uuid[]), CAST(:body AS text[]), CAST(:offset AS bigint[]), "
    "CAST(:client_msg_id AS varchar[]), CAST(:thread_id AS uuid[]), CAST(:created_at AS timestamptz[]), "
    "CAST(:edited_at AS timestamptz[]), CAST(:deleted_at AS timestamptz[])) "
    "ON CONFLICT DO NOTHING RETURNING 1) SELECT count(*) FROM inserted")


class SqlMessageRepository(_Repository):
    def _key(self, workspace_id: uuid.UUID, message_id: uuid.UUID) -> Any:
        return (m.messages.c.workspace_id == workspace_id) & (m.messages.c.id == message_id)

    async def add_many(self, messages: Sequence[Message]) -> int:
        """Multi-row ``INSERT … VALUES (…), (…) … ON CONFLICT DO NOTHING RETURNING id``: a replayed message
        (same id, or same channel and offset) is skipped by the database itself, so concurrent writers of
        the same batch cannot both insert it.  The rows go as an executemany list to one statement that
        SQLAlchemy compiles once and caches; its "insertmanyvalues" sends them as multi-row INSERTs of up
        to 1 000 rows.  (``.values([...])`` compiled a new statement per batch: half the persistence
        worker's CPU, see docs/database.md "Idempotency".)  On PostgreSQL the batch goes as one row of
        arrays instead (:meth:`_add_many_unnest`)."""
        if not messages:
            return 0
        if self._dialect == "postgresql":
            return await self._add_many_unnest(messages)
        rows = [_message_values(msg) for msg in messages]
        statement = insert_or_skip(self._dialect, m.messages).returning(m.messages.c.id)  # cached: db/dml.py
        per_chunk = max(1, self._max_params // len(m.messages.c))
        inserted = 0
        for chunk in _chunks(rows, per_chunk):
            with translated():
                result = await self._session.execute(statement, list(chunk))
            inserted += len(result.all())
        return inserted

    async def _add_many_unnest(self, messages: Sequence[Message]) -> int:
        inserted = 0
        for chunk in _chunks(messages, _UNNEST_ROWS):
            params = {
                "id": [msg.id for msg in chunk], "workspace_id": [msg.workspace_id for msg in chunk],
                "channel_id": [msg.channel_id for msg in chunk], "author_id": [msg.author_id for msg in chunk],
                "body": [msg.body for msg in chunk], "offset": [msg.offset for msg in chunk],
                "client_msg_id": [msg.client_msg_id for msg in chunk], "thread_id": [msg.thread_id for msg in chunk],
                "created_at": [to_db_time(msg.created_at) for msg in chunk],
                "edited_at": [to_db_time(msg.edited_at) for msg in chunk],
                "deleted_at": [to_db_time(msg.deleted_at) for msg in chunk],
            }
            with translated():
                result = await self._session.execute(_INSERT_MESSAGES_UNNEST, params)
            inserted += int(result.scalar_one())
        return inserted

    async def get(self, workspace_id: uuid.UUID, message_id: uuid.UUID) -> Message | None:
        row = (await self._execute(select(m.messages).where(self._key(workspace_id, message_id)))).first()
        return None if row is None else _message(row)

    async def edit(self, workspace_id: uuid.UUID, message_id: uuid.UUID, body: str, edited_at: Any) -> bool:
        """False also for a deleted message: editing must not bring a body back."""
        statement = (update(m.messages)
                     .where(self._key(workspace_id, message_id), m.messages.c.deleted_at.is_(None))
                     .values(body=body, edited_at=to_db_time(edited_at)))
        return await self._rowcount(statement) == 1

    async def delete(self, workspace_id: uuid.UUID, message_id: uuid.UUID, deleted_at: Any) -> bool:
        """Deleting twice is True and keeps the first ``deleted_at``."""
        first_deleted_at = func.coalesce(m.messages.c.deleted_at, to_db_time(deleted_at))
        statement = (update(m.messages).where(self._key(workspace_id, message_id))
                     .values(body="", deleted_at=first_deleted_at))
        return await self._rowcount(statement) == 1

    async def find_by_cmid(self, workspace_id: uuid.UUID, channel_id: uuid.UUID, author_id: uuid.UUID,
                           cmid: str) -> Message | None:
        query = (select(m.messages)
                 .where(m.messages.c.workspace_id == workspace_id, m.messages.c.channel_id == channel_id,
                        m.messages.c.author_id == author_id, m.messages.c.client_msg_id == cmid)
                 .order_by(m.messages.c.offset).limit(1))
        row = (await self._execute(query)).first()
        return None if row is None else _message(row)

    async def page(
        self, workspace_id: uuid.UUID, channel_id: uuid.UUID, *, before: int | None, limit: int
    ) -> list[Message]:
        if limit <= 0:
            return []
        params: dict[str, Any] = {"ws": workspace_id, "channel": channel_id, "limit": limit}
        if before is None:
            return [_message(row) for row in await self._execute(_NEWEST, params)]
        return [_message(row) for row in await self._execute(_BEFORE, {**params, "before": before})]


# ---- reactions ------------------------------------------------------------------------------------------
class SqlReactionRepository(_Repository):
    """The message is not looked up: callers fetch it (through ``messages.get(workspace, id)``) to publish
    the reaction anyway, and a reaction row only counts within its own workspace."""

    async def add(self, reaction: Reaction) -> bool:
        statement = (insert_or_skip(self._dialect, m.reactions)
                     .values(workspace_id=reaction.workspace_id, message_id=reaction.message_id,
                             user_id=reaction.user_id, emoji=reaction.emoji)
                     .returning(m.reactions.c.emoji))
        return (await self._execute(statement)).first() is not None

    async def remove(self, reaction: Reaction) -> bool:
        r = m.reactions
        statement = delete(r).where(r.c.workspace_id == reaction.workspace_id,
                                    r.c.message_id == reaction.message_id, r.c.user_id == reaction.user_id,
                                    r.c.emoji == reaction.emoji)
        return await self._rowcount(statement) == 1

    async def counts(
        self, workspace_id: uuid.UUID, message_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, dict[str, int]]:
        """Messages without reactions are absent from the result."""
        result: dict[uuid.UUID, dict[str, int]] = {}
        for chunk in _chunks(list(dict.fromkeys(message_ids)), 500):
            rows = await self._execute(*self._lookup(_REACTION_COUNTS, "ids", chunk, ws=workspace_id))
            for message_id, emoji, n in rows:
                result.setdefault(message_id, {})[emoji] = int(n)
        return result

    async def mine(
        self, workspace_id: uuid.UUID, user_id: uuid.UUID, message_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, list[str]]:
        r = m.reactions
        result: dict[uuid.UUID, list[str]] = {}
        for chunk in _chunks(list(dict.fromkeys(message_ids)), 500):
            query = (select(r.c.message_id, r.c.emoji)
                     .where(r.c.workspace_id == workspace_id, r.c.user_id == user_id, r.c.message_id.in_(chunk)))
            for message_id, emoji in await self._execute(query):
                result.setdefault(message_id, []).append(emoji)
        return {k: sorted(v) for k, v in result.items()}

    async def reactors(
        self, workspace_id: uuid.UUID, message_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, dict[uuid.UUID, list[str]]]:
        r = m.reactions
        result: dict[uuid.UUID, dict[uuid.UUID, list[str]]] = {}
        for chunk in _chunks(list(dict.fromkeys(message_ids)), 500):
            query = (select(r.c.message_id, r.c.user_id, r.c.emoji)
                     .where(r.c.workspace_id == workspace_id, r.c.message_id.in_(chunk)))
            for message_id, user_id, emoji in await self._execute(query):
                result.setdefault(message_id, {}).setdefault(user_id, []).append(emoji)
        for users in result.values():
            for emojis in users.values():
                emojis.sort()
        return result


# ---- read markers ---------------------------------------------------------------------------------------
_READ_STATES_SELECT = (
    'SELECT coalesce(rm."offset", 0) AS read, '
    'CASE WHEN coalesce(rm."offset", 0) < w.head THEN ('
    "SELECT count(*) FROM (SELECT 1 FROM messages AS msg "
    "WHERE msg.workspace_id = :workspace_id AND msg.channel_id = w.channel_id "
    'AND msg."offset" > coalesce(rm."offset", 0) AND msg."offset" <= w.head '
    "AND msg.author_id <> w.user_id AND msg.deleted_at IS NULL LIMIT :cap) AS counted"
    ") ELSE 0 END AS unread FROM ")
_READ_STATES_JOIN = (
    " LEFT JOIN read_markers AS rm ON rm.workspace_id = :workspace_id AND rm.channel_id = w.channel_id "
    "AND rm.user_id = w.user_id ORDER BY w.i")


def _read_states(triples: str) -> Any:
    """The read states of a batch of (user, channel, head) triples in one statement of constant shape:
    ``triples`` (one of the two module constants below, never input) is the dialect's table of them,
    ``w(user_id, channel_id, head, i)``; one parameter for the whole batch whatever its size, so one compiled
    statement for every batch.  The portable form below builds a scalar subquery per triple, and
    SQLAlchemy's work on it (construction, cache key, the LIMIT and IN post-compile parameters) cost ≈ 1.7 ms
    of CPU for one triple and ≈ 290 µs per triple in batches of 64 (docs/benchmarks.md "The SQL around a
    connect").  Each count reads at most :cap index entries (LIMIT inside, count outside), and only when the
    marker is below the head."""
    return text("".join((_READ_STATES_SELECT, triples, _READ_STATES_JOIN)))


# PostgreSQL: the triples as three arrays.
_READ_STATES_UNNEST = _read_states(
    "unnest(CAST(:users AS uuid[]), CAST(:channels AS uuid[]), CAST(:heads AS bigint[])) "
    "WITH ORDINALITY AS w(user_id, channel_id, head, i)")
# SQLite (the embedded store of `storm dev`): a JSON array of [user, channel, head] (json_each, built into
# SQLite); ids as the 32-digit hex text SQLAlchemy's Uuid stores there.
_READ_STATES_JSON = _read_states(
    "(SELECT json_extract(value, '$[0]') AS user_id, json_extract(value, '$[1]') AS channel_id, "
    "json_extract(value, '$[2]') AS head, key AS i FROM json_each(:triples)) AS w")


class SqlReadMarkerRepository(_Repository):
    async def advance(self, marker: ReadMarker) -> int:
        # One upsert keeping the larger offset (CASE rather than GREATEST, which SQLite lacks), so two
        # concurrent advances cannot move the marker back whatever the isolation level.
        rm = m.read_markers
        insert = self._insert(rm).values(workspace_id=marker.workspace_id, channel_id=marker.channel_id,
                                         user_id=marker.user_id, offset=marker.offset)
        larger = case((insert.excluded.offset > rm.c.offset, insert.excluded.offset), else_=rm.c.offset)
        statement = (insert.on_conflict_do_update(index_elements=[rm.c.workspace_id, rm.c.channel_id,
                                                                  rm.c.user_id], set_={"offset": larger})
                     .returning(rm.c.offset))
        return int((await self._execute(statement)).scalar_one())

    async def get(self, workspace_id: uuid.UUID, channel_id: uuid.UUID, user_id: uuid.UUID) -> int:
        """0 when the user has no marker in the channel."""
        rm = m.read_markers
        query = select(rm.c.offset).where(rm.c.workspace_id == workspace_id, rm.c.channel_id == channel_id,
                                          rm.c.user_id == user_id)
        value = (await self._execute(query)).scalar_one_or_none()
        return 0 if value is None else int(value)

    async def unread(
        self, workspace_id: uuid.UUID, user_id: uuid.UUID, channel_ids: Sequence[uuid.UUID], *,
        cap: int = UNREAD_MAX,
    ) -> dict[uuid.UUID, tuple[int, int]]:
        wanted = list(dict.fromkeys(channel_ids))
        states = await self.unread_at(workspace_id, [(user_id, ch, NO_HEAD) for ch in wanted], cap=cap)
        return dict(zip(wanted, states, strict=True))

    async def unread_at(
        self, workspace_id: uuid.UUID, wanted: Sequence[tuple[uuid.UUID, uuid.UUID, int]], *,
        cap: int = UNREAD_MAX,
    ) -> list[tuple[int, int]]:
        """Subscribes that arrive together ask together (``storm.directory.Directory.read_state``).  On
        PostgreSQL and SQLite one statement of constant shape for the whole batch (:func:`_read_states`); the
        portable form elsewhere (CockroachDB, until that statement has run on a cluster)."""
        if not wanted:
            return []
        if self._dialect == "postgresql":
            statement, params = _READ_STATES_UNNEST, {
                "workspace_id": workspace_id, "users": [u for u, _, _ in wanted],
                "channels": [c for _, c, _ in wanted], "heads": [h for _, _, h in wanted]}
        elif self._dialect == "sqlite":
            statement, params = _READ_STATES_JSON, {
                "workspace_id": workspace_id.hex, "triples": json.dumps([[u.hex, c.hex, h] for u, c, h in wanted])}
        else:
            return await self._unread_at_portable(workspace_id, wanted, cap)
        rows = await self._execute(statement, {**params, "cap": cap})
        return [(int(read), int(unread)) for read, unread in rows]

    async def _unread_at_portable(self, workspace_id: uuid.UUID, wanted: Sequence[tuple[uuid.UUID, uuid.UUID, int]],
                                  cap: int) -> list[tuple[int, int]]:
        """Two statements per ``READ_STATE_CHUNK`` pairs, whatever their users and channels: the markers (a
        superset, the users' rows in the channels, filtered here), then one count per pair whose marker is
        below its head, as scalar subqueries of one ``SELECT`` (each an index range scan of the messages)."""
        rm, msg = m.read_markers, m.messages
        out: list[tuple[int, int]] = []
        for chunk in _chunks(wanted, READ_STATE_CHUNK):
            users = list(dict.fromkeys(u for u, _, _ in chunk))
            channels = list(dict.fromkeys(c for _, c, _ in chunk))
            query = select(rm.c.user_id, rm.c.channel_id, rm.c.offset).where(
                rm.c.workspace_id == workspace_id, rm.c.channel_id.in_(channels), rm.c.user_id.in_(users))
            marks = {(u, c): int(o) for u, c, o in await self._execute(query)}
            got = [marks.get((u, c), 0) for u, c, _ in chunk]
            todo = [i for i, (_, _, head) in enumerate(chunk) if got[i] < head]
            counts = dict.fromkeys(range(len(chunk)), 0)
            if todo:
                # each count reads at most `cap` index entries: LIMIT inside, count outside
                columns = [select(func.count()).select_from(select(msg.c.offset).where(
                    msg.c.workspace_id == workspace_id, msg.c.channel_id == chunk[i][1], msg.c.offset > got[i],
                    msg.c.offset <= chunk[i][2], msg.c.author_id != chunk[i][0], msg.c.deleted_at.is_(None),
                ).limit(cap).subquery()).scalar_subquery().label(f"n{i}") for i in todo]
                row = (await self._execute(select(*columns))).one()
                counts.update(zip(todo, (int(n) for n in row), strict=True))
            out.extend((got[i], counts[i]) for i in range(len(chunk)))
        return out


# ---- webhooks (storm/webhooks.py) --------------------------------------------------------------------------
def _webhook(row: Any) -> Webhook:
    return Webhook(id=row.id, workspace_id=row.workspace_id, url=row.url, secret=row.secret,
                   events=tuple(e for e in row.events.split(",") if e),
                   channels=tuple(uuid.UUID(c) for c in row.channels.split(",") if c),
                   created_by=row.created_by, created_at=_aware(row.created_at))


def _incoming(row: Any) -> IncomingWebhook:
    return IncomingWebhook(id=row.id, workspace_id=row.workspace_id, channel_id=row.channel_id,
                           bot_user_id=row.bot_user_id, name=row.name, token_hash=row.token_hash,
                           created_by=row.created_by, created_at=_aware(row.created_at))


def _attempt(row: Any) -> DeliveryAttempt:
    return DeliveryAttempt(id=row.id, workspace_id=row.workspace_id, webhook_id=row.webhook_id,
                           event_id=row.event_id, event_type=row.event_type, attempt=row.attempt,
                           status=DeliveryStatus(row.status), http_status=row.http_status, error=row.error,
                           duration_ms=row.duration_ms, at=_aware(row.at))


class SqlWebhookRepository(_Repository):
    async def add(self, webhook: Webhook) -> None:
        await self._execute(m.webhooks.insert().values(
            id=webhook.id, workspace_id=webhook.workspace_id, url=webhook.url, secret=webhook.secret,
            events=",".join(webhook.events), channels=",".join(c.hex for c in webhook.channels),
            created_by=webhook.created_by, created_at=to_db_time(webhook.created_at)))

    async def get(self, workspace_id: uuid.UUID, webhook_id: uuid.UUID) -> Webhook | None:
        w = m.webhooks
        row = (await self._execute(select(w).where(w.c.workspace_id == workspace_id, w.c.id == webhook_id))).first()
        return None if row is None else _webhook(row)

    async def list(self, workspace_id: uuid.UUID) -> builtins.list[Webhook]:
        w = m.webhooks
        query = select(w).where(w.c.workspace_id == workspace_id).order_by(w.c.created_at, w.c.id)
        return [_webhook(row) for row in await self._execute(query)]

    async def remove(self, workspace_id: uuid.UUID, webhook_id: uuid.UUID) -> bool:
        w, d = m.webhooks, m.webhook_deliveries
        await self._execute(delete(d).where(d.c.workspace_id == workspace_id, d.c.webhook_id == webhook_id))
        return await self._rowcount(delete(w).where(w.c.workspace_id == workspace_id, w.c.id == webhook_id)) > 0

    async def add_incoming(self, hook: IncomingWebhook) -> None:
        await self._execute(m.incoming_webhooks.insert().values(
            id=hook.id, workspace_id=hook.workspace_id, channel_id=hook.channel_id, bot_user_id=hook.bot_user_id,
            name=hook.name, token_hash=hook.token_hash, created_by=hook.created_by,
            created_at=to_db_time(hook.created_at)))

    async def get_incoming(self, workspace_id: uuid.UUID, hook_id: uuid.UUID) -> IncomingWebhook | None:
        h = m.incoming_webhooks
        row = (await self._execute(select(h).where(h.c.workspace_id == workspace_id, h.c.id == hook_id))).first()
        return None if row is None else _incoming(row)

    async def list_incoming(self, workspace_id: uuid.UUID) -> builtins.list[IncomingWebhook]:
        h = m.incoming_webhooks
        query = select(h).where(h.c.workspace_id == workspace_id).order_by(h.c.created_at, h.c.id)
        return [_incoming(row) for row in await self._execute(query)]

    async def remove_incoming(self, workspace_id: uuid.UUID, hook_id: uuid.UUID) -> bool:
        h = m.incoming_webhooks
        return await self._rowcount(delete(h).where(h.c.workspace_id == workspace_id, h.c.id == hook_id)) > 0

    async def log_delivery(self, attempt: DeliveryAttempt) -> None:
        await self._execute(m.webhook_deliveries.insert().values(
            id=attempt.id, workspace_id=attempt.workspace_id, webhook_id=attempt.webhook_id,
            event_id=attempt.event_id, event_type=attempt.event_type, attempt=attempt.attempt,
            status=attempt.status.value, http_status=attempt.http_status, error=attempt.error,
            duration_ms=attempt.duration_ms, at=to_db_time(attempt.at)))

    async def prune_deliveries(self, workspace_id: uuid.UUID, webhook_id: uuid.UUID, before: datetime) -> int:
        d = m.webhook_deliveries  # a range of the (workspace_id, webhook_id, at) index
        return await self._rowcount(delete(d).where(d.c.workspace_id == workspace_id, d.c.webhook_id == webhook_id,
                                                    d.c.at < to_db_time(before)))

    async def deliveries(self, workspace_id: uuid.UUID, webhook_id: uuid.UUID, *, limit: int,
                         status: DeliveryStatus | None = None) -> builtins.list[DeliveryAttempt]:
        d = m.webhook_deliveries
        query = select(d).where(d.c.workspace_id == workspace_id, d.c.webhook_id == webhook_id)
        if status is not None:
            query = query.where(d.c.status == status.value)
        query = query.order_by(d.c.at.desc(), d.c.attempt.desc()).limit(limit)
        return [_attempt(row) for row in await self._execute(query)]
