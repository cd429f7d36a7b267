"""Embedded store: the Store port (storm/ports/store.py) over dictionaries, with the SQL store's semantics.

For tests whose subject is not the database, and for ``STORM_STORE=memory`` runs that need no file (the data
lives as long as the process).  The same contract suite proves it equal to the SQL store
(tests/contract/test_store_contract.py, parametrized over memory, SQLite and PostgreSQL):

* a unit of work rolls back unless committed; it reads the committed state until its first write, then its
  own copy, so it sees its own writes and nobody else sees them before the commit;
* a commit replays the unit's writes onto the state committed meanwhile (when something was), in one step
  of the event loop: concurrent units of work never lose each other's writes, and a write that no longer
  fits (a slug taken meanwhile) fails the commit with the same error it would have raised at once.  There
  are no serialization failures, so :meth:`MemoryStore.run` never retries;
* uniqueness raises :class:`~storm.errors.Conflict` with the SQL store's message and field (workspace id and
  slug, user id and subject, membership, channel id and name per workspace); a membership or channel of a
  workspace that does not exist raises :class:`~storm.errors.NotFound` (the SQL foreign keys);
* every tenant-owned lookup filters on the workspace id first; datetimes come back aware, in UTC.
"""

from __future__ import annotations

import builtins
import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from storm.domain import Channel, ChannelKind, Membership, Message, Reaction, ReadMarker, Role, User, Workspace
from storm.errors import Conflict, NotFound, Unavailable
from storm.lifecycle import Lifecycle
from storm.ports.store import NO_HEAD, UNREAD_MAX, ReadOnlyError
from storm.webhooks import DeliveryAttempt, DeliveryStatus, IncomingWebhook, Webhook

if TYPE_CHECKING:
    from storm.ports.store import Store, UnitOfWork

T = TypeVar("T")
R = TypeVar("R")


def _utc(value: datetime | None) -> datetime | None:
    """What the SQL store gives back: aware, in UTC (a naive time is taken as UTC, as SQLite stores it)."""
    if value is None or value.tzinfo is UTC:
        return value
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _utc_required(value: datetime) -> datetime:
    converted = _utc(value)
    assert converted is not None
    return converted


class _Tables:
    """One version of the data.  Rows are frozen dataclasses, so a copy shares them and copies the indexes."""

    __slots__ = ("channel_members", "channels", "deliveries", "incoming_webhooks", "memberships", "messages",
                 "positions", "reactions", "read_markers", "users", "webhooks", "workspaces")

    def __init__(self) -> None:
        self.workspaces: dict[uuid.UUID, Workspace] = {}
        self.users: dict[uuid.UUID, User] = {}
        self.memberships: dict[tuple[uuid.UUID, uuid.UUID], Membership] = {}
        self.channels: dict[uuid.UUID, Channel] = {}
        self.channel_members: set[tuple[uuid.UUID, uuid.UUID, uuid.UUID]] = set()  # (workspace, channel, user)
        self.messages: dict[uuid.UUID, Message] = {}
        self.positions: dict[tuple[uuid.UUID, uuid.UUID, int], uuid.UUID] = {}  # (ws, channel, offset) -> id
        self.reactions: set[tuple[uuid.UUID, uuid.UUID, uuid.UUID, str]] = set()  # (ws, message, user, emoji)
        self.read_markers: dict[tuple[uuid.UUID, uuid.UUID, uuid.UUID], int] = {}  # (ws, channel, user)
        self.webhooks: dict[uuid.UUID, Webhook] = {}
        self.incoming_webhooks: dict[uuid.UUID, IncomingWebhook] = {}
        self.deliveries: list[DeliveryAttempt] = []  # oldest first, at most MAX_DELIVERIES

    def copy(self) -> _Tables:
        other = _Tables()
        for name in self.__slots__:
            setattr(other, name, getattr(self, name).copy())
        return other

    def require_workspace(self, workspace_id: uuid.UUID) -> None:
        if workspace_id not in self.workspaces:  # the SQL store's foreign key
            raise NotFound("the workspace does not exist", field="workspace_id")

    def channel(self, workspace_id: uuid.UUID, channel_id: uuid.UUID) -> Channel | None:
        found = self.channels.get(channel_id)
        return found if found is not None and found.workspace_id == workspace_id else None

    def message(self, workspace_id: uuid.UUID, message_id: uuid.UUID) -> Message | None:
        found = self.messages.get(message_id)
        return found if found is not None and found.workspace_id == workspace_id else None


