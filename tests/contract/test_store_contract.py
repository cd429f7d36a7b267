"""Contract of the Store port (storm/ports/store.py), run against every adapter: the memory store
(storm/adapters/memory_store.py), SQLite and PostgreSQL (the ``store`` fixture of tests/conftest.py).

Each test states a behaviour a caller would notice.  The tables are shared on PostgreSQL, so every test
makes its own workspaces and users (random slugs, subjects and ids).  What only the SQL adapter has (its
engine and tables, statement caching, serialization retries) is tested on ``sql_store``.  See
docs/database.md.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone

import asyncpg
import psycopg
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, select

from db import models
from db.errors import SerializationFailure, is_serialization_failure
from db.store import RetryPolicy, SqlStore
from storm.adapters.memory_store import MemoryStore
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
from storm.errors import Conflict, NotFound, Unavailable
from storm.ports.store import ReadOnlyError, Store, UnitOfWork
from storm.webhooks import DeliveryAttempt, DeliveryStatus, IncomingWebhook, Webhook

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


# ---- helpers --------------------------------------------------------------------------------------------
def _ws(prefix: str = "t") -> Workspace:
    return Workspace(id=uuid.uuid4(), slug=f"{prefix}-{uuid.uuid4().hex[:16]}", name="Test", plan="pro",
                     created_at=T0)


def _user() -> User:
    return User(id=uuid.uuid4(), subject=f"test|{uuid.uuid4().hex}", name="Tess", created_at=T0)


def _msg(ws: Workspace, channel_id: uuid.UUID, offset: int, *, body: str | None = None,
         author: uuid.UUID | None = None) -> Message:
    return Message(id=uuid.uuid4(), workspace_id=ws.id, channel_id=channel_id,
                   author_id=author or uuid.uuid4(), body=body if body is not None else f"message {offset}",
                   offset=offset, created_at=T0 + timedelta(seconds=offset))


async def _add(store: Store, *objects: object) -> None:
    """Insert domain objects in one committed unit of work."""

    async def add(uow: UnitOfWork) -> None:
        for obj in objects:
            if isinstance(obj, Workspace):
                await uow.workspaces.add(obj)
            elif isinstance(obj, User):
                await uow.users.add(obj)
            elif isinstance(obj, Membership):
                await uow.memberships.add(obj)
            elif isinstance(obj, Channel):
                await uow.channels.add(obj)
            elif isinstance(obj, Message):
                await uow.messages.add_many([obj])
            elif isinstance(obj, Reaction):
                await uow.reactions.add(obj)
            elif isinstance(obj, ReadMarker):
                await uow.read_markers.advance(obj)
            else:
                raise TypeError(obj)

    await store.run(add)


async def _tenant(store: Store) -> dict[str, object]:
    """A workspace with one row in every tenant table: member, public + private channel, channel member,
    message, reaction, read marker, webhook, incoming webhook, webhook delivery."""
    ws, user = _ws(), _user()
    public = Channel(id=uuid.uuid4(), workspace_id=ws.id, name="general", created_at=T0)
    private = Channel(id=uuid.uuid4(), workspace_id=ws.id, name="secret", kind=ChannelKind.PRIVATE,
                      created_by=user.id, created_at=T0)
    msg = _msg(ws, public.id, 1, author=user.id)
    await _add(store, ws, user, Membership(ws.id, user.id, Role.OWNER, T0), public, private, msg,
               Reaction(ws.id, msg.id, user.id, "👍"), ReadMarker(ws.id, public.id, user.id, 1))

    hook = Webhook(uuid.uuid4(), ws.id, "https://hooks.example.com/x", "whsec_x", ("message.posted",),
                   channels=(public.id,), created_at=T0)

    async def join(uow: UnitOfWork) -> None:
        await uow.channels.add_member(ws.id, private.id, user.id)
        await uow.webhooks.add(hook)
        await uow.webhooks.add_incoming(IncomingWebhook(uuid.uuid4(), ws.id, public.id, user.id, "Bot", "0" * 64,
                                                        created_at=T0))
        await uow.webhooks.log_delivery(DeliveryAttempt(uuid.uuid4(), ws.id, hook.id, "evt", "message.posted", 1,
                                                        DeliveryStatus.DELIVERED, 200, "", 5, at=T0))

    await store.run(join)
    return {"ws": ws, "user": user, "public": public, "private": private, "msg": msg, "hook": hook}


# ---- webhooks (storm/webhooks.py) ------------------------------------------------------------------------
async def test_webhooks_round_trip_and_stay_in_their_workspace(store: Store) -> None:
    mine, other = await _tenant(store), await _tenant(store)
    ws, hook, public = mine["ws"], mine["hook"], mine["public"]
    assert isinstance(ws, Workspace) and isinstance(hook, Webhook) and isinstance(public, Channel)
    theirs = other["ws"]
    assert isinstance(theirs, Workspace)
    later = [DeliveryAttempt(uuid.uuid4(), ws.id, hook.id, "evt2", "message.posted", n, status, code, err, 7,
                             at=T0 + timedelta(seconds=n))
             for n, status, code, err in ((1, DeliveryStatus.FAILED, 503, "HTTP 503"),
                                          (2, DeliveryStatus.DEAD_LETTERED, None, "timed out after 4s"))]

    async def write(uow: UnitOfWork) -> None:
        for attempt in later:
            await uow.webhooks.log_delivery(attempt)

    await store.run(write)
    async with store.unit_of_work() as uow:
        assert await uow.webhooks.get(ws.id, hook.id) == hook
        assert await uow.webhooks.get(theirs.id, hook.id) is None  # another workspace's id finds nothing
        assert await uow.webhooks.list(ws.id) == [hook]
        [incoming] = await uow.webhooks.list_incoming(ws.id)
        assert await uow.webhooks.get_incoming(ws.id, incoming.id) == incoming
        assert await uow.webhooks.get_incoming(theirs.id, incoming.id) is None
        log = await uow.webhooks.deliveries(ws.id, hook.id, limit=10)
        assert [(d.event_id, d.attempt, d.status) for d in log] == [
            ("evt2", 2, DeliveryStatus.DEAD_LETTERED), ("evt2", 1, DeliveryStatus.FAILED),
            ("evt", 1, DeliveryStatus.DELIVERED)]  # newest first
        assert log[0] == later[1] and log[1] == later[0]
        dead = await uow.webhooks.deliveries(ws.id, hook.id, limit=10, status=DeliveryStatus.DEAD_LETTERED)
        assert dead == [later[1]]
        assert await uow.webhooks.deliveries(theirs.id, hook.id, limit=10) == []

    async def remove(uow: UnitOfWork) -> tuple[bool, bool, bool]:
        return (await uow.webhooks.remove(theirs.id, hook.id), await uow.webhooks.remove(ws.id, hook.id),
                await uow.webhooks.remove_incoming(ws.id, incoming.id))

    assert await store.run(remove) == (False, True, True)
    async with store.unit_of_work() as uow:
        assert await uow.webhooks.list(ws.id) == [] and await uow.webhooks.list_incoming(ws.id) == []
        assert await uow.webhooks.deliveries(ws.id, hook.id, limit=10) == []  # the log went with it
        assert len(await uow.webhooks.list(theirs.id)) == 1


# ---- units of work --------------------------------------------------------------------------------------
async def test_leaving_without_commit_rolls_back(store: Store) -> None:
    ws = _ws()
    async with store.unit_of_work() as uow:
        await uow.workspaces.add(ws)
        assert await uow.workspaces.get(ws.id) == ws  # visible inside its own transaction
    late = _user()
    with pytest.raises(RuntimeError):
        async with store.unit_of_work() as uow:
            await uow.workspaces.add(ws)
            await uow.commit()
            await uow.users.add(late)
            raise RuntimeError("boom")
    async with store.unit_of_work() as uow:
        assert await uow.workspaces.get(ws.id) == ws  # committed before the error: kept
        assert await uow.users.get(late.id) is None  # written after the commit: rolled back
        assert uow.events == []


async def test_explicit_rollback_discards_the_work(store: Store) -> None:
    ws = _ws()
    async with store.unit_of_work() as uow:
        await uow.workspaces.add(ws)
        await uow.rollback()
        await uow.commit()
    async with store.unit_of_work() as uow:
        assert await uow.workspaces.get(ws.id) is None


async def test_a_read_only_unit_sees_each_commit_as_it_happens_and_refuses_to_write(store: Store) -> None:
    ws, user = _ws(), _user()
    await _add(store, ws)
    async with store.unit_of_work(read_only=True) as uow:
        assert await uow.workspaces.get(ws.id) == ws
        assert await uow.users.get(user.id) is None
        await _add(store, user)  # committed by another unit while this one is open: no shared snapshot
        assert await uow.users.get(user.id) == user
        with pytest.raises(ReadOnlyError):
            await uow.workspaces.add(_ws())
        with pytest.raises(ReadOnlyError):
            await uow.commit()
    late = _ws()
    with pytest.raises(ReadOnlyError):
        async with store.unit_of_work(read_only=True) as uow:
            await uow.workspaces.add(late)
    async with store.unit_of_work() as uow:
        assert await uow.workspaces.get(late.id) is None  # the refused write left nothing


async def test_run_commits_and_returns_the_result(store: Store) -> None:
    ws = _ws()

    async def create(uow: UnitOfWork) -> str:
        await uow.workspaces.add(ws)
        uow.events.append(("workspace_created", ws.id))
        return ws.slug

    assert await store.run(create) == ws.slug
    async with store.unit_of_work() as uow:
        assert await uow.workspaces.get_by_slug(ws.slug) == ws


async def test_datetimes_come_back_aware_in_utc(store: Store) -> None:
    ws = _ws()
    local = datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=timezone(timedelta(hours=-5)))
    await _add(store, Workspace(ws.id, ws.slug, ws.name, ws.plan, created_at=local))
    async with store.unit_of_work() as uow:
        found = await uow.workspaces.get(ws.id)
    assert found is not None
    assert found.created_at == local
    assert found.created_at.utcoffset() == timedelta(0)


# ---- conflicts ------------------------------------------------------------------------------------------
async def test_duplicate_slug_conflicts(store: Store) -> None:
    ws = _ws()
    await _add(store, ws)
    with pytest.raises(Conflict) as err:
        await _add(store, Workspace(id=uuid.uuid4(), slug=ws.slug, name="Other"))
    assert err.value.field == "slug"
    assert "slug" in err.value.message


async def test_duplicate_subject_conflicts(store: Store) -> None:
    user = _user()
    await _add(store, user)
    with pytest.raises(Conflict) as err:
        await _add(store, User(id=uuid.uuid4(), subject=user.subject, name="Twin"))
    assert err.value.field == "subject"


async def test_duplicate_channel_name_conflicts_within_a_workspace_only(store: Store) -> None:
    a, b = _ws(), _ws()
    await _add(store, a, b, Channel(id=uuid.uuid4(), workspace_id=a.id, name="general"))
    with pytest.raises(Conflict) as err:
        await _add(store, Channel(id=uuid.uuid4(), workspace_id=a.id, name="general"))
    assert err.value.field == "name"
    assert "channel" in err.value.message
    await _add(store, Channel(id=uuid.uuid4(), workspace_id=b.id, name="general"))  # another workspace: fine


async def test_duplicate_membership_conflicts(store: Store) -> None:
    ws, user = _ws(), _user()
    await _add(store, ws, user, Membership(ws.id, user.id, Role.MEMBER))
    with pytest.raises(Conflict):
        await _add(store, Membership(ws.id, user.id, Role.ADMIN))


async def test_rows_of_a_missing_workspace_are_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await _add(store, Channel(id=uuid.uuid4(), workspace_id=uuid.uuid4(), name="orphan"))


async def test_seed_style_conflict_keeps_the_first_row(store: Store) -> None:
    """A Conflict aborts only its own transaction: the winner's row is readable afterwards."""
    ws = _ws()
    await _add(store, ws)
    with pytest.raises(Conflict):
        await _add(store, Workspace(id=uuid.uuid4(), slug=ws.slug, name="Loser"))
    async with store.unit_of_work() as uow:
        assert await uow.workspaces.get_by_slug(ws.slug) == ws


