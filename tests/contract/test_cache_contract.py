"""Cache port contract (storm/ports/cache.py), run against every adapter."""

from __future__ import annotations

import asyncio

from storm.ports.cache import PresenceEntry

ALICE = PresenceEntry("u-alice", "Alice")
BOB = PresenceEntry("u-bob", "Bob")


async def test_kv_roundtrip_ttl_and_delete(cache, workspace):
    assert await cache.get(workspace, "k") is None
    await cache.set(workspace, "k", b"v", 10)
    assert await cache.get(workspace, "k") == b"v"
    await cache.set(workspace, "short", b"x", 0.1)
    await asyncio.sleep(0.25)
    assert await cache.get(workspace, "short") is None
    await cache.delete(workspace, "k")
    assert await cache.get(workspace, "k") is None


async def test_keys_are_scoped_by_workspace(cache, workspace):
    await cache.set(workspace, "k", b"a", 10)
    assert await cache.get(workspace + "-other", "k") is None


async def test_put_if_absent_returns_existing(cache, workspace):
    assert await cache.put_if_absent(workspace, "cmid:1", b"first", 10) is None
    assert await cache.put_if_absent(workspace, "cmid:1", b"second", 10) == b"first"
    assert await cache.get(workspace, "cmid:1") == b"first"


async def test_counters(cache, workspace):
    assert await cache.incr(workspace, "c") == 1
    assert await cache.incr(workspace, "c", 5) == 6
    assert await cache.incr(workspace, "c", -2) == 4


async def test_presence_join_and_leave_per_user_not_per_connection(cache, workspace, channel):
    assert await cache.presence_add(workspace, channel, "conn-1", ALICE, 10) is True
    assert await cache.presence_add(workspace, channel, "conn-2", ALICE, 10) is False  # second tab
    assert await cache.presence_add(workspace, channel, "conn-3", BOB, 10) is True
    assert [e.name for e in await cache.presence_list(workspace, channel)] == ["Alice", "Bob"]
    assert await cache.presence_remove(workspace, channel, "conn-1") is None  # alice still has conn-2
    assert await cache.presence_remove(workspace, channel, "conn-2") == ALICE
    assert await cache.presence_list(workspace, channel) == [BOB]
    assert await cache.presence_remove(workspace, channel, "conn-unknown") is None


async def test_presence_expires_without_refresh_and_survives_with_it(cache, workspace, channel):
    await cache.presence_add(workspace, channel, "conn-1", ALICE, 0.3)
    await cache.presence_add(workspace, channel, "conn-2", BOB, 0.3)
    await asyncio.sleep(0.15)
    await cache.presence_refresh(workspace, [channel], "conn-2", 1.0)
    await asyncio.sleep(0.3)
    assert await cache.presence_list(workspace, channel) == [BOB]


async def test_drop_workspace(cache, workspace, channel):
    await cache.set(workspace, "k", b"v", 10)
    await cache.presence_add(workspace, channel, "c", ALICE, 10)
    await cache.drop_workspace(workspace)
    assert await cache.get(workspace, "k") is None
    assert await cache.presence_list(workspace, channel) == []