class _Repository:
    def __init__(self, uow: MemoryUnitOfWork) -> None:
        self._uow = uow

    @property
    def _t(self) -> _Tables:
        return self._uow._read()

    def _write(self, op: Callable[[_Tables], R]) -> R:
        return self._uow._write(op)


class MemoryWorkspaceRepository(_Repository):
    async def add(self, workspace: Workspace) -> None:
        row = dataclasses.replace(workspace, created_at=_utc_required(workspace.created_at))

        def op(t: _Tables) -> None:
            if row.id in t.workspaces:
                raise Conflict("a workspace with this id already exists", field="id")
            if any(w.slug == row.slug for w in t.workspaces.values()):
                raise Conflict("a workspace with this slug already exists", field="slug")
            t.workspaces[row.id] = row

        self._write(op)

    async def get(self, workspace_id: uuid.UUID) -> Workspace | None:
        return self._t.workspaces.get(workspace_id)

    async def get_by_slug(self, slug: str) -> Workspace | None:
        return next((w for w in self._t.workspaces.values() if w.slug == slug), None)

    async def list(self, *, limit: int = 100, after_slug: str | None = None) -> builtins.list[Workspace]:
        rows = sorted(self._t.workspaces.values(), key=lambda w: w.slug)
        if after_slug is not None:
            rows = [w for w in rows if w.slug > after_slug]
        return rows[:max(limit, 0)]

    async def list_for_user(self, user_id: uuid.UUID) -> builtins.list[Workspace]:
        t = self._t
        rows = [t.workspaces[ws] for (ws, user) in t.memberships if user == user_id and ws in t.workspaces]
        return sorted(rows, key=lambda w: w.slug)

    async def delete(self, workspace_id: uuid.UUID) -> None:
        def op(t: _Tables) -> None:
            t.reactions = {r for r in t.reactions if r[0] != workspace_id}
            t.webhooks = {k: v for k, v in t.webhooks.items() if v.workspace_id != workspace_id}
            t.incoming_webhooks = {k: v for k, v in t.incoming_webhooks.items() if v.workspace_id != workspace_id}
            t.deliveries = [d for d in t.deliveries if d.workspace_id != workspace_id]
            t.read_markers = {k: v for k, v in t.read_markers.items() if k[0] != workspace_id}
            t.messages = {k: v for k, v in t.messages.items() if v.workspace_id != workspace_id}
            t.positions = {k: v for k, v in t.positions.items() if k[0] != workspace_id}
            t.channel_members = {m for m in t.channel_members if m[0] != workspace_id}
            t.channels = {k: v for k, v in t.channels.items() if v.workspace_id != workspace_id}
            t.memberships = {k: v for k, v in t.memberships.items() if k[0] != workspace_id}
            t.workspaces.pop(workspace_id, None)

        self._write(op)


class MemoryUserRepository(_Repository):
    async def add(self, user: User) -> None:
        row = dataclasses.replace(user, created_at=_utc_required(user.created_at))

        def op(t: _Tables) -> None:
            if row.id in t.users:
                raise Conflict("a user with this id already exists", field="id")
            if any(u.subject == row.subject for u in t.users.values()):
                raise Conflict("a user with this identity subject already exists", field="subject")
            t.users[row.id] = row

        self._write(op)

    async def get(self, user_id: uuid.UUID) -> User | None:
        return self._t.users.get(user_id)

    async def get_by_subject(self, subject: str) -> User | None:
        return next((u for u in self._t.users.values() if u.subject == subject), None)

    async def get_many(self, user_ids: Sequence[uuid.UUID]) -> list[User]:
        """In the order asked for; unknown ids are left out, repeated ones returned once."""
        users = self._t.users
        return [users[i] for i in dict.fromkeys(user_ids) if i in users]

    async def get_many_by_subject(self, subjects: Sequence[str]) -> list[User]:
        wanted = set(subjects)
        return [u for u in self._t.users.values() if u.subject in wanted]