# ---- workspaces, users, memberships ---------------------------------------------------------------------
async def test_workspaces_list_by_slug_with_cursor(store: Store) -> None:
    prefix = f"c{uuid.uuid4().hex[:10]}"
    made = [Workspace(id=uuid.uuid4(), slug=f"{prefix}-{s}", name=s) for s in ("b", "a", "c")]
    await _add(store, *made)
    async with store.unit_of_work() as uow:
        page = await uow.workspaces.list(after_slug=f"{prefix}-a", limit=2)
        first = await uow.workspaces.list(after_slug=prefix, limit=1)
    assert [w.slug for w in page] == [f"{prefix}-b", f"{prefix}-c"]
    assert [w.slug for w in first] == [f"{prefix}-a"]


async def test_workspaces_of_a_user(store: Store) -> None:
    a, b, c, user = _ws("a"), _ws("b"), _ws("c"), _user()
    await _add(store, a, b, c, user, Membership(b.id, user.id, Role.MEMBER),
               Membership(a.id, user.id, Role.OWNER))
    async with store.unit_of_work() as uow:
        assert await uow.workspaces.list_for_user(user.id) == [a, b]


async def test_users_get_many_in_asked_order(store: Store) -> None:
    u1, u2, u3 = _user(), _user(), _user()
    await _add(store, u1, u2, u3)
    async with store.unit_of_work() as uow:
        got = await uow.users.get_many([u3.id, uuid.uuid4(), u1.id, u3.id])
        assert await uow.users.get_by_subject(u2.subject) == u2
        assert await uow.users.get_many([]) == []
    assert got == [u3, u1]


