"""Cache port contract (storm/ports/cache.py), run against every adapter, then Hazelcast-only behaviour
across several clients (dead gateways, near-cache invalidation, shared rate buckets, complete drops).

Every test gets its own workspace slug, so runs against a shared Hazelcast never collide.  Guarantees
under test: docs/cache.md.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest

from storm.adapters.memory_cache import MemoryCache
from storm.bootstrap import hazelcast_settings
from storm.config import Config
from storm.errors import BadRequest, Unavailable
from storm.ports.cache import PRESENCE_BATCH_MAX, Cache, PresenceEntry, PresenceKey

if TYPE_CHECKING:
    from storm.adapters.hazelcast_cache import HazelcastSettings

ALICE = PresenceEntry("u-alice", "Alice")
BOB = PresenceEntry("u-bob", "Bob")


class ShiftedClock:
    """Real time plus an offset the test can push forward: TTLs still run on real time (Hazelcast's
    expiry does), while token-bucket tests jump ahead without sleeping."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock() -> ShiftedClock:
    return ShiftedClock()


def _hazelcast_settings(members: str) -> HazelcastSettings:
    """Through the bootstrap's mapping, as production builds them."""
    return hazelcast_settings(Config(hazelcast_members=members, hazelcast_cluster="storm"))


@pytest.fixture
async def hazelcast_caches(
    hazelcast_members: str, clock: ShiftedClock, workspace: str
) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """Factory of started HazelcastCache clients (each one is what one gateway process holds)."""
    from storm.adapters.hazelcast_cache import HazelcastCache

    started: list[HazelcastCache] = []

    async def make(**kwargs: Any) -> HazelcastCache:
        c = HazelcastCache(_hazelcast_settings(hazelcast_members), clock, **kwargs)
        await c.start()
        started.append(c)
        return c

    try:
        yield make
    finally:
        running = [c for c in started if c._life.running]
        if running:
            await _clean(running[0], workspace)
        for c in started:
            await c.stop()


async def _clean(cache: Cache, workspace: str) -> None:
    """The member is shared by every run: leave no PN counter (they have no TTL) behind."""
    for ws in (workspace, workspace + "-other", workspace + "-x"):
        await cache.drop_workspace(ws)


@pytest.fixture(params=["memory", pytest.param("hazelcast", marks=pytest.mark.integration)])
async def cache(request: pytest.FixtureRequest, clock: ShiftedClock, workspace: str) -> AsyncIterator[Cache]:
    if request.param == "hazelcast":
        from storm.adapters.hazelcast_cache import HazelcastCache

        c: Cache = HazelcastCache(_hazelcast_settings(request.getfixturevalue("hazelcast_members")), clock)
    else:
        c = MemoryCache(clock)
    await c.start()
    try:
        yield c
    finally:
        if request.param == "hazelcast" and c._life.running:  # type: ignore[attr-defined]
            await _clean(c, workspace)
        await c.stop()