class MemoryMembershipRepository(_Repository):
    async def add(self, membership: Membership) -> None:
        row = dataclasses.replace(membership, created_at=_utc_required(membership.created_at))

        def op(t: _Tables) -> None:
            t.require_workspace(row.workspace_id)
            key = (row.workspace_id, row.user_id)
            if key in t.memberships:
                raise Conflict("the user is already a member of this workspace", field="user_id")
            t.memberships[key] = row

        self._write(op)

    async def get(self, workspace_id: uuid.UUID, user_id: uuid.UUID) -> Membership | None:
        return self._t.memberships.get((workspace_id, user_id))

    async def get_many(self, workspace_id: uuid.UUID, user_ids: Sequence[uuid.UUID]) -> builtins.list[Membership]:
        rows = self._t.memberships
        return [rows[(workspace_id, u)] for u in dict.fromkeys(user_ids) if (workspace_id, u) in rows]

    async def list(self, workspace_id: uuid.UUID) -> builtins.list[Membership]:
        """Oldest member first."""
        rows = [m for (ws, _), m in self._t.memberships.items() if ws == workspace_id]
        return sorted(rows, key=lambda m: (m.created_at, m.user_id))

    async def count(self, workspace_id: uuid.UUID) -> int:
        return sum(1 for ws, _ in self._t.memberships if ws == workspace_id)

    async def set_role(self, workspace_id: uuid.UUID, user_id: uuid.UUID, role: Role) -> None:
        """No effect when the user is not a member."""
        def op(t: _Tables) -> None:
            found = t.memberships.get((workspace_id, user_id))
            if found is not None:
                t.memberships[(workspace_id, user_id)] = dataclasses.replace(found, role=role)

        self._write(op)

    async def remove(self, workspace_id: uuid.UUID, user_id: uuid.UUID) -> None:
        def op(t: _Tables) -> None:
            t.channel_members = {m for m in t.channel_members if (m[0], m[2]) != (workspace_id, user_id)}
            t.memberships.pop((workspace_id, user_id), None)

        self._write(op)