async def test_users_by_subjects_and_their_memberships_in_one_read_each(store: Store) -> None:
    """What the directory's batched first sights read (storm/directory.py, Directory._load_members)."""
    a, b = _ws("a"), _ws("b")
    u1, u2, u3 = _user(), _user(), _user()
    await _add(store, a, b, u1, u2, u3, Membership(a.id, u1.id, Role.ADMIN), Membership(b.id, u2.id, Role.MEMBER),
               Membership(a.id, u3.id, Role.MEMBER))
    async with store.unit_of_work() as uow:
        users = await uow.users.get_many_by_subject([u2.subject, "nobody", u1.subject, u2.subject])
        assert sorted(users, key=lambda u: u.subject) == sorted([u1, u2], key=lambda u: u.subject)
        assert await uow.users.get_many_by_subject([]) == []
        members = await uow.memberships.get_many(a.id, [u1.id, u2.id, u3.id, uuid.uuid4(), u1.id])
        assert sorted((m.user_id, m.role) for m in members) == sorted([(u1.id, Role.ADMIN), (u3.id, Role.MEMBER)])
        assert await uow.memberships.get_many(b.id, []) == []


async def test_memberships_roles_count_and_removal(store: Store) -> None:
    t = await _tenant(store)
    ws, owner, private = t["ws"], t["user"], t["private"]
    assert isinstance(ws, Workspace) and isinstance(owner, User) and isinstance(private, Channel)
    other = _user()
    await _add(store, other, Membership(ws.id, other.id, Role.MEMBER, T0 + timedelta(seconds=1)))

    async def promote_and_join(uow: UnitOfWork) -> None:
        await uow.memberships.set_role(ws.id, other.id, Role.ADMIN)
        await uow.channels.add_member(ws.id, private.id, other.id)

    await store.run(promote_and_join)
    async with store.unit_of_work() as uow:
        assert await uow.memberships.count(ws.id) == 2
        assert [(mm.user_id, mm.role) for mm in await uow.memberships.list(ws.id)] == [
            (owner.id, Role.OWNER), (other.id, Role.ADMIN)]
        await uow.memberships.remove(ws.id, other.id)
        await uow.commit()
    async with store.unit_of_work() as uow:
        assert await uow.memberships.get(ws.id, other.id) is None
        assert not await uow.channels.is_member(ws.id, private.id, other.id)  # left its private channels
        assert await uow.channels.is_member(ws.id, private.id, owner.id)
        assert await uow.memberships.count(ws.id) == 1


# ---- channels -------------------------------------------------------------------------------------------
async def test_channels_visible_to_a_user(store: Store) -> None:
    ws, me = _ws(), _user()

    def ch(name: str, kind: ChannelKind = ChannelKind.PUBLIC) -> Channel:
        return Channel(id=uuid.uuid4(), workspace_id=ws.id, name=name, kind=kind, created_at=T0)

    public, old, mine, theirs, dm = (ch("a-public"), ch("b-old"), ch("c-mine", ChannelKind.PRIVATE),
                                     ch("d-theirs", ChannelKind.PRIVATE), ch("e-dm", ChannelKind.DIRECT))
    await _add(store, ws, me, public, old, mine, theirs, dm)

    async def arrange(uow: UnitOfWork) -> None:
        await uow.channels.add_member(ws.id, mine.id, me.id)
        await uow.channels.add_member(ws.id, mine.id, me.id)  # idempotent
        await uow.channels.add_member(ws.id, dm.id, me.id)
        await uow.channels.add_member(ws.id, theirs.id, uuid.uuid4())
        await uow.channels.archive(ws.id, old.id)

    await store.run(arrange)
    async with store.unit_of_work() as uow:
        visible = await uow.channels.list_for_user(ws.id, me.id)
        assert [c.name for c in visible] == ["a-public", "c-mine", "e-dm"]
        assert [c.name for c in await uow.channels.list(ws.id)] == ["a-public", "c-mine", "d-theirs", "e-dm"]
        assert len(await uow.channels.list(ws.id, include_archived=True)) == 5
        assert await uow.channels.count(ws.id) == 5
        archived = await uow.channels.get_by_name(ws.id, "b-old")
        assert archived is not None and archived.archived
        assert await uow.channels.list_members(ws.id, mine.id) == [me.id]
        await uow.channels.remove_member(ws.id, mine.id, me.id)
        assert not await uow.channels.is_member(ws.id, mine.id, me.id)