@pytest.fixture
def short_ttl(cache: Cache) -> tuple[float, float]:
    """(a short TTL, the time by which an entry with it is surely gone).  Hazelcast keeps expiry times in
    whole seconds, and the adapter rounds TTLs up (at least ttl, at most ~ttl + 2 s; docs/cache.md)."""
    return (1.0, 3.2) if type(cache).__name__ == "HazelcastCache" else (0.1, 0.3)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, interval: float = 0.05) -> float:
    """Seconds until ``check()`` holds; fails the test after ``timeout``."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout:
            pytest.fail(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)
    return time.monotonic() - start


# ---- key/value ---------------------------------------------------------------------------------------


async def test_kv_roundtrip_ttl_and_delete(cache, workspace, short_ttl):
    ttl, gone_by = short_ttl
    assert await cache.get(workspace, "k") is None
    await cache.set(workspace, "k", b"v", 10)
    assert await cache.get(workspace, "k") == b"v"
    await cache.set(workspace, "short", b"x", ttl)
    assert await cache.get(workspace, "short") == b"x"
    assert await eventually(lambda: _equals(cache.get(workspace, "short"), None), gone_by) >= ttl * 0.9
    await cache.delete(workspace, "k")
    assert await cache.get(workspace, "k") is None


async def test_directory_keys_roundtrip_including_empty_values(cache, workspace):
    """The directory caches negative answers as b"" (storm/directory.py): b"" must not read as a miss."""
    await cache.set(workspace, "member:abc", b"", 10)
    await cache.set(workspace, "ws", b"\x94\xa1x", 10)
    assert await cache.get(workspace, "member:abc") == b""
    assert await cache.get(workspace, "ws") == b"\x94\xa1x"
    await cache.delete(workspace, "member:abc")
    assert await cache.get(workspace, "member:abc") is None


async def test_keys_are_scoped_by_workspace(cache, workspace):
    await cache.set(workspace, "k", b"a", 10)
    assert await cache.get(workspace + "-other", "k") is None


async def test_put_if_absent_returns_existing(cache, workspace):
    assert await cache.put_if_absent(workspace, "cmid:1", b"first", 10) is None
    assert await cache.put_if_absent(workspace, "cmid:1", b"second", 10) == b"first"
    assert await cache.get(workspace, "cmid:1") == b"first"


async def test_put_if_absent_stores_again_after_the_ttl(cache, workspace, short_ttl):
    ttl, gone_by = short_ttl
    assert await cache.put_if_absent(workspace, "cmid:2", b"", ttl) is None
    assert await cache.put_if_absent(workspace, "cmid:2", b"again", 10) == b""
    await eventually(lambda: _equals(cache.put_if_absent(workspace, "cmid:2", b"again", 10), None), gone_by)
    assert await cache.get(workspace, "cmid:2") == b"again"


async def test_put_if_absent_is_atomic_between_concurrent_callers(cache, workspace):
    results = await asyncio.gather(*(cache.put_if_absent(workspace, "cmid:3", str(i).encode(), 10) for i in range(8)))
    assert sum(r is None for r in results) == 1


@pytest.mark.parametrize("ttl", [0, -1, float("inf"), float("nan")])
async def test_ttl_must_be_positive_and_finite(cache, workspace, channel, ttl):
    with pytest.raises(BadRequest):
        await cache.set(workspace, "k", b"v", ttl)
    with pytest.raises(BadRequest):
        await cache.put_if_absent(workspace, "k", b"v", ttl)
    with pytest.raises(BadRequest):
        await cache.presence_add(workspace, channel, "c", ALICE, ttl)
    with pytest.raises(BadRequest):
        await cache.revoke(workspace, "u-1", ttl)
    assert await cache.get(workspace, "k") is None


# ---- counters ----------------------------------------------------------------------------------------


async def test_counters(cache, workspace):
    assert await cache.incr(workspace, "c") == 1
    assert await cache.incr(workspace, "c", 5) == 6
    assert await cache.incr(workspace, "c", -2) == 4
    assert await cache.incr(workspace, "other") == 1
    assert await cache.incr(workspace + "-other", "c") == 1


# ---- rate buckets ------------------------------------------------------------------------------------


async def test_rate_bucket_allows_the_burst_then_says_how_long_to_wait(cache, workspace, clock):
    assert [await cache.rate_take(workspace, "pub:u1", 2.0, 3) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = await cache.rate_take(workspace, "pub:u1", 2.0, 3)
    assert 0.4 < wait <= 0.5  # one token at 2 tokens/s (a few ms of real time may have refilled)
    clock.advance(wait + 0.01)
    assert await cache.rate_take(workspace, "pub:u1", 2.0, 3) == 0.0
    assert await cache.rate_take(workspace, "pub:u1", 2.0, 3) > 0.0


async def test_rate_bucket_cost_and_refusal_takes_nothing(cache, workspace, clock):
    assert await cache.rate_take(workspace, "b", 1.0, 10, cost=8) == 0.0
    wait = await cache.rate_take(workspace, "b", 1.0, 10, cost=5)  # 2 left: 3 missing
    assert 2.9 < wait <= 3.0
    assert await cache.rate_take(workspace, "b", 1.0, 10, cost=2) == 0.0  # the refusal took nothing
    clock.advance(10)
    assert await cache.rate_take(workspace, "b", 1.0, 10, cost=10) == 0.0  # refilled up to burst only
    assert await cache.rate_take(workspace, "b", 1.0, 10, cost=1) > 0.0


async def test_rate_buckets_are_per_key_and_per_workspace(cache, workspace):
    assert await cache.rate_take(workspace, "a", 0.01, 1) == 0.0
    assert await cache.rate_take(workspace, "a", 0.01, 1) > 0.0
    assert await cache.rate_take(workspace, "b", 0.01, 1) == 0.0
    assert await cache.rate_take(workspace + "-other", "a", 0.01, 1) == 0.0


@pytest.mark.parametrize(("rate", "burst", "cost"), [(0, 1, 1), (-1, 1, 1), (1, 0, 1), (1, 2, 3), (1, 2, 0)])
async def test_rate_bucket_refuses_bad_arguments(cache, workspace, rate, burst, cost):
    with pytest.raises(BadRequest):
        await cache.rate_take(workspace, "k", rate, burst, cost)


# ---- revocations -------------------------------------------------------------------------------------


async def test_revoked_among_answers_many_subjects_in_one_call(cache, workspace):
    """The presence keeper's re-check: which of many subjects (users, ``jti:`` tokens) are listed now, in one
    call; expired entries, other workspaces' entries (even one whose slug extends this one's) and subjects
    not asked for are not in the answer."""
    assert await cache.revoked_among(workspace, []) == set()
    assert await cache.revoked_among(workspace, ["u-1", "jti:t-1"]) == set()
    await cache.revoke(workspace, "u-1", 10)
    await cache.revoke(workspace, "jti:t-9", 0.2)
    await cache.revoke(workspace, "u-not-asked", 10)
    await cache.revoke(workspace + "_x", "u-2", 10)  # a workspace whose slug starts with this one's
    await cache.revoke("x" + workspace, "u-3", 10)
    asked = ["u-1", "u-2", "u-3", "jti:t-9", "jti:t-1"] + [f"u-{i}" for i in range(100, 600)]
    assert await cache.revoked_among(workspace, asked) == {"u-1", "jti:t-9"}
    await asyncio.sleep(0.35)
    assert await cache.revoked_among(workspace, asked) == {"u-1"}
    assert await cache.revoked_among(workspace + "_x", ["u-1", "u-2"]) == {"u-2"}


async def test_revocations_expire_and_are_per_workspace(cache, workspace):
    assert await cache.is_revoked(workspace, "u-1") is False
    await cache.revoke(workspace, "u-1", 10)
    await cache.revoke(workspace, "jti:t-9", 0.2)
    assert await cache.is_revoked(workspace, "u-1") is True
    assert await cache.is_revoked(workspace, "jti:t-9") is True
    assert await cache.is_revoked(workspace + "-other", "u-1") is False
    await asyncio.sleep(0.35)
    assert await cache.is_revoked(workspace, "jti:t-9") is False
    assert await cache.is_revoked(workspace, "u-1") is True


async def test_a_shorter_revocation_does_not_shorten_a_longer_one(cache, workspace):
    await cache.revoke(workspace, "u-2", 10)
    await cache.revoke(workspace, "u-2", 0.1)
    await asyncio.sleep(0.25)
    assert await cache.is_revoked(workspace, "u-2") is True


# ---- presence ----------------------------------------------------------------------------------------


async def test_presence_join_and_leave_per_user_not_per_connection(cache, workspace, channel):
    assert await cache.presence_add(workspace, channel, "conn-1", ALICE, 10) is True
    assert await cache.presence_add(workspace, channel, "conn-2", ALICE, 10) is False  # second tab
    assert await cache.presence_add(workspace, channel, "conn-3", BOB, 10) is True
    assert [e.name for e in await cache.presence_list(workspace, channel)] == ["Alice", "Bob"]
    assert await cache.presence_remove(workspace, channel, "conn-1") is None  # alice still has conn-2
    assert await cache.presence_remove(workspace, channel, "conn-2") == ALICE
    assert await cache.presence_list(workspace, channel) == [BOB]
    assert await cache.presence_remove(workspace, channel, "conn-unknown") is None


async def test_presence_remove_without_asking_whether_it_was_the_last_still_removes(cache, workspace, channel):
    """``last=False``: a leave nobody announces (a large channel, the workspace's own presence) removes the
    entry and answers None, without looking for the user's other entries."""
    await cache.presence_add(workspace, channel, "conn-1", ALICE, 10)
    await cache.presence_add(workspace, channel, "conn-2", BOB, 10)
    assert await cache.presence_remove(workspace, channel, "conn-1", last=False) is None  # her last, not asked
    assert await cache.presence_list(workspace, channel) == [BOB]
    assert await cache.presence_remove(workspace, channel, "conn-1", last=False) is None  # gone already
    assert await cache.presence_remove(workspace, channel, "conn-2") == BOB


async def test_presence_readding_the_same_connection_is_not_a_second_user_entry(cache, workspace, channel):
    assert await cache.presence_add(workspace, channel, "conn-1", ALICE, 10) is True
    assert await cache.presence_add(workspace, channel, "conn-1", ALICE, 10) is True  # still only this one
    assert await cache.presence_remove(workspace, channel, "conn-1") == ALICE


async def test_presence_is_per_channel_and_per_workspace(cache, workspace, channel):
    await cache.presence_add(workspace, channel, "conn-1", ALICE, 10)
    assert await cache.presence_add(workspace, "_workspace", "conn-1", ALICE, 10) is True
    assert await cache.presence_add(workspace + "-other", channel, "conn-9", ALICE, 10) is True
    assert await cache.presence_list(workspace, str(uuid.uuid4())) == []
    assert await cache.presence_remove(workspace, channel, "conn-1") == ALICE
    assert await cache.presence_list(workspace, "_workspace") == [ALICE]
    assert await cache.presence_list(workspace + "-other", channel) == [ALICE]


async def test_presence_expires_without_refresh_and_survives_with_it(cache, workspace, channel, short_ttl):
    ttl, gone_by = short_ttl
    await cache.presence_add(workspace, channel, "conn-1", ALICE, ttl)
    await cache.presence_add(workspace, channel, "conn-2", BOB, ttl)
    await cache.presence_refresh(workspace, [channel], "conn-2", 10)
    assert await cache.presence_list(workspace, channel) == [ALICE, BOB]
    await eventually(lambda: _equals(cache.presence_list(workspace, channel), [BOB]), gone_by)
    assert await cache.presence_list(workspace, channel) == [BOB]


async def test_presence_refresh_many_extends_entries_of_several_workspaces_in_one_call(
    cache, workspace, channel, short_ttl
):
    ttl, gone_by = short_ttl
    other = workspace + "-other"
    await cache.presence_add(workspace, channel, "conn-1", ALICE, ttl)
    await cache.presence_add(workspace, channel, "conn-2", BOB, ttl)  # not in the batch: expires
    await cache.presence_add(other, "_workspace", "conn-9", BOB, ttl)
    await cache.presence_refresh_many([PresenceKey(workspace, channel, "conn-1"),
                                       PresenceKey(other, "_workspace", "conn-9"),
                                       PresenceKey(workspace, channel, "conn-gone")], 10)  # a missing key: skipped
    await eventually(lambda: _equals(cache.presence_list(workspace, channel), [ALICE]), gone_by)
    assert await cache.presence_list(other, "_workspace") == [BOB]
    await cache.presence_refresh_many([PresenceKey(workspace, channel, "conn-2")], 10)  # gone stays gone
    assert await cache.presence_list(workspace, channel) == [ALICE]
    await cache.presence_refresh_many([], 10)


async def test_presence_refresh_many_refuses_a_batch_too_large_or_without_workspace(cache, workspace, channel):
    with pytest.raises(BadRequest) as too_many:
        await cache.presence_refresh_many([PresenceKey(workspace, channel, f"c{i}")
                                           for i in range(PRESENCE_BATCH_MAX + 1)], 10)
    assert too_many.value.field == "keys"
    with pytest.raises(BadRequest) as no_ws:
        await cache.presence_refresh_many([PresenceKey("", channel, "c")], 10)
    assert no_ws.value.field == "workspace"
    with pytest.raises(BadRequest):
        await cache.presence_refresh_many([PresenceKey(workspace, channel, "c")], 0)


async def test_presence_add_without_first_writes_the_entry_and_does_not_answer(cache, workspace, channel):
    assert await cache.presence_add(workspace, channel, "conn-1", ALICE, 10, first=False) is False
    assert await cache.presence_list(workspace, channel) == [ALICE]
    assert await cache.presence_add(workspace, channel, "conn-2", ALICE, 10) is False  # she was there already
    assert await cache.presence_add(workspace, channel, "conn-3", BOB, 10) is True
    assert await cache.presence_count(workspace, channel) == 3


async def test_presence_expired_tab_does_not_hide_the_last_leave(cache, workspace, channel, short_ttl):
    ttl, gone_by = short_ttl
    await cache.presence_add(workspace, channel, "conn-1", ALICE, ttl)
    await cache.presence_add(workspace, channel, "conn-x", BOB, ttl)  # added after conn-1: expires no sooner
    assert await cache.presence_add(workspace, channel, "conn-2", ALICE, 10) is False
    # conn-1's gateway died: its entry expires (seen through bob's, which goes no sooner)
    await eventually(lambda: _equals(cache.presence_list(workspace, channel), [ALICE]), gone_by)
    assert await cache.presence_remove(workspace, channel, "conn-2") == ALICE
    assert await cache.presence_add(workspace, channel, "conn-3", ALICE, 10) is True  # back: a join again


def expiry_bound(cache: Cache) -> float:
    """By when an expiry is surely reported: Hazelcast's expiration task runs every 5 s (plus whole-second
    TTLs); the memory adapter sweeps every second."""
    return 9.0 if type(cache).__name__ == "HazelcastCache" else 2.5


async def test_presence_expiry_reports_a_user_whose_last_entry_expired_and_nothing_else(
        cache, workspace, channel, short_ttl):
    ttl, _ = short_ttl
    carol = PresenceEntry("u-carol", "Carol")
    unwanted = str(uuid.uuid4())
    seen: list[tuple[str, str, PresenceEntry]] = []
    gone: list[PresenceEntry] = []
    await cache.watch_presence_expiry(lambda ws, ch: ws == workspace and ch == channel,
                                      lambda ws, ch, entry: seen.append((ws, ch, entry)))
    unwatch = await cache.watch_presence_expiry(lambda ws, ch: True, lambda ws, ch, entry: gone.append(entry))
    await cache.presence_add(workspace, channel, "conn-1", ALICE, ttl)  # her gateway dies: expires
    await cache.presence_add(workspace, channel, "conn-2", BOB, ttl)  # expires, but bob has conn-3
    await cache.presence_add(workspace, channel, "conn-3", BOB, 60)
    await cache.presence_add(workspace, channel, "conn-4", carol, ttl)
    assert await cache.presence_remove(workspace, channel, "conn-4") == carol  # removed: not an expiry
    await cache.presence_add(workspace, unwanted, "conn-5", ALICE, ttl)  # a channel nobody here follows
    await unwatch()  # the second watcher stops before anything expires
    await eventually(lambda: _true(bool(seen)), expiry_bound(cache), interval=0.1)
    await asyncio.sleep(1.0)  # the other expiries of the same sweep have been handled by now
    assert seen == [(workspace, channel, ALICE)]
    assert gone == []
    assert await cache.presence_list(workspace, channel) == [BOB]


async def _true(value: bool) -> bool:
    return value


async def test_presence_count_counts_live_connections(cache, workspace, channel, short_ttl):
    ttl, gone_by = short_ttl
    assert await cache.presence_count(workspace, channel) == 0
    await cache.presence_add(workspace, channel, "conn-1", ALICE, 60)
    await cache.presence_add(workspace, channel, "conn-2", ALICE, 60)  # a second tab counts
    await cache.presence_add(workspace, channel, "conn-3", BOB, ttl)
    await cache.presence_add(workspace + "-other", channel, "conn-9", BOB, 60)  # another workspace does not
    assert await cache.presence_count(workspace, channel) == 3
    await cache.presence_remove(workspace, channel, "conn-1")
    await eventually(lambda: _equals(cache.presence_count(workspace, channel), 1), gone_by)  # conn-3 expired


async def test_presence_refresh_does_not_revive_a_removed_entry(cache, workspace, channel):
    await cache.presence_add(workspace, channel, "conn-1", ALICE, 10)
    await cache.presence_remove(workspace, channel, "conn-1")
    await cache.presence_refresh(workspace, [channel, "_workspace"], "conn-1", 10)
    assert await cache.presence_list(workspace, channel) == []


# ---- presence leases: a gateway's entries live by one key (ADR 0010, amendment) ----------------------


async def test_presence_under_a_lease_lives_while_it_is_renewed_and_is_gone_once_it_lapses(
        cache, workspace, channel, clock, short_ttl):
    ttl, gone_by = short_ttl  # the entries' own TTL: not used under a lease
    lease_ttl = 30.0
    gw_a, gw_b = f"{workspace}-gw-a", f"{workspace}-gw-b"  # unique: the lease map is shared by every run
    seen: list[tuple[str, str, PresenceEntry]] = []
    await cache.watch_presence_expiry(lambda ws, ch: ws == workspace and ch == channel,
                                      lambda ws, ch, entry: seen.append((ws, ch, entry)))
    assert await cache.presence_lease(gw_a, lease_ttl) is False  # a new lease
    assert await cache.presence_lease(gw_b, lease_ttl) is False
    assert await cache.presence_add(workspace, channel, "conn-1", ALICE, ttl, lease=gw_a) is True
    assert await cache.presence_add(workspace, "_workspace", "conn-1", ALICE, ttl, first=False, lease=gw_a) is False
    assert await cache.presence_add(workspace, channel, "conn-2", BOB, ttl, lease=gw_a) is True
    assert await cache.presence_add(workspace, channel, "conn-3", BOB, ttl, lease=gw_b) is False  # his other tab
    await asyncio.sleep(gone_by)  # past the entries' own TTL: they live by the lease
    assert await cache.presence_list(workspace, channel) == [ALICE, BOB]
    clock.advance(20)
    assert await cache.presence_lease(gw_a, lease_ttl) is True  # renewed: both alive until +50
    assert await cache.presence_lease(gw_b, lease_ttl) is True
    clock.advance(20)
    assert await cache.presence_lease(gw_b, lease_ttl) is True  # gateway a dies: only b renews (until +70)
    assert await cache.presence_count(workspace, channel) == 3
    clock.advance(15)  # +55: a lapsed, b alive
    assert await cache.presence_list(workspace, channel) == [BOB]
    assert await cache.presence_count(workspace, channel) == 1  # the quota's recount: b's connection only
    assert await cache.presence_count(workspace, "_workspace") == 0
    await eventually(lambda: _true(bool(seen)), expiry_bound(cache), interval=0.1)
    await asyncio.sleep(1.0)  # the other reports of the same lapse have been handled by now
    assert seen == [(workspace, channel, ALICE)]  # bob is still here through gateway b
    carol = PresenceEntry("u-carol", "Carol")
    assert await cache.presence_add(workspace, channel, "conn-5", carol, ttl, lease=gw_a) is False  # lapsed
    assert await cache.presence_list(workspace, channel) == [BOB]
    assert await cache.presence_add(workspace, channel, "conn-4", ALICE, ttl, lease=gw_b) is True  # a join again
    assert await cache.presence_remove(workspace, channel, "conn-3") == BOB  # his last: conn-2 lapsed with a
    assert await cache.presence_list(workspace, channel) == [ALICE]
    assert await cache.presence_lease(gw_a, lease_ttl) is False  # a lapse is final: it comes back empty
    assert await cache.presence_list(workspace, channel) == [ALICE]
    assert await cache.presence_count(workspace, "_workspace") == 0


async def test_a_presence_lease_and_its_entries_are_checked(cache, workspace, channel):
    with pytest.raises(BadRequest):
        await cache.presence_lease(f"{workspace}-gw", 0)
    with pytest.raises(BadRequest):
        await cache.presence_lease(f"{workspace}-gw", float("inf"))


# ---- workspace deletion and lifecycle ----------------------------------------------------------------


async def test_drop_workspace(cache, workspace, channel):
    neighbour = workspace + "-x"  # a slug that extends this one must keep everything
    for ws in (workspace, neighbour):
        await cache.set(ws, "k", b"v", 10)
        await cache.set(ws, "member:u1", b"member", 10)
        await cache.presence_add(ws, channel, "c", ALICE, 10)
        await cache.incr(ws, "reactions:m1:+1", 3)
        await cache.rate_take(ws, "pub", 0.001, 1)
        await cache.revoke(ws, "u-1", 10)
    await cache.drop_workspace(workspace)
    assert await cache.get(workspace, "k") is None
    assert await cache.get(workspace, "member:u1") is None
    assert await cache.presence_list(workspace, channel) == []
    assert await cache.incr(workspace, "reactions:m1:+1") == 1
    assert await cache.rate_take(workspace, "pub", 0.001, 1) == 0.0
    assert await cache.is_revoked(workspace, "u-1") is False
    assert await cache.get(neighbour, "k") == b"v"
    assert await cache.get(neighbour, "member:u1") == b"member"
    assert await cache.presence_list(neighbour, channel) == [ALICE]
    assert await cache.incr(neighbour, "reactions:m1:+1") == 4
    assert await cache.rate_take(neighbour, "pub", 0.001, 1) > 0.0
    assert await cache.is_revoked(neighbour, "u-1") is True
    await cache.drop_workspace(neighbour)


async def test_lifecycle_start_once_stop_idempotent(cache, workspace):
    with pytest.raises(RuntimeError):
        await cache.start()
    await cache.stop()
    await cache.stop()
    with pytest.raises(Unavailable):
        await cache.get(workspace, "k")


# ---- Hazelcast only: several clients, as several gateways would hold -----------------------------------

hazelcast_only = pytest.mark.integration


@hazelcast_only
async def test_presence_of_a_dead_gateway_disappears_within_the_ttl(hazelcast_caches, workspace, channel):
    ttl = 1.0  # stored as whole seconds, rounded up: gone between 1 and ~2 s after the last refresh
    alive, doomed = await hazelcast_caches(), await hazelcast_caches()
    assert await alive.presence_add(workspace, channel, "conn-a", ALICE, ttl) is True
    assert await doomed.presence_add(workspace, channel, "conn-b", BOB, ttl) is True
    assert await doomed.presence_add(workspace, channel, "conn-b2", ALICE, ttl) is False  # seen across clients
    await doomed.stop()  # the gateway dies: nobody refreshes or removes its entries
    assert await alive.presence_list(workspace, channel) == [ALICE, BOB]  # they live in the cluster, not in it

    async def only_alice_left() -> bool:
        await alive.presence_refresh(workspace, [channel], "conn-a", ttl)  # alice's gateway heartbeats
        return await alive.presence_list(workspace, channel) == [ALICE]

    assert ttl * 0.9 <= await eventually(only_alice_left, ttl + 2.2, interval=0.3)
    assert await alive.presence_remove(workspace, channel, "conn-a") == ALICE  # conn-b2 expired with its gateway


@hazelcast_only
async def test_every_watching_client_hears_of_a_dead_gateways_expired_presence(hazelcast_caches, workspace, channel):
    gateways = [await hazelcast_caches(), await hazelcast_caches()]
    heard: list[list[PresenceEntry]] = [[], []]
    for cache, log in zip(gateways, heard, strict=True):
        await cache.watch_presence_expiry(lambda ws, ch: ch == channel,
                                          lambda ws, ch, entry, log=log: log.append(entry))
    doomed = await hazelcast_caches()
    await doomed.presence_add(workspace, channel, "conn-b", BOB, 1.0)
    await doomed.stop()  # nobody refreshes or removes it
    await eventually(lambda: _true(all(heard)), 9.0, interval=0.2)
    assert heard == [[BOB], [BOB]]


@hazelcast_only
async def test_a_dead_gateways_lease_is_heard_by_every_watcher_and_reaped_by_a_survivor(
        hazelcast_caches, workspace, channel, clock):
    """The lease path of ADR 0008: a gateway dies (its client stops, nobody renews its lease); every
    watching client reports its users' leaves; a surviving gateway's renewal removes its entries one TTL
    after the lapse, so nothing of it stays in the cluster."""
    from hazelcast.predicate import equal

    from storm.adapters.hazelcast_cache import MAP_LEASES, MAP_PRESENCE

    ttl, survivor_ttl = 20.0, 100.0  # the survivor's lease lives longer than the test's clock jumps
    survivors = [await hazelcast_caches(), await hazelcast_caches()]
    heard: list[list[PresenceEntry]] = [[], []]
    for cache, log in zip(survivors, heard, strict=True):
        await cache.watch_presence_expiry(lambda ws, ch: ch == channel,
                                          lambda ws, ch, entry, log=log: log.append(entry))
    alive, dead = f"{workspace}-gw-alive", f"{workspace}-gw-dead"
    await survivors[0].presence_lease(alive, survivor_ttl)
    await survivors[0].presence_add(workspace, channel, "conn-a", ALICE, ttl, lease=alive)
    doomed = await hazelcast_caches()
    await doomed.presence_lease(dead, ttl)
    await doomed.presence_add(workspace, channel, "conn-b", BOB, ttl, lease=dead)
    await doomed.presence_add(workspace, channel, "conn-b2", ALICE, ttl, lease=dead)
    await doomed.stop()  # the gateway dies: its lease is not renewed
    assert await survivors[1].presence_list(workspace, channel) == [ALICE, BOB]
    clock.advance(ttl + 5)  # ... for longer than its TTL
    await survivors[0].presence_lease(alive, survivor_ttl)
    await eventually(lambda: _true(all(heard)), 5.0, interval=0.2)
    await asyncio.sleep(1.0)
    assert heard == [[BOB], [BOB]]  # alice is still here through the survivor's connection
    assert await survivors[1].presence_list(workspace, channel) == [ALICE]
    presence, leases = survivors[0]._maps[MAP_PRESENCE], survivors[0]._maps[MAP_LEASES]
    assert len(await presence.key_set(equal("gw", dead))) == 2  # not reaped yet: lapsed for less than a TTL
    for _ in range(2):  # the survivor renews every 50 s; once the dead lease lapsed 100 s (its TTL) ago...
        clock.advance(survivor_ttl / 2)
        await survivors[0].presence_lease(alive, survivor_ttl)  # ...its renewal reaps
    assert await presence.key_set(equal("gw", dead)) == []
    assert await leases.get(dead) is None
    assert await survivors[0].presence_list(workspace, channel) == [ALICE]


@hazelcast_only
async def test_directory_near_cache_is_invalidated_by_another_clients_writes(hazelcast_caches, workspace):
    reader, writer = await hazelcast_caches(), await hazelcast_caches()
    await writer.set(workspace, "member:u1", b"member", 30)
    assert await reader.get(workspace, "member:u1") == b"member"

    async def served_locally() -> bool:  # once the writer's own event has reached the reader, no round trip
        hits = reader._near.hits
        return await reader.get(workspace, "member:u1") == b"member" and reader._near.hits == hits + 1

    await eventually(served_locally, 1.0)
    await writer.set(workspace, "member:u1", b"admin", 30)
    assert await eventually(lambda: _equals(reader.get(workspace, "member:u1"), b"admin"), 1.0) < 1.0
    await writer.delete(workspace, "member:u1")
    assert await eventually(lambda: _equals(reader.get(workspace, "member:u1"), None), 1.0) < 1.0


@hazelcast_only
async def test_directory_near_cache_drops_what_another_client_changed_while_it_read(hazelcast_caches, workspace):
    """An answer read while the key changed elsewhere must not be kept: it could be the old one."""
    reader, writer = await hazelcast_caches(), await hazelcast_caches()
    key = f"{len(workspace)}:{workspace}/chmember:c:u"
    await writer.set(workspace, "chmember:c:u", b"1", 30)
    reader._near.begin_read(key)  # a read starts ...
    await writer.set(workspace, "chmember:c:u", b"0", 30)  # ... the member is removed meanwhile ...
    await eventually(lambda: _true(reader._near._reading[key][1] == 1), 1.0)
    reader._near.end_read(key, b"1", 30.0)  # ... and its answer, the old one, comes back
    assert reader._near.get(key) is None
    assert await reader.get(workspace, "chmember:c:u") == b"0"


@hazelcast_only
async def test_directory_near_cache_follows_expiry_and_workspace_drops(hazelcast_caches, workspace):
    reader, writer = await hazelcast_caches(), await hazelcast_caches()
    await writer.set(workspace, "ws", b"short", 0.5)  # Hazelcast expires it within ~2 s (_hz_ttl)
    assert await reader.get(workspace, "ws") == b"short"
    assert await eventually(lambda: _equals(reader.get(workspace, "ws"), None), 4.0) < 4.0
    await writer.set(workspace, "member:u2", b"member", 30)
    assert await reader.get(workspace, "member:u2") == b"member"
    await writer.drop_workspace(workspace)
    assert await eventually(lambda: _equals(reader.get(workspace, "member:u2"), None), 1.0) < 1.0


async def _equals(value: Awaitable[Any], expected: Any) -> bool:
    return await value == expected


@hazelcast_only
async def test_rate_bucket_is_shared_by_every_client(hazelcast_caches, workspace):
    a, b = await hazelcast_caches(), await hazelcast_caches()
    # taking in turns: the two clients drain one bucket of 6, not one each
    taken = [await (a if i % 2 else b).rate_take(workspace, "turns", 0.001, 6) == 0.0 for i in range(10)]
    assert taken == [True] * 6 + [False] * 4
    # racing: 40 concurrent takes from two clients on a bucket of 10 never get more than 10
    results = await asyncio.gather(*(c.rate_take(workspace, "race", 0.001, 10) for c in (a, b) * 20))
    allowed = sum(r == 0.0 for r in results)
    assert 1 <= allowed <= 10
    assert all(r > 0.0 for r in results if r != 0.0)


@hazelcast_only
async def test_drop_workspace_leaves_nothing_behind(hazelcast_caches, workspace, channel):
    from storm.adapters import hazelcast_cache as hz

    a, b = await hazelcast_caches(), await hazelcast_caches()
    for c, suffix in ((a, "a"), (b, "b")):
        await c.set(workspace, f"k-{suffix}", b"v", 30)
        await c.set(workspace, f"member:{suffix}", b"member", 30)
        await c.presence_add(workspace, channel, f"conn-{suffix}", ALICE, 30)
        await c.incr(workspace, f"reactions:{suffix}")
        await c.rate_take(workspace, f"pub:{suffix}", 1.0, 5)
        await c.revoke(workspace, f"u-{suffix}", 30)
    await a.drop_workspace(workspace)

    in_ws = hz._in_workspace(workspace)
    for name in (hz.MAP_DIRECTORY, hz.MAP_KV, hz.MAP_COUNTERS, hz.MAP_RATE, hz.MAP_REVOKED):
        assert await b._maps[name].key_set(in_ws) == [], name
    assert await b._maps[hz.MAP_PRESENCE].key_set(hz.equal("ws", workspace)) == []
    prefix = hz.COUNTER_PREFIX + hz._ns(workspace)
    objects = await _distributed_objects(b)
    assert [o for o in objects if o.startswith(prefix)] == []  # the PN counters themselves are destroyed
    assert await b.get(workspace, "member:a") is None  # b's near cache was invalidated too


async def _distributed_objects(cache: Any) -> list[str]:
    """Names of the cluster's distributed objects (asked of the members, not the client's proxy list)."""
    from hazelcast.internal.asyncio_invocation import Invocation
    from hazelcast.protocol.codec import client_get_distributed_objects_codec

    client = cache._client
    request = client_get_distributed_objects_codec.encode_request()
    invocation = Invocation(request, response_handler=client_get_distributed_objects_codec.decode_response)
    return [info.name for info in await client._invocation_service.ainvoke(invocation)]


@hazelcast_only
async def test_counters_are_shared_and_proxies_stay_bounded(hazelcast_caches, workspace):
    a, b = await hazelcast_caches(counter_proxies_max=3), await hazelcast_caches()
    assert await a.incr(workspace, "r") == 1
    assert await b.incr(workspace, "r", 2) == 3  # one member here: the CRDT has nothing to lag behind
    for i in range(6):
        await a.incr(workspace, f"r{i}")
    proxies = [n for (service, n) in a._client._proxy_manager._proxies if service == "hz:impl:PNCounterService"]
    assert len(proxies) <= 3
    assert await a.incr(workspace, "r") == 4  # a released proxy comes back with the counter's value


@hazelcast_only
async def test_start_fails_cleanly_when_no_member_answers(clock):
    from storm.adapters import hazelcast_cache as hz

    cache = hz.HazelcastCache(_hazelcast_settings("127.0.0.1:1"), clock)
    hz_timeout, hz.CONNECT_TIMEOUT_S = hz.CONNECT_TIMEOUT_S, 0.5
    try:
        with pytest.raises(Unavailable):
            await cache.start()
    finally:
        hz.CONNECT_TIMEOUT_S = hz_timeout
    with pytest.raises(RuntimeError):
        await cache.start()
    await cache.stop()