class MemoryChannelRepository(_Repository):
    async def add(self, channel: Channel) -> None:
        row = dataclasses.replace(channel, created_at=_utc_required(channel.created_at))

        def op(t: _Tables) -> None:
            t.require_workspace(row.workspace_id)
            if row.id in t.channels:
                raise Conflict("a channel with this id already exists", field="id")
            if any(c.workspace_id == row.workspace_id and c.name == row.name for c in t.channels.values()):
                raise Conflict("the workspace already has a channel of that name", field="name")
            t.channels[row.id] = row

        self._write(op)

    async def get(self, workspace_id: uuid.UUID, channel_id: uuid.UUID) -> Channel | None:
        return self._t.channel(workspace_id, channel_id)

    async def get_by_name(self, workspace_id: uuid.UUID, name: str) -> Channel | None:
        return next((c for c in self._t.channels.values() if c.workspace_id == workspace_id and c.name == name),
                    None)

    async def list(self, workspace_id: uuid.UUID, *, include_archived: bool = False) -> builtins.list[Channel]:
        """Ordered by name."""
        rows = [c for c in self._t.channels.values()
                if c.workspace_id == workspace_id and (include_archived or not c.archived)]
        return sorted(rows, key=lambda c: c.name)

    async def count(self, workspace_id: uuid.UUID) -> int:
        """All channels, archived ones included."""
        return sum(1 for c in self._t.channels.values() if c.workspace_id == workspace_id)

    async def archive(self, workspace_id: uuid.UUID, channel_id: uuid.UUID) -> None:
        def op(t: _Tables) -> None:
            found = t.channel(workspace_id, channel_id)
            if found is not None:
                t.channels[channel_id] = dataclasses.replace(found, archived=True)

        self._write(op)

    async def add_member(self, workspace_id: uuid.UUID, channel_id: uuid.UUID, user_id: uuid.UUID) -> None:
        """Idempotent.  Raises NotFound when the channel is not one of the workspace's."""
        def op(t: _Tables) -> None:
            if t.channel(workspace_id, channel_id) is None:
                raise NotFound("no such channel in this workspace", field="channel_id")
            t.channel_members.add((workspace_id, channel_id, user_id))

        self._write(op)

    async def remove_member(self, workspace_id: uuid.UUID, channel_id: uuid.UUID, user_id: uuid.UUID) -> None:
        self._write(lambda t: t.channel_members.discard((workspace_id, channel_id, user_id)))

    async def is_member(self, workspace_id: uuid.UUID, channel_id: uuid.UUID, user_id: uuid.UUID) -> bool:
        return (workspace_id, channel_id, user_id) in self._t.channel_members

    async def list_members(self, workspace_id: uuid.UUID, channel_id: uuid.UUID) -> builtins.list[uuid.UUID]:
        return sorted(user for ws, ch, user in self._t.channel_members if (ws, ch) == (workspace_id, channel_id))

    async def list_for_user(self, workspace_id: uuid.UUID, user_id: uuid.UUID) -> builtins.list[Channel]:
        """Channels the user can see: public ones and private ones they belong to (not archived)."""
        t = self._t
        rows = [c for c in t.channels.values()
                if c.workspace_id == workspace_id and not c.archived
                and (c.kind is ChannelKind.PUBLIC or (workspace_id, c.id, user_id) in t.channel_members)]
        return sorted(rows, key=lambda c: c.name)


class MemoryMessageRepository(_Repository):
    async def add_many(self, messages: Sequence[Message]) -> int:
        """Skips any message whose id, or (channel, offset), is stored already: idempotent."""
        rows = [dataclasses.replace(m, created_at=_utc_required(m.created_at), edited_at=_utc(m.edited_at),
                                    deleted_at=_utc(m.deleted_at)) for m in messages]

        def op(t: _Tables) -> int:
            inserted = 0
            for row in rows:
                position = (row.workspace_id, row.channel_id, row.offset)
                if row.id in t.messages or position in t.positions:
                    continue
                t.messages[row.id] = row
                t.positions[position] = row.id
                inserted += 1
            return inserted

        return self._write(op) if rows else 0

    async def get(self, workspace_id: uuid.UUID, message_id: uuid.UUID) -> Message | None:
        return self._t.message(workspace_id, message_id)

    async def edit(self, workspace_id: uuid.UUID, message_id: uuid.UUID, body: str, edited_at: Any) -> bool:
        """False also for a deleted message: editing must not bring a body back."""
        def op(t: _Tables) -> bool:
            found = t.message(workspace_id, message_id)
            if found is None or found.deleted_at is not None:
                return False
            t.messages[message_id] = dataclasses.replace(found, body=body, edited_at=_utc(edited_at))
            return True

        return self._write(op)

    async def delete(self, workspace_id: uuid.UUID, message_id: uuid.UUID, deleted_at: Any) -> bool:
        """Deleting twice is True and keeps the first ``deleted_at``."""
        def op(t: _Tables) -> bool:
            found = t.message(workspace_id, message_id)
            if found is None:
                return False
            first = found.deleted_at if found.deleted_at is not None else _utc(deleted_at)
            t.messages[message_id] = dataclasses.replace(found, body="", deleted_at=first)
            return True

        return self._write(op)

    async def find_by_cmid(self, workspace_id: uuid.UUID, channel_id: uuid.UUID, author_id: uuid.UUID,
                           cmid: str) -> Message | None:
        found = [m for m in self._t.messages.values()
                 if (m.workspace_id, m.channel_id, m.author_id, m.client_msg_id)
                 == (workspace_id, channel_id, author_id, cmid)]
        return min(found, key=lambda m: m.offset, default=None)

    async def page(
        self, workspace_id: uuid.UUID, channel_id: uuid.UUID, *, before: int | None, limit: int
    ) -> list[Message]:
        """Newest first: messages with ``offset < before`` (all when None), at most ``limit``."""
        if limit <= 0:
            return []
        t = self._t
        offsets = sorted((off for ws, ch, off in t.positions
                          if (ws, ch) == (workspace_id, channel_id) and (before is None or off < before)),
                         reverse=True)[:limit]
        return [t.messages[t.positions[(workspace_id, channel_id, off)]] for off in offsets]