# ---- tenant isolation -----------------------------------------------------------------------------------
async def test_another_workspaces_ids_find_nothing(store: Store) -> None:
    mine, theirs = await _tenant(store), await _tenant(store)
    a = mine["ws"]
    b_user, b_public, b_private, b_msg = theirs["user"], theirs["public"], theirs["private"], theirs["msg"]
    assert isinstance(a, Workspace) and isinstance(b_user, User) and isinstance(b_msg, Message)
    assert isinstance(b_public, Channel) and isinstance(b_private, Channel)

    async with store.unit_of_work() as uow:
        # reads
        assert await uow.memberships.get(a.id, b_user.id) is None
        assert await uow.channels.get(a.id, b_public.id) is None
        assert not await uow.channels.is_member(a.id, b_private.id, b_user.id)
        assert await uow.channels.list_members(a.id, b_private.id) == []
        assert await uow.channels.list_for_user(a.id, b_user.id) == [
            await uow.channels.get_by_name(a.id, "general")]  # only a's public channel
        assert await uow.messages.get(a.id, b_msg.id) is None
        assert await uow.messages.page(a.id, b_public.id, before=None, limit=10) == []
        assert await uow.reactions.counts(a.id, [b_msg.id]) == {}
        assert await uow.read_markers.get(a.id, b_public.id, b_user.id) == 0
        # writes
        assert not await uow.messages.edit(a.id, b_msg.id, "hijacked", T0)
        assert not await uow.messages.delete(a.id, b_msg.id, T0)
        assert not await uow.reactions.remove(Reaction(a.id, b_msg.id, b_user.id, "👍"))
        await uow.channels.archive(a.id, b_public.id)
        await uow.channels.remove_member(a.id, b_private.id, b_user.id)
        await uow.memberships.set_role(a.id, b_user.id, Role.MEMBER)
        await uow.memberships.remove(a.id, b_user.id)
        with pytest.raises(NotFound):
            await uow.channels.add_member(a.id, b_private.id, uuid.uuid4())
        await uow.commit()

    b = theirs["ws"]
    assert isinstance(b, Workspace)
    async with store.unit_of_work() as uow:  # b is untouched
        assert await uow.messages.get(b.id, b_msg.id) == b_msg
        assert await uow.channels.get(b.id, b_public.id) == b_public
        assert await uow.channels.is_member(b.id, b_private.id, b_user.id)
        membership = await uow.memberships.get(b.id, b_user.id)
        assert membership is not None and membership.role is Role.OWNER
        assert await uow.reactions.counts(b.id, [b_msg.id]) == {b_msg.id: {"👍": 1}}
        assert await uow.workspaces.list_for_user(b_user.id) == [b]


async def test_deleting_a_workspace_removes_all_its_rows_and_only_its_rows(sql_store: SqlStore) -> None:
    store = sql_store
    doomed, kept = await _tenant(store), await _tenant(store)
    d, k = doomed["ws"], kept["ws"]
    assert isinstance(d, Workspace) and isinstance(k, Workspace)

    async def counts(workspace_id: uuid.UUID) -> dict[str, int]:
        result = {}
        async with store.engine.connect() as conn:
            for table in (*models.TENANT_TABLES, models.workspaces):
                column = table.c.id if table is models.workspaces else table.c.workspace_id
                query = select(func.count()).select_from(table).where(column == workspace_id)
                result[table.name] = (await conn.execute(query)).scalar_one()
        return result

    before = await counts(k.id)
    assert all(n >= 1 for n in (await counts(d.id)).values())

    async def delete(uow: UnitOfWork) -> None:
        await uow.workspaces.delete(d.id)

    await store.run(delete)
    assert set((await counts(d.id)).values()) == {0}
    assert await counts(k.id) == before
    async with store.unit_of_work() as uow:
        assert await uow.users.get(doomed["user"].id) is not None  # type: ignore[attr-defined]


async def test_a_deleted_workspace_answers_nothing_and_the_other_everything(store: Store) -> None:
    """The same as above through the port only, so it holds for every adapter."""
    doomed, kept = await _tenant(store), await _tenant(store)

    async def seen(t: dict[str, object]) -> tuple[object, ...]:
        ws, user, public, private, msg = t["ws"], t["user"], t["public"], t["private"], t["msg"]
        assert isinstance(ws, Workspace) and isinstance(user, User) and isinstance(msg, Message)
        assert isinstance(public, Channel) and isinstance(private, Channel)
        async with store.unit_of_work() as uow:
            return (await uow.workspaces.get(ws.id), await uow.workspaces.get_by_slug(ws.slug),
                    await uow.memberships.count(ws.id), await uow.channels.count(ws.id),
                    await uow.channels.is_member(ws.id, private.id, user.id), await uow.messages.get(ws.id, msg.id),
                    await uow.messages.page(ws.id, public.id, before=None, limit=10),
                    await uow.reactions.counts(ws.id, [msg.id]), await uow.read_markers.get(ws.id, public.id, user.id),
                    await uow.workspaces.list_for_user(user.id))

    before = await seen(kept)
    assert (await seen(doomed))[2:5] == (1, 2, True)
    doomed_ws = doomed["ws"]
    assert isinstance(doomed_ws, Workspace)

    async def delete(uow: UnitOfWork) -> None:
        await uow.workspaces.delete(doomed_ws.id)

    await store.run(delete)
    assert await seen(doomed) == (None, None, 0, 0, False, None, [], {}, 0, [])
    assert await seen(kept) == before
    async with store.unit_of_work() as uow:
        assert await uow.users.get(doomed["user"].id) is not None  # type: ignore[attr-defined]


