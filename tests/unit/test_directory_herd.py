"""The directory's guards against a thundering herd on the store (storm/directory.py, docs/cache.md)."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import pytest

from storm.adapters.memory_cache import MemoryCache
from storm.directory import CACHE_TTL_S, INVALIDATED_TTL_S, TOMBSTONE_TTL_S, TTL_JITTER, USER_TTL_S, Directory
from storm.domain import Channel, ChannelKind, Workspace
from storm.ports.clock import ManualClock


class CountingStore:
    """Just enough of the Store port for Directory.channel: counts reads, can be slow or fail."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.reads = 0
        self.delay = 0.01
        self.fail: BaseException | None = None
        store = self

        class Channels:
            async def get(self, workspace_id: uuid.UUID, channel_id: uuid.UUID) -> Channel | None:
                store.reads += 1
                seen = store.channel  # what the database answers is fixed when the query runs
                await asyncio.sleep(store.delay)
                if store.fail is not None:
                    raise store.fail
                return seen if channel_id == seen.id else None

        class Uow:
            channels = Channels()

            async def __aenter__(self) -> Any:
                return self

            async def __aexit__(self, *exc: object) -> None:
                return None

        self._uow = Uow

    def unit_of_work(self, *, read_only: bool = False) -> Any:
        return self._uow()


@pytest.fixture
async def setup() -> Any:
    ws = Workspace(id=uuid.uuid4(), slug="herd", name="Herd", plan="pro")
    channel = Channel(id=uuid.uuid4(), workspace_id=ws.id, name="general", kind=ChannelKind.PUBLIC)
    store = CountingStore(channel)
    cache = MemoryCache(ManualClock())
    await cache.start()
    try:
        yield ws, channel, store, cache, Directory(store, cache)  # type: ignore[arg-type]
    finally:
        await cache.stop()


async def test_a_thousand_concurrent_misses_read_the_store_once(setup: Any) -> None:
    ws, channel, store, _, directory = setup
    got = await asyncio.gather(*(directory.channel(ws, str(channel.id)) for _ in range(1000)))
    assert store.reads == 1 and all(c.id == channel.id for c in got)


async def test_a_failed_load_fails_its_waiters_and_the_next_call_reads_again(setup: Any) -> None:
    ws, channel, store, _, directory = setup
    store.fail = RuntimeError("database down")
    results = await asyncio.gather(*(directory.channel(ws, str(channel.id)) for _ in range(5)),
                                   return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results) and store.reads == 1
    store.fail = None
    assert (await directory.channel(ws, str(channel.id))).id == channel.id and store.reads == 2


async def test_waiters_of_a_cancelled_load_load_it_themselves(setup: Any) -> None:
    ws, channel, store, _, directory = setup
    store.delay = 0.2
    loader = asyncio.ensure_future(directory.channel(ws, str(channel.id)))
    await asyncio.sleep(0.01)
    waiter = asyncio.ensure_future(directory.channel(ws, str(channel.id)))
    await asyncio.sleep(0.01)
    loader.cancel()
    assert (await waiter).id == channel.id  # not cancelled with the loader
    assert store.reads == 2


async def test_several_waiters_of_a_cancelled_load_all_get_the_answer(setup: Any) -> None:
    """Each waiter of a cancelled load loads for itself; the first to finish used to delete the slot of the
    last one registered, which then raised KeyError (a subscribe answered `internal` in a storm day run)."""
    ws, channel, store, _, directory = setup
    store.delay = 0.2
    loader = asyncio.ensure_future(directory.channel(ws, str(channel.id)))
    await asyncio.sleep(0.01)
    waiters = [asyncio.ensure_future(directory.channel(ws, str(channel.id))) for _ in range(3)]
    await asyncio.sleep(0.01)
    loader.cancel()
    got = await asyncio.gather(*waiters, return_exceptions=True)
    assert [getattr(c, "id", c) for c in got] == [channel.id] * 3
    assert directory._loading == {}


def test_entry_ttls_are_spread_so_entries_cached_together_do_not_expire_together(setup: Any) -> None:
    *_, directory = setup
    for key, base in (("ws", CACHE_TTL_S), ("member:1", INVALIDATED_TTL_S), ("chmember:1:2", INVALIDATED_TTL_S),
                      ("user:dev|a", USER_TTL_S)):
        ttls = [directory._entry_ttl(key) for _ in range(2000)]
        assert all(base * (1 - TTL_JITTER) <= t <= base * (1 + TTL_JITTER) for t in ttls)
        assert max(ttls) - min(ttls) > base * TTL_JITTER  # spread over seconds, not one instant


async def test_a_load_racing_an_invalidation_does_not_cache_the_old_answer(setup: Any) -> None:
    """A load reads the store just before the tenants API commits a change, and writes the cache just after
    the API's invalidation: the old answer must not be cached for a whole TTL."""
    ws, channel, store, cache, directory = setup
    store.delay = 0.05
    racing = asyncio.create_task(directory.channel(ws, str(channel.id)))  # reads the old row...
    await asyncio.sleep(0.01)
    store.channel = dataclasses.replace(channel, archived=True)  # ...the API commits the archive...
    await directory.forget_channel(ws.slug, channel.id)  # ...and invalidates, before the load writes
    assert (await racing).archived is False  # that caller saw the row as it was when it asked
    assert (await directory.channel(ws, str(channel.id))).archived is True  # nobody else sees it again
    cache._clock.advance(TOMBSTONE_TTL_S)
    assert (await directory.channel(ws, str(channel.id))).archived is True  # and now it is cached
    reads = store.reads
    assert (await directory.channel(ws, str(channel.id))).archived is True and store.reads == reads