class MemoryReactionRepository(_Repository):
    async def add(self, reaction: Reaction) -> bool:
        key = (reaction.workspace_id, reaction.message_id, reaction.user_id, reaction.emoji)

        def op(t: _Tables) -> bool:
            if key in t.reactions:
                return False
            t.reactions.add(key)
            return True

        return self._write(op)

    async def remove(self, reaction: Reaction) -> bool:
        key = (reaction.workspace_id, reaction.message_id, reaction.user_id, reaction.emoji)

        def op(t: _Tables) -> bool:
            if key not in t.reactions:
                return False
            t.reactions.discard(key)
            return True

        return self._write(op)

    async def counts(
        self, workspace_id: uuid.UUID, message_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, dict[str, int]]:
        """Messages without reactions are absent from the result."""
        wanted = set(message_ids)
        result: dict[uuid.UUID, dict[str, int]] = {}
        for ws, message_id, _, emoji in self._t.reactions:
            if ws == workspace_id and message_id in wanted:
                per_emoji = result.setdefault(message_id, {})
                per_emoji[emoji] = per_emoji.get(emoji, 0) + 1
        return result

    async def mine(
        self, workspace_id: uuid.UUID, user_id: uuid.UUID, message_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, list[str]]:
        wanted = set(message_ids)
        result: dict[uuid.UUID, list[str]] = {}
        for ws, message_id, user, emoji in self._t.reactions:
            if ws == workspace_id and user == user_id and message_id in wanted:
                result.setdefault(message_id, []).append(emoji)
        return {k: sorted(v) for k, v in result.items()}

    async def reactors(
        self, workspace_id: uuid.UUID, message_ids: Sequence[uuid.UUID]
    ) -> dict[uuid.UUID, dict[uuid.UUID, list[str]]]:
        wanted = set(message_ids)
        result: dict[uuid.UUID, dict[uuid.UUID, list[str]]] = {}
        for ws, message_id, user, emoji in self._t.reactions:
            if ws == workspace_id and message_id in wanted:
                result.setdefault(message_id, {}).setdefault(user, []).append(emoji)
        return {k: {u: sorted(e) for u, e in v.items()} for k, v in result.items()}


class MemoryReadMarkerRepository(_Repository):
    async def advance(self, marker: ReadMarker) -> int:
        """Move the marker forward (never back); returns the stored offset."""
        key = (marker.workspace_id, marker.channel_id, marker.user_id)

        def op(t: _Tables) -> int:
            stored = t.read_markers[key] = max(t.read_markers.get(key, marker.offset), marker.offset)
            return stored

        return self._write(op)

    async def get(self, workspace_id: uuid.UUID, channel_id: uuid.UUID, user_id: uuid.UUID) -> int:
        """0 when the user has no marker in the channel."""
        return self._t.read_markers.get((workspace_id, channel_id, user_id), 0)

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
        t = self._t
        marks = [t.read_markers.get((workspace_id, channel_id, user_id), 0) for user_id, channel_id, _ in wanted]
        counted: dict[uuid.UUID, list[int]] = {}  # channel -> the pairs below their head: one pass over messages
        for i, (_, channel_id, head) in enumerate(wanted):
            if marks[i] < head:
                counted.setdefault(channel_id, []).append(i)
        counts = [0] * len(wanted)
        for msg in t.messages.values() if counted else ():
            if msg.workspace_id != workspace_id or msg.deleted_at is not None:
                continue
            for i in counted.get(msg.channel_id, ()):
                user_id, _, head = wanted[i]
                if marks[i] < msg.offset <= head and msg.author_id != user_id:
                    counts[i] += 1
        return [(mark, min(count, cap)) for mark, count in zip(marks, counts, strict=True)]