# ---- messages -------------------------------------------------------------------------------------------
async def test_add_many_is_idempotent(store: Store) -> None:
    ws, ch = _ws(), uuid.uuid4()
    await _add(store, ws)
    batch = [_msg(ws, ch, n) for n in (1, 2, 3)]
    same_offset = Message(**{**_as_dict(batch[0]), "id": uuid.uuid4(), "body": "impostor"})

    async with store.unit_of_work() as uow:
        assert await uow.messages.add_many(batch) == 3
        assert await uow.messages.add_many(batch) == 0
        assert await uow.messages.add_many([same_offset]) == 0
        assert await uow.messages.add_many([*batch, _msg(ws, ch, 4)]) == 1
        assert await uow.messages.add_many([]) == 0
        await uow.commit()
    async with store.unit_of_work() as uow:
        assert await uow.messages.add_many(batch) == 0  # and across transactions
        page = await uow.messages.page(ws.id, ch, before=None, limit=10)
    assert [(mm.offset, mm.body) for mm in page] == [(4, "message 4"), (3, "message 3"), (2, "message 2"),
                                                     (1, "message 1")]
    assert page[-1] == batch[0]


async def test_find_by_cmid_is_per_author_channel_and_workspace(store: Store) -> None:
    ws, other_ws, ch, alice, bob = _ws(), _ws(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    mine = Message(**{**_as_dict(_msg(ws, ch, 7, author=alice)), "client_msg_id": "c-1"})
    theirs = Message(**{**_as_dict(_msg(ws, ch, 8, author=bob)), "client_msg_id": "c-2"})
    await _add(store, ws, other_ws, mine, theirs)
    async with store.unit_of_work() as uow:
        assert await uow.messages.find_by_cmid(ws.id, ch, alice, "c-1") == mine
        assert await uow.messages.find_by_cmid(ws.id, ch, bob, "c-1") is None  # another author's id space
        assert await uow.messages.find_by_cmid(ws.id, uuid.uuid4(), alice, "c-1") is None
        assert await uow.messages.find_by_cmid(other_ws.id, ch, alice, "c-1") is None
        assert await uow.messages.find_by_cmid(ws.id, ch, alice, "c-9") is None


async def test_batched_lookups_of_any_length_share_a_few_statements_and_answer_each_row_once(
        sql_store: SqlStore) -> None:
    """An expanding IN renders a placeholder per value: unpadded, each batch length was a statement the driver
    prepared again per pooled connection (asyncpg keeps 100), and the directory's batches kept evicting one
    another.  On PostgreSQL the list is one array parameter (one statement whatever the length); elsewhere
    it is padded to a power of two, lengths 1 to 64 making 7 statements (db/repositories.py, ``_lookup``).
    Neither changes an answer."""
    from sqlalchemy import event

    users = [_user() for _ in range(5)]
    ws = _ws()
    await _add(sql_store, ws, *users, *(Membership(ws.id, u.id, Role.MEMBER, T0) for u in users))
    seen: set[str] = set()

    def record(conn: object, cursor: object, statement: str, *_rest: object) -> None:
        if "FROM users" in statement:
            seen.add(statement)

    sync_engine = sql_store._engine.sync_engine  # type: ignore[attr-defined]
    event.listen(sync_engine, "before_cursor_execute", record)
    try:
        async with sql_store.unit_of_work(read_only=True) as uow:
            for n in range(1, 65):
                asked = [users[i % 5].id for i in range(min(n, 5))] + [uuid.uuid4() for _ in range(n - 5)]
                got = await uow.users.get_many(asked)
                assert [u.id for u in got] == [u.id for u in users[:min(n, 5)]], n
            forms = 1 if sql_store._engine.dialect.name == "postgresql" else 7  # type: ignore[attr-defined]
            assert len(seen) == forms, sorted(len(s) for s in seen)
            three = [u.subject for u in users[:3]]
            assert sorted(u.subject for u in await uow.users.get_many_by_subject(three)) == sorted(three)
            members = await uow.memberships.get_many(ws.id, [u.id for u in users[:3]])
            assert sorted(mb.user_id for mb in members) == sorted(u.id for u in users[:3])  # once each
    finally:
        event.remove(sync_engine, "before_cursor_execute", record)


async def test_insert_or_skip_is_cached_and_renders_like_sqlalchemys_own(sql_store: SqlStore) -> None:
    """db/dml.py: the batch INSERT is compiled once, not once per batch, and says the same SQL."""
    store = sql_store
    from sqlalchemy import event
    from sqlalchemy.dialects import postgresql, sqlite

    from db import models as mm
    from db.dml import insert_or_skip

    dialect = store._engine.dialect.name  # type: ignore[attr-defined]
    ours = insert_or_skip(dialect, mm.messages).returning(mm.messages.c.id)
    module = sqlite if dialect == "sqlite" else postgresql
    theirs = module.insert(mm.messages).on_conflict_do_nothing().returning(mm.messages.c.id)
    assert str(ours.compile(dialect=store._engine.dialect)) == str(  # type: ignore[attr-defined]
        theirs.compile(dialect=store._engine.dialect))  # type: ignore[attr-defined]
    ws, ch = _ws(), uuid.uuid4()
    await _add(store, ws)
    stats: list[str] = []

    def record(conn: object, cursor: object, statement: str, parameters: object, context: object,
               executemany: bool) -> None:
        if "INSERT INTO messages" in statement:
            stats.append(str(getattr(context, "cache_hit", "")))

    sync_engine = store._engine.sync_engine  # type: ignore[attr-defined]
    event.listen(sync_engine, "before_cursor_execute", record)
    try:
        for start in (1, 4, 9):
            async with store.unit_of_work() as uow:
                await uow.messages.add_many([_msg(ws, ch, n) for n in range(start, start + 3)])
                await uow.commit()
    finally:
        event.remove(sync_engine, "before_cursor_execute", record)
    assert stats[0].endswith(("CACHE_MISS", "CACHE_HIT")) and all(s.endswith("CACHE_HIT") for s in stats[1:]), stats


async def test_add_many_takes_big_batches(store: Store) -> None:
    ws, ch = _ws(), uuid.uuid4()
    await _add(store, ws)
    batch = [_msg(ws, ch, n) for n in range(1, 6001)]  # more than one statement's worth of parameters

    async def write(uow: UnitOfWork) -> int:
        return await uow.messages.add_many(batch)

    assert await store.run(write) == 6000
    assert await store.run(write) == 0
    async with store.unit_of_work() as uow:
        newest = await uow.messages.page(ws.id, ch, before=None, limit=1)
    assert newest[0].offset == 6000


async def test_page_newest_first_with_before_cursor(store: Store) -> None:
    ws, ch, other = _ws(), uuid.uuid4(), uuid.uuid4()
    await _add(store, ws)
    async with store.unit_of_work() as uow:
        await uow.messages.add_many([_msg(ws, ch, n) for n in range(1, 11)] + [_msg(ws, other, 5)])
        await uow.commit()
    async with store.unit_of_work() as uow:
        pages, before = [], None
        while True:
            page = await uow.messages.page(ws.id, ch, before=before, limit=4)
            if not page:
                break
            pages.append([mm.offset for mm in page])
            before = page[-1].offset
        assert await uow.messages.page(ws.id, ch, before=None, limit=0) == []
    assert pages == [[10, 9, 8, 7], [6, 5, 4, 3], [2, 1]]


def _pulsar_position(ledger: int, entry: int) -> int:
    """The shape of a Pulsar-backed offset (ADR 0005): increasing per channel, large, far from dense."""
    return (ledger << 20) | entry


async def test_sparse_offsets_page_idempotently_and_move_markers(store: Store) -> None:
    """Nothing may assume offsets are dense: paging by cursor, idempotence on (channel, offset) and read
    markers all work with gaps and with values near the top of BIGINT."""
    ws, ch, user = _ws(), uuid.uuid4(), uuid.uuid4()
    await _add(store, ws)
    offsets = [_pulsar_position(ledger, entry) for ledger in (17, 18, 2**41) for entry in (0, 5, 1000)]
    assert offsets == sorted(offsets) and max(offsets) < 2**63
    batch = [Message(id=uuid.uuid4(), workspace_id=ws.id, channel_id=ch, author_id=user, body=str(off),
                     offset=off, created_at=T0) for off in offsets]

    async def write(uow: UnitOfWork) -> int:
        return await uow.messages.add_many(batch)

    assert await store.run(write) == len(offsets)
    assert await store.run(write) == 0
    async with store.unit_of_work() as uow:
        pages, before = [], None
        while page := await uow.messages.page(ws.id, ch, before=before, limit=4):
            pages.append([mm.offset for mm in page])
            before = page[-1].offset
        assert await uow.read_markers.advance(ReadMarker(ws.id, ch, user, offsets[-1])) == offsets[-1]
        assert await uow.read_markers.advance(ReadMarker(ws.id, ch, user, offsets[3])) == offsets[-1]
    newest_first = offsets[::-1]
    assert pages == [newest_first[0:4], newest_first[4:8], newest_first[8:]]


async def test_edit_and_soft_delete(store: Store) -> None:
    ws, ch = _ws(), uuid.uuid4()
    msg = _msg(ws, ch, 1)
    await _add(store, ws, msg)
    edited_at, deleted_at = T0 + timedelta(minutes=1), T0 + timedelta(minutes=2)
    async with store.unit_of_work() as uow:
        assert await uow.messages.edit(ws.id, msg.id, "fixed typo", edited_at)
        assert not await uow.messages.edit(ws.id, uuid.uuid4(), "nobody", edited_at)
        edited = await uow.messages.get(ws.id, msg.id)
        assert edited is not None and (edited.body, edited.edited_at) == ("fixed typo", edited_at)
        assert await uow.messages.delete(ws.id, msg.id, deleted_at)
        assert await uow.messages.delete(ws.id, msg.id, deleted_at + timedelta(hours=1))  # again: still True
        assert not await uow.messages.delete(ws.id, uuid.uuid4(), deleted_at)
        assert not await uow.messages.edit(ws.id, msg.id, "resurrected", edited_at)  # deleted stays deleted
        await uow.commit()
    async with store.unit_of_work() as uow:
        gone = await uow.messages.get(ws.id, msg.id)
    assert gone is not None and gone.body == "" and gone.deleted_at == deleted_at


# ---- reactions and read markers -------------------------------------------------------------------------
async def test_reactions_are_idempotent_and_counted(store: Store) -> None:
    ws, ch = _ws(), uuid.uuid4()
    m1, m2, m3 = _msg(ws, ch, 1), _msg(ws, ch, 2), _msg(ws, ch, 3)
    alice, bob = uuid.uuid4(), uuid.uuid4()
    await _add(store, ws, m1, m2, m3)
    async with store.unit_of_work() as uow:
        assert await uow.reactions.add(Reaction(ws.id, m1.id, alice, "👍"))
        assert not await uow.reactions.add(Reaction(ws.id, m1.id, alice, "👍"))
        assert await uow.reactions.add(Reaction(ws.id, m1.id, bob, "👍"))
        assert await uow.reactions.add(Reaction(ws.id, m1.id, bob, "🎉"))
        assert await uow.reactions.add(Reaction(ws.id, m2.id, bob, "🎉"))
        assert await uow.reactions.remove(Reaction(ws.id, m2.id, bob, "🎉"))
        assert not await uow.reactions.remove(Reaction(ws.id, m2.id, bob, "🎉"))
        assert await uow.reactions.add(Reaction(ws.id, m3.id, alice, "x"))
        await uow.commit()
    async with store.unit_of_work() as uow:
        counts = await uow.reactions.counts(ws.id, [m1.id, m2.id, m3.id])
        assert await uow.reactions.counts(ws.id, []) == {}
    assert counts == {m1.id: {"👍": 2, "🎉": 1}, m3.id: {"x": 1}}


async def test_read_markers_never_go_back(store: Store) -> None:
    ws, ch, user = _ws(), uuid.uuid4(), uuid.uuid4()
    await _add(store, ws)
    async with store.unit_of_work() as uow:
        assert await uow.read_markers.get(ws.id, ch, user) == 0
        assert await uow.read_markers.advance(ReadMarker(ws.id, ch, user, 5)) == 5
        assert await uow.read_markers.advance(ReadMarker(ws.id, ch, user, 3)) == 5
        assert await uow.read_markers.advance(ReadMarker(ws.id, uuid.uuid4(), user, 1)) == 1
        await uow.commit()
    async with store.unit_of_work() as uow:
        assert await uow.read_markers.get(ws.id, ch, user) == 5
        assert await uow.read_markers.advance(ReadMarker(ws.id, ch, user, 8)) == 8
        assert await uow.read_markers.get(ws.id, ch, user) == 8


# ---- retries of serialization failures ------------------------------------------------------------------
class _FakeDbError(Exception):
    """What any DBAPI driver raises for a serialization failure: a SQLSTATE attribute."""

    sqlstate = "40001"


async def test_run_retries_serialization_failures(sqlite_url: str) -> None:
    async with SqlStore(sqlite_url) as store:
        store.retry_policy = RetryPolicy(base_s=0.001, cap_s=0.002)
        ws, calls = _ws(), 0

        async def flaky(uow: UnitOfWork) -> str:
            nonlocal calls
            calls += 1
            await uow.workspaces.add(ws)  # rolled back with each failed attempt, so no Conflict later
            if calls < 3:
                raise sa_exc.OperationalError("COMMIT", {}, _FakeDbError("could not serialize access"))
            return "done"

        assert await store.run(flaky) == "done"
        assert (calls, store.serialization_retries) == (3, 2)
        async with store.unit_of_work() as uow:
            assert await uow.workspaces.get(ws.id) == ws


async def test_run_gives_up_with_unavailable(sqlite_url: str) -> None:
    async with SqlStore(sqlite_url) as store:
        store.retry_policy = RetryPolicy(base_s=0.001, cap_s=0.002)
        calls = 0

        async def always(uow: UnitOfWork) -> None:
            nonlocal calls
            calls += 1
            raise _FakeDbError("could not serialize access")

        with pytest.raises(Unavailable) as err:
            await store.run(always, retries=2)
        assert calls == 3
        assert not isinstance(err.value, SerializationFailure)

        async def broken(uow: UnitOfWork) -> None:
            nonlocal calls
            calls += 1
            raise ValueError("a bug is not retried")

        calls = 0
        with pytest.raises(ValueError):
            await store.run(broken)
        assert calls == 1


@pytest.mark.parametrize("error", [
    _FakeDbError("x"),
    sa_exc.DBAPIError("SELECT", {}, _FakeDbError("x")),
    asyncpg.exceptions.SerializationError("could not serialize access due to concurrent update"),
    psycopg.errors.SerializationFailure("could not serialize access"),
    Exception("restart transaction: TransactionRetryWithProtoRefreshError: ReadWithinUncertaintyInterval"),
    SerializationFailure("wrapped by db.errors"),
], ids=["sqlstate", "sqlalchemy-wrapped", "asyncpg", "psycopg", "cockroachdb-message", "translated"])
def test_serialization_failures_are_recognised(error: Exception) -> None:
    assert is_serialization_failure(error)


@pytest.mark.parametrize("error", [
    ValueError("nope"),
    sa_exc.IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed: workspaces.slug")),
    Conflict("exists"),
])
def test_other_errors_are_not_retried(error: Exception) -> None:
    assert not is_serialization_failure(error)


@pytest.fixture
async def pg_store(pg_url: str) -> AsyncIterator[SqlStore]:
    async with SqlStore(pg_url) as store:
        yield store


@pytest.mark.integration
async def test_run_retries_a_real_serialization_failure(pg_store: SqlStore) -> None:
    """Two SERIALIZABLE transactions read the same read marker, then both write it: PostgreSQL aborts one
    with 40001; run() retries it, so neither increment is lost."""
    ws, ch, user = _ws(), uuid.uuid4(), uuid.uuid4()
    await _add(pg_store, ws, ReadMarker(ws.id, ch, user, 1))
    calls, readers, both_read = 0, 0, asyncio.Event()

    async def increment(uow: UnitOfWork) -> int:
        nonlocal calls, readers
        calls += 1
        first_attempts = calls <= 2
        current = await uow.read_markers.get(ws.id, ch, user)
        if first_attempts:  # make sure both have read before either writes
            readers += 1
            if readers == 2:
                both_read.set()
            await asyncio.wait_for(both_read.wait(), timeout=10)
        return await uow.read_markers.advance(ReadMarker(ws.id, ch, user, current + 1))

    results = await asyncio.wait_for(asyncio.gather(pg_store.run(increment), pg_store.run(increment)), 30)
    assert sorted(results) == [2, 3]
    assert pg_store.serialization_retries >= 1
    assert calls >= 3
    async with pg_store.unit_of_work() as uow:
        assert await uow.read_markers.get(ws.id, ch, user) == 3


# ---- lifecycle and availability -------------------------------------------------------------------------
@pytest.mark.parametrize("adapter", ["memory", "sqlite"])
async def test_lifecycle(sqlite_url: str, adapter: str) -> None:
    store: Store = (MemoryStore() if adapter == "memory"
                    else SqlStore(sqlite_url.replace("storm.db", "nested/dir/storm.db")))
    with pytest.raises(RuntimeError):
        store.unit_of_work()
    await store.start()
    try:
        with pytest.raises(RuntimeError):
            await store.start()
        await store.ping()
    finally:
        await store.stop()
        await store.stop()  # idempotent
    with pytest.raises(RuntimeError):
        await store.start()
    with pytest.raises(Unavailable):
        await store.ping()


async def test_unreachable_database_is_unavailable() -> None:
    # Port 9 (discard) is closed on test machines: the connection is refused at once.
    url = "postgresql+asyncpg://storm:storm@127.0.0.1:9/none"
    lazy = SqlStore(url, create_schema=False)
    await lazy.start()  # no connection needed yet
    try:
        with pytest.raises(Unavailable):
            await lazy.ping()
        with pytest.raises(Unavailable):
            async with lazy.unit_of_work() as uow:
                await uow.workspaces.get(uuid.uuid4())
    finally:
        await lazy.stop()
    eager = SqlStore(url)
    with pytest.raises(Unavailable):
        await eager.start()
    await eager.stop()


def _as_dict(msg: Message) -> dict[str, object]:
    return {name: getattr(msg, name) for name in Message.__slots__}  # type: ignore[attr-defined]


# ---- read state and own reactions (issue 13) ---------------------------------------------------------------
async def test_unread_counts_others_messages_after_the_marker_and_mine_lists_own_reactions(store: Store) -> None:
    """``read_markers.unread``: per asked channel, the marker (0 without one) and the stored, not deleted
    messages of other authors after it, within the workspace only.  ``reactions.mine``: the user's own
    emojis per message, sorted."""
    ws, other_ws, me, you = _ws(), _ws(), uuid.uuid4(), uuid.uuid4()
    ch, quiet, foreign = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    offsets = [10, 20, 1000, 2**30]  # sparse, as on Pulsar
    mine_msg = _msg(ws, ch, 15, author=me)
    theirs = [_msg(ws, ch, off, author=you) for off in offsets]
    await _add(store, ws, other_ws, mine_msg, *theirs, _msg(other_ws, foreign, 5, author=you),
               ReadMarker(ws.id, ch, me, 20), Reaction(ws.id, theirs[0].id, me, "👍"),
               Reaction(ws.id, theirs[0].id, me, "🎉"), Reaction(ws.id, theirs[0].id, you, "👍"))

    async def delete_one(uow: UnitOfWork) -> bool:
        return await uow.messages.delete(ws.id, theirs[2].id, T0)

    assert await store.run(delete_one)
    async with store.unit_of_work() as uow:
        state = await uow.read_markers.unread(ws.id, me, [ch, quiet, foreign])
        assert state == {ch: (20, 1), quiet: (0, 0), foreign: (0, 0)}  # 2**30 only; 1000 is deleted
        assert (await uow.read_markers.unread(ws.id, you, [ch]))[ch] == (0, 1)  # my message at 15
        assert await uow.read_markers.unread(ws.id, me, []) == {}
        assert await uow.reactions.mine(ws.id, me, [theirs[0].id, theirs[1].id]) == {theirs[0].id: ["🎉", "👍"]}
        assert await uow.reactions.mine(ws.id, you, [theirs[0].id]) == {theirs[0].id: ["👍"]}
        assert await uow.reactions.mine(other_ws.id, me, [theirs[0].id]) == {}
        assert await uow.reactions.reactors(ws.id, [theirs[0].id, theirs[1].id]) == {
            theirs[0].id: {me: ["🎉", "👍"], you: ["👍"]}}
        assert await uow.reactions.reactors(other_ws.id, [theirs[0].id]) == {}


async def test_unread_at_answers_many_pairs_at_once_counting_up_to_each_head(store: Store) -> None:
    """``read_markers.unread_at``: for each (user, channel, head), in order, the marker and the stored, not
    deleted messages of others with ``marker < offset <= head`` (what a subscribe at ``head`` has not seen
    and will not get live); pairs of other users, channels and workspaces do not leak into each other, and
    more pairs than one statement's chunk come back whole."""
    ws, other_ws, me, you = _ws(), _ws(), uuid.uuid4(), uuid.uuid4()
    ch, quiet, foreign = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    theirs = [_msg(ws, ch, off, author=you) for off in (10, 20, 1000, 2**30)]
    await _add(store, ws, other_ws, _msg(ws, ch, 15, author=me), *theirs, _msg(other_ws, foreign, 5, author=you),
               ReadMarker(ws.id, ch, me, 20), ReadMarker(ws.id, quiet, you, 7), ReadMarker(other_ws.id, ch, me, 99))

    async def delete_one(uow: UnitOfWork) -> bool:
        return await uow.messages.delete(ws.id, theirs[2].id, T0)

    assert await store.run(delete_one)
    async with store.unit_of_work() as uow:
        asked = [(me, ch, 2**30), (me, ch, 1000), (you, ch, 2**30), (me, quiet, 0), (you, quiet, 9),
                 (me, foreign, 5), (you, ch, 12), (me, ch, 20)]
        assert await uow.read_markers.unread_at(ws.id, asked) == [
            (20, 1),  # 2**30 only: 1000 deleted, 15 mine, 10 and 20 read
            (20, 0),  # head 1000: the message at 2**30 comes live
            (0, 1),   # my message at 15 is theirs to read
            (0, 0), (7, 0), (0, 0),  # quiet channel; marker without messages; another workspace's channel
            (0, 0),   # head 12: none of mine before it
            (20, 0),  # marker at the head: nothing to count
        ]
        assert await uow.read_markers.unread_at(ws.id, []) == []
        many = [(uuid.uuid4(), ch, 2**30) for _ in range(250)] + [(me, ch, 2**30)]
        assert await uow.read_markers.unread_at(ws.id, many) == [(0, 4)] * 250 + [(20, 1)]  # 10, 15, 20, 2**30
        # counts stop at `cap` (UNREAD_MAX, 1000, by default: "1000 or more"), the marker is still exact
        assert await uow.read_markers.unread_at(ws.id, [(uuid.uuid4(), ch, 2**30), (me, ch, 2**30), (me, quiet, 9)],
                                                cap=2) == [(0, 2), (20, 1), (0, 0)]  # 4 of a newcomer: 2
        assert await uow.read_markers.unread(ws.id, you, [ch, quiet], cap=1) == {ch: (0, 1), quiet: (7, 0)}
