"""A connect's principal comes from the cache once the user has been seen (storm/directory.py, issue 11):
no store transaction per connect, and the membership stays the gate (removals and tombstones still bite)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from storm.adapters.memory_cache import MemoryCache
from storm.adapters.memory_store import MemoryStore
from storm.directory import TOMBSTONE_TTL_S, Directory, Principal
from storm.domain import Channel, ChannelKind, Membership, Role, Workspace
from storm.errors import Forbidden, NotFound, Unavailable
from storm.ports.clock import ManualClock
from storm.ports.identity import Claims


class CountingStore(MemoryStore):
    """The memory store, counting the units of work opened (a SQL store's transactions)."""

    def __init__(self) -> None:
        super().__init__()
        self.units = 0

    def unit_of_work(self, *, read_only: bool = False) -> Any:
        self.units += 1
        return super().unit_of_work(read_only=read_only)


WS = Workspace(id=uuid.uuid4(), slug="conn", name="Conn", plan="pro")


def claims(subject: str) -> Claims:
    return Claims(subject=subject, workspace=WS.slug, name=subject.split("|")[-1], expires_at=2e9)


@contextlib.asynccontextmanager
async def started(store: MemoryStore, clock: ManualClock, *rows: Channel) -> AsyncIterator[MemoryCache]:
    """The store (with WS and ``rows``) and a memory cache started, then stopped."""
    cache = MemoryCache(clock)
    await store.start()
    await cache.start()
    async with store.unit_of_work() as uow:
        await uow.workspaces.add(WS)
        for channel in rows:
            await uow.channels.add(channel)
        await uow.commit()
    try:
        yield cache
    finally:
        await cache.stop()
        await store.stop()


@pytest.fixture
async def env() -> AsyncIterator[tuple[CountingStore, ManualClock, Directory]]:
    store, clock = CountingStore(), ManualClock()
    async with started(store, clock) as cache:
        yield store, clock, Directory(store, cache)


async def _join(store: MemoryStore, user_id: uuid.UUID, role: Role) -> None:
    async with store.unit_of_work() as uow:
        await uow.memberships.add(Membership(WS.id, user_id, role))
        await uow.commit()


async def test_a_seen_user_connects_without_a_store_transaction(env: Any) -> None:
    store, clock, directory = env
    with pytest.raises(Forbidden):  # first sight: created, not a member yet
        await directory.principal(claims("dev|ann"))
    user = await directory.resolve_user(claims("dev|ann"))
    await _join(store, user.id, Role.MEMBER)
    await directory.forget_member(WS.slug, user.id)  # what the tenants API does after the change
    p = await directory.principal(claims("dev|ann"))  # the tombstone: read from the store
    assert p.user.id == user.id and p.role is Role.MEMBER
    clock.advance(TOMBSTONE_TTL_S + 0.1)
    await directory.principal(claims("dev|ann"))  # the role is cached again
    before = store.units
    for _ in range(5):
        p = await directory.principal(claims("dev|ann"))
        assert (p.user.id, p.user.subject, p.user.name) == (user.id, user.subject, user.name)
        assert p.role is Role.MEMBER
    assert store.units == before  # every lookup from the cache: user, workspace and role


async def test_first_sight_reads_user_and_membership_in_one_transaction(env: Any) -> None:
    store, _clock, directory = env
    user = await directory.resolve_user(claims("dev|bo"))  # not through the workspace's cache
    await _join(store, user.id, Role.ADMIN)
    await directory.workspace(WS.slug)
    before = store.units
    p = await directory.principal(claims("dev|bo"))
    assert p.role is Role.ADMIN and p.user.id == user.id
    assert store.units == before + 1
    await directory.principal(claims("dev|bo"))
    assert store.units == before + 1


async def test_a_removal_still_refuses_a_cached_user(env: Any) -> None:
    store, _clock, directory = env
    user = await directory.resolve_user(claims("dev|cy"))
    await _join(store, user.id, Role.MEMBER)
    assert (await directory.principal(claims("dev|cy"))).role is Role.MEMBER
    async with store.unit_of_work() as uow:
        await uow.memberships.remove(WS.id, user.id)
        await uow.commit()
    await directory.forget_member(WS.slug, user.id)
    with pytest.raises(Forbidden):
        await directory.principal(claims("dev|cy"))


async def _private(store: MemoryStore, *members: uuid.UUID) -> Channel:
    channel = Channel(id=uuid.uuid4(), workspace_id=WS.id, name="p", kind=ChannelKind.PRIVATE)
    async with store.unit_of_work() as uow:
        await uow.channels.add(channel)
        for uid in members:
            await uow.channels.add_member(WS.id, channel.id, uid)
        await uow.commit()
    return channel


async def test_a_user_returning_minutes_later_to_another_gateway_needs_no_store_read(env: Any) -> None:
    """A gateway dies minutes after its users connected: each is re-admitted and resubscribed by a survivor (a
    Directory of its own on the shared cache) from the cache alone (issue 11, reconnect storm: with 30 s entries
    every one was a first sight again, its membership and private channel read from the store)."""
    store, clock, directory = env
    user = await directory.resolve_user(claims("dev|dee"))
    await _join(store, user.id, Role.MEMBER)
    channel = await _private(store, user.id)
    p = await directory.principal(claims("dev|dee"))  # the first connect, on the gateway that will die
    await directory.check_channel_access(p, str(channel.id))
    clock.advance(5 * 60)  # the gateway dies five minutes later
    survivor = Directory(store, directory._cache)
    await survivor.workspace(WS.slug)  # one read per workspace and 30 s, whoever connects: not per user
    before = store.units
    p = await survivor.principal(claims("dev|dee"))
    assert (p.user.id, p.role) == (user.id, Role.MEMBER)
    assert (await survivor.check_channel_access(p, str(channel.id))).id == channel.id
    assert store.units == before  # user, role, channel and channel membership: all from the cache


async def test_long_lived_entries_still_see_a_role_change_and_a_removal_at_once(env: Any) -> None:
    """The entries outlive a reconnect because the tenants API invalidates every change: a role change, a
    removal from a private channel and from the workspace take effect at the next lookup, on any gateway."""
    store, clock, directory = env
    user = await directory.resolve_user(claims("dev|eve"))
    await _join(store, user.id, Role.MEMBER)
    channel = await _private(store, user.id)
    p = await directory.principal(claims("dev|eve"))
    await directory.check_channel_access(p, str(channel.id))
    clock.advance(5 * 60)
    other = Directory(store, directory._cache)
    async with store.unit_of_work() as uow:  # what change_role does, then its invalidation
        await uow.memberships.set_role(WS.id, user.id, Role.ADMIN)
        await uow.commit()
    await directory.forget_member(WS.slug, user.id)
    assert (await other.principal(claims("dev|eve"))).role is Role.ADMIN
    async with store.unit_of_work() as uow:  # remove_channel_member
        await uow.channels.remove_member(WS.id, channel.id, user.id)
        await uow.commit()
    await directory.forget_channel(WS.slug, channel.id, user.id)
    with pytest.raises(NotFound):
        await other.check_channel_access(p, str(channel.id))
    clock.advance(TOMBSTONE_TTL_S + 1)  # the "no" is cached, and stays right
    with pytest.raises(NotFound):
        await other.check_channel_access(p, str(channel.id))
    async with store.unit_of_work() as uow:  # remove_member
        await uow.memberships.remove(WS.id, user.id)
        await uow.commit()
    await directory.forget_member(WS.slug, user.id)
    with pytest.raises(Forbidden):
        await other.principal(claims("dev|eve"))


class SlowStore(CountingStore):
    """A store whose units of work take a moment (a PostgreSQL round trip), and can be made to fail once."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_next: Exception | None = None

    def unit_of_work(self, *, read_only: bool = False) -> Any:
        uow = super().unit_of_work(read_only=read_only)
        store = self

        class Slow:
            async def __aenter__(self) -> Any:
                await asyncio.sleep(0.01)
                if store.fail_next is not None:
                    exc, store.fail_next = store.fail_next, None
                    raise exc
                return await uow.__aenter__()

            async def __aexit__(self, *exc: object) -> Any:
                return await uow.__aexit__(*exc)

        return Slow()


@pytest.fixture
async def slow() -> AsyncIterator[tuple[SlowStore, Directory]]:
    store = SlowStore()
    async with started(store, ManualClock()) as cache:
        yield store, Directory(store, cache)


async def _members(store: MemoryStore, directory: Directory, n: int, prefix: str) -> list[uuid.UUID]:
    ids = []
    for i in range(n):
        user = await directory.resolve_user(claims(f"dev|{prefix}{i}"))
        await _join(store, user.id, Role.MEMBER)
        ids.append(user.id)
    return ids


async def test_concurrent_first_sights_of_a_workspace_are_read_in_batches(slow: Any) -> None:
    store, directory = slow
    ids = await _members(store, directory, 60, "u")
    await directory.workspace(WS.slug)
    before = store.units
    first = asyncio.ensure_future(directory.principal(claims("dev|u0")))
    await asyncio.sleep(0.005)  # its read is under way
    got = [await first, *await asyncio.gather(*(directory.principal(claims(f"dev|u{i}")) for i in range(1, 60)))]
    assert [p.user.id for p in got] == ids and all(p.role is Role.MEMBER for p in got)
    # the first read alone, the 59 that arrived meanwhile together: 2 units of work, not 60
    assert store.units - before == 2
    assert (await directory.principal(claims("dev|u7"))).user.id == ids[7]
    assert store.units - before == 2  # cached by the batch


async def test_a_batch_mixes_known_users_new_users_and_non_members(slow: Any) -> None:
    store, directory = slow
    (member,) = await _members(store, directory, 1, "m")
    await directory.resolve_user(claims("dev|outsider"))  # known, not a member
    await directory.workspace(WS.slug)
    results = await asyncio.gather(directory.principal(claims("dev|m0")), directory.principal(claims("dev|new")),
                                   directory.principal(claims("dev|outsider")), return_exceptions=True)
    assert isinstance(results[0], Principal) and results[0].user.id == member
    assert isinstance(results[1], Forbidden) and isinstance(results[2], Forbidden)
    assert (await directory.resolve_user(claims("dev|new"))).subject == "dev|new"  # created once


async def test_a_failed_batch_fails_its_callers_and_the_next_batch_reads_again(slow: Any) -> None:
    store, directory = slow
    await _members(store, directory, 3, "f")
    await directory.workspace(WS.slug)
    store.fail_next = Unavailable("database unreachable")
    first = asyncio.ensure_future(directory.principal(claims("dev|f0")))
    await asyncio.sleep(0.005)  # its read is under way (and fails)
    results = await asyncio.gather(first, *(directory.principal(claims(f"dev|f{i}")) for i in range(1, 3)),
                                   return_exceptions=True)
    assert isinstance(results[0], Unavailable)  # the first batch (f0) failed
    assert all(isinstance(r, Principal) for r in results[1:])  # the next batch read the store again
    assert (await directory.principal(claims("dev|f0"))).role is Role.MEMBER


async def test_a_cancelled_caller_does_not_strand_the_others(slow: Any) -> None:
    store, directory = slow
    await _members(store, directory, 4, "c")
    await directory.workspace(WS.slug)
    tasks = [asyncio.ensure_future(directory.principal(claims(f"dev|c{i}"))) for i in range(4)]
    await asyncio.sleep(0)
    tasks[0].cancel()  # the caller whose arrival started the reader
    done = await asyncio.gather(*tasks[1:])
    assert [p.role for p in done] == [Role.MEMBER] * 3
    assert tasks[0].cancelled()


async def test_concurrent_channel_checks_of_a_workspace_share_a_unit_of_work(slow: Any) -> None:
    """The reconnect storm's subscribes: each (private channel, member) check missing the cache is a store
    read; those of a workspace that arrive together are read in one unit of work, not one each."""
    store, directory = slow
    ids = await _members(store, directory, 40, "p")
    ch = Channel(id=uuid.uuid4(), workspace_id=WS.id, name="room", kind=ChannelKind.PRIVATE)
    async with store.unit_of_work() as uow:
        await uow.channels.add(ch)
        for uid in ids[:30]:  # the last 10 are not members of the channel
            await uow.channels.add_member(WS.id, ch.id, uid)
        await uow.commit()
    principals = [await directory.principal(claims(f"dev|p{i}")) for i in range(40)]
    await directory.channel(WS, str(ch.id))
    before = store.units
    first = asyncio.ensure_future(directory.check_channel_access(principals[0], str(ch.id)))
    await asyncio.sleep(0.005)  # its read is under way
    rest = await asyncio.gather(*(directory.check_channel_access(p, str(ch.id)) for p in principals[1:]),
                                return_exceptions=True)
    assert (await first).id == ch.id
    assert all(isinstance(r, Channel) for r in rest[:29]) and all(isinstance(r, NotFound) for r in rest[29:])
    assert store.units - before == 2  # not 40


class DownStore(CountingStore):
    """The memory store, whose units of work fail `Unavailable` while `down` (PostgreSQL restarting)."""

    down = False

    def unit_of_work(self, *, read_only: bool = False) -> Any:
        if self.down:
            raise Unavailable("database unreachable: connection refused")
        return super().unit_of_work(read_only=read_only)


async def test_while_the_store_is_down_expired_entries_answer_from_their_last_known_value() -> None:
    from storm.directory import CACHE_TTL_S, STALE_IF_ERROR_S

    store, clock = DownStore(), ManualClock()
    channel = Channel(id=uuid.uuid4(), workspace_id=WS.id, name="general", kind=ChannelKind.PUBLIC)
    async with started(store, clock, channel) as cache:
        # every entry lives CACHE_TTL_S here (those the tenants API invalidates live longer by default): what
        # matters is an entry that expires while the store is down
        directory = Directory(store, cache, invalidated_ttl=CACHE_TTL_S)
        now = [0.0]
        directory._now = lambda: now[0]
        user = await directory.resolve_user(claims("dev|bo"))
        await _join(store, user.id, Role.MEMBER)
        p = await directory.principal(claims("dev|bo"))
        await directory.check_channel_access(p, str(channel.id), write=True)

        store.down = True
        clock.advance(CACHE_TTL_S * 1.3)  # every cached entry expired during the outage
        now[0] += CACHE_TTL_S * 1.3
        # a publish's checks and a reconnect's principal still answer, from what this process saw last
        p = await directory.principal(claims("dev|bo"))
        assert p.role is Role.MEMBER and p.workspace.id == WS.id
        assert (await directory.check_channel_access(p, str(channel.id), write=True)).id == channel.id
        assert directory.stale_served >= 3  # the workspace, the role, the channel
        # what this process never saw is still refused unavailable, not guessed
        with pytest.raises(Unavailable):
            await directory.principal(claims("dev|stranger"))
        # an invalidation seen for a key drops its last answer: the removal is not overridden
        await directory.forget_member(WS.slug, user.id)
        with pytest.raises(Unavailable):
            await directory.principal(claims("dev|bo"))
        # and a last answer older than the bound is not used
        clock.advance(TOMBSTONE_TTL_S + 0.1)
        now[0] += STALE_IF_ERROR_S + 1
        with pytest.raises(Unavailable):
            await directory.check_channel_access(p, str(channel.id), write=True)

        store.down = False  # back: read and cached again
        p = await directory.principal(claims("dev|bo"))
        assert p.role is Role.MEMBER


async def test_read_states_asked_together_are_one_read_and_each_gets_its_own(slow: Any) -> None:
    """``Directory.read_state`` (a subscribe's ``read``/``unread``): those that arrive while one is read are
    read together, by one ``unread_at`` in one unit of work, and each answer goes to its own caller."""
    from storm.domain import ReadMarker

    store, directory = slow
    ids = await _members(store, directory, 30, "r")
    ch = uuid.uuid4()
    async with store.unit_of_work() as uow:
        for i, uid in enumerate(ids):
            await uow.read_markers.advance(ReadMarker(WS.id, ch, uid, 10 + i))
        await uow.commit()
    before = store.units
    first = asyncio.ensure_future(directory.read_state(WS, ids[0], ch, 100))
    await asyncio.sleep(0.005)  # its read is under way
    rest = await asyncio.gather(*(directory.read_state(WS, uid, ch, 100) for uid in ids[1:]))
    assert [await first, *rest] == [(10 + i, 0) for i in range(30)]
    # the read takes what is pending when its unit of work is open: the 29 that came meanwhile join the first
    assert store.units - before == 1


async def test_a_failed_read_state_read_fails_its_callers_and_the_next_ones_read_again(slow: Any) -> None:
    """A unit of work that fails before the read states are read (the store unreachable) fails every caller
    waiting for it, and leaves nothing stranded: the next ones are read."""
    store, directory = slow
    (uid,) = await _members(store, directory, 1, "x")
    ch = uuid.uuid4()
    store.fail_next = Unavailable("database unreachable")
    results = await asyncio.gather(*(directory.read_state(WS, uid, ch, 5) for _ in range(3)),
                                   return_exceptions=True)
    assert all(isinstance(r, Unavailable) for r in results)
    assert await asyncio.wait_for(directory.read_state(WS, uid, ch, 5), 1) == (0, 0)


async def test_a_subscribe_whose_client_left_is_not_read_for(slow: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a reconnect storm clients give up (10 s) and close the socket while their subscribe waits for the
    batched read; the gateway then cancels the subscribe.  Its read state and its other queued store reads are
    not read for: that work would serve nobody (issue 11, reconnect storm)."""
    from storm.adapters.memory_store import MemoryReadMarkerRepository

    store, directory = slow
    ids = await _members(store, directory, 6, "gone")
    ch = uuid.uuid4()
    asked: list[int] = []
    unread_at = MemoryReadMarkerRepository.unread_at

    async def counting(self: Any, workspace_id: uuid.UUID, items: Any) -> Any:
        asked.append(len(items))
        return await unread_at(self, workspace_id, items)

    monkeypatch.setattr(MemoryReadMarkerRepository, "unread_at", counting)
    first = asyncio.ensure_future(directory.read_state(WS, ids[0], ch, 5))
    await asyncio.sleep(0.005)  # its read is under way: the next ones wait for the next batch
    waiting = [asyncio.ensure_future(directory.read_state(WS, uid, ch, 5)) for uid in ids[1:]]
    gone = [asyncio.ensure_future(directory.channel(WS, str(uuid.uuid4()))) for _ in range(3)]
    await asyncio.sleep(0)
    for task in [*waiting[:3], *gone]:  # three subscribes and three channel look-ups whose clients left
        task.cancel()
    units = store.units
    assert await first == (0, 0)
    assert await asyncio.gather(*waiting[3:]) == [(0, 0), (0, 0)]
    assert asked == [3]  # one batch (they came while its unit of work opened), without the three that left
    assert store.units == units  # and no unit of work for the look-ups whose clients left