MAX_DELIVERIES = 10_000  # delivery-log entries the embedded store keeps (all workspaces), oldest dropped


class MemoryWebhookRepository(_Repository):
    async def add(self, webhook: Webhook) -> None:
        def op(t: _Tables) -> None:
            t.require_workspace(webhook.workspace_id)
            if webhook.id in t.webhooks:
                raise Conflict("webhook id already exists", field="id")
            t.webhooks[webhook.id] = webhook

        self._write(op)

    async def get(self, workspace_id: uuid.UUID, webhook_id: uuid.UUID) -> Webhook | None:
        found = self._t.webhooks.get(webhook_id)
        return found if found is not None and found.workspace_id == workspace_id else None

    async def list(self, workspace_id: uuid.UUID) -> builtins.list[Webhook]:
        rows = [w for w in self._t.webhooks.values() if w.workspace_id == workspace_id]
        return sorted(rows, key=lambda w: (w.created_at, w.id))

    async def remove(self, workspace_id: uuid.UUID, webhook_id: uuid.UUID) -> bool:
        def op(t: _Tables) -> bool:
            found = t.webhooks.get(webhook_id)
            if found is None or found.workspace_id != workspace_id:
                return False
            del t.webhooks[webhook_id]
            t.deliveries = [d for d in t.deliveries if d.webhook_id != webhook_id]
            return True

        return self._write(op)

    async def add_incoming(self, hook: IncomingWebhook) -> None:
        def op(t: _Tables) -> None:
            t.require_workspace(hook.workspace_id)
            if hook.id in t.incoming_webhooks:
                raise Conflict("incoming webhook id already exists", field="id")
            t.incoming_webhooks[hook.id] = hook

        self._write(op)

    async def get_incoming(self, workspace_id: uuid.UUID, hook_id: uuid.UUID) -> IncomingWebhook | None:
        found = self._t.incoming_webhooks.get(hook_id)
        return found if found is not None and found.workspace_id == workspace_id else None

    async def list_incoming(self, workspace_id: uuid.UUID) -> builtins.list[IncomingWebhook]:
        rows = [h for h in self._t.incoming_webhooks.values() if h.workspace_id == workspace_id]
        return sorted(rows, key=lambda h: (h.created_at, h.id))

    async def remove_incoming(self, workspace_id: uuid.UUID, hook_id: uuid.UUID) -> bool:
        def op(t: _Tables) -> bool:
            found = t.incoming_webhooks.get(hook_id)
            if found is None or found.workspace_id != workspace_id:
                return False
            del t.incoming_webhooks[hook_id]
            return True

        return self._write(op)

    async def log_delivery(self, attempt: DeliveryAttempt) -> None:
        def op(t: _Tables) -> None:
            t.deliveries.append(dataclasses.replace(attempt, at=_utc_required(attempt.at)))
            del t.deliveries[:-MAX_DELIVERIES]

        self._write(op)

    async def prune_deliveries(self, workspace_id: uuid.UUID, webhook_id: uuid.UUID, before: datetime) -> int:
        cutoff = _utc_required(before)

        def op(t: _Tables) -> int:
            kept = [d for d in t.deliveries
                    if not (d.workspace_id == workspace_id and d.webhook_id == webhook_id and d.at < cutoff)]
            dropped = len(t.deliveries) - len(kept)
            t.deliveries = kept
            return dropped

        return self._write(op)

    async def deliveries(self, workspace_id: uuid.UUID, webhook_id: uuid.UUID, *, limit: int,
                         status: DeliveryStatus | None = None) -> builtins.list[DeliveryAttempt]:
        rows = [d for d in reversed(self._t.deliveries)
                if d.workspace_id == workspace_id and d.webhook_id == webhook_id
                and (status is None or d.status is status)]
        return rows[:limit]


class MemoryUnitOfWork:
    """One transaction.  Use as ``async with``; leaving without :meth:`commit` rolls back."""

    def __init__(self, store: MemoryStore, *, read_only: bool = False) -> None:
        self._store = store
        self.read_only = read_only  # writes and commit() raise ReadOnlyError (the port's rules)
        self._open = False
        self._work: _Tables | None = None  # this unit's copy, made at its first write
        self._log: list[Callable[[_Tables], object]] = []  # its writes, replayed if others committed first
        self._base = 0  # the store's version when the copy was made
        self.events: list[Any] = []

    async def __aenter__(self) -> MemoryUnitOfWork:
        if self._open:
            raise RuntimeError("this unit of work is already open")
        self._open = True
        self._reset()
        self.workspaces = MemoryWorkspaceRepository(self)
        self.users = MemoryUserRepository(self)
        self.memberships = MemoryMembershipRepository(self)
        self.channels = MemoryChannelRepository(self)
        self.messages = MemoryMessageRepository(self)
        self.reactions = MemoryReactionRepository(self)
        self.read_markers = MemoryReadMarkerRepository(self)
        self.webhooks = MemoryWebhookRepository(self)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._open = False
        self._reset()  # what was not committed is dropped

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError("use the unit of work inside 'async with'")

    def _reset(self) -> None:
        self._work, self._log = None, []

    def _read(self) -> _Tables:
        self._check_open()
        return self._work if self._work is not None else self._store._tables

    def _write(self, op: Callable[[_Tables], R]) -> R:
        self._check_open()
        if self.read_only:
            raise ReadOnlyError("this unit of work was opened read_only: it does not write")
        if self._work is None:
            self._work, self._base = self._store._tables.copy(), self._store._version
        result = op(self._work)  # raises before anything is logged: a refused write leaves no trace
        self._log.append(op)
        return result

    async def commit(self) -> None:
        self._check_open()
        if self.read_only:
            raise ReadOnlyError("this unit of work was opened read_only: there is nothing to commit")
        if self._work is not None:
            self._store._commit(self._work, self._log, self._base)
        self._reset()

    async def rollback(self) -> None:
        self._check_open()
        self._reset()


class MemoryStore:
    """The Store port in memory.  No I/O anywhere; ``start``/``stop`` keep the lifecycle of the others."""

    def __init__(self) -> None:
        self._tables = _Tables()
        self._version = 0  # one more at each commit that wrote something
        self._life = Lifecycle("store")

    async def start(self) -> None:
        self._life.begin_start()
        self._life.started()

    async def stop(self) -> None:
        self._life.begin_stop()

    async def __aenter__(self) -> MemoryStore:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def unit_of_work(self, *, read_only: bool = False) -> MemoryUnitOfWork:
        if not self._life.running:
            raise RuntimeError("the store is not started")
        return MemoryUnitOfWork(self, read_only=read_only)

    async def run(self, fn: Callable[[UnitOfWork], Awaitable[T]], *, retries: int = 5) -> T:
        """Run ``fn`` in a fresh unit of work and commit.  A commit here never loses a serialization
        conflict (see the module docstring), so ``retries`` is only checked, never used."""
        if retries < 0:
            raise ValueError("retries must be >= 0")
        async with self.unit_of_work() as uow:
            result = await fn(uow)
            await uow.commit()
        return result

    async def ping(self) -> None:
        if not self._life.running:
            raise Unavailable("the store is not started")

    def _commit(self, work: _Tables, log: builtins.list[Callable[[_Tables], object]], base: int) -> None:
        if self._version != base:  # someone committed since this unit copied the state: replay onto theirs
            work = self._tables.copy()
            for op in log:
                op(work)  # a Conflict here leaves the committed state as it was
        self._tables = work
        self._version += 1


if TYPE_CHECKING:  # the type checker proves the port is satisfied (centrifuge's `var _ Broker = ...`)

    def _conforms(store: MemoryStore, uow: MemoryUnitOfWork) -> None:
        _store: Store = store
        _uow: UnitOfWork = uow
