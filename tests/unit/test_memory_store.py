"""What the memory store (storm/adapters/memory_store.py) adds to the store contract, which it shares with the
SQL store (tests/contract/test_store_contract.py): how its units of work meet when they overlap.  A commit
replays the unit's writes onto what was committed meanwhile, so nobody's write is lost, and a write that no
longer fits fails the commit with the error it would have raised at once."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from storm.adapters.memory_store import MemoryStore
from storm.domain import Channel, ReadMarker, Workspace
from storm.errors import Conflict

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
async def memory_store() -> AsyncIterator[MemoryStore]:
    async with MemoryStore() as s:
        yield s


def _ws(slug: str) -> Workspace:
    return Workspace(id=uuid.uuid4(), slug=slug, name=slug, created_at=T0)


async def test_overlapping_units_of_work_keep_both_writes(memory_store: MemoryStore) -> None:
    a, b = _ws("a"), _ws("b")
    async with memory_store.unit_of_work() as first, memory_store.unit_of_work() as second:
        await first.workspaces.add(a)
        await second.workspaces.add(b)
        assert await second.workspaces.get(a.id) is None  # not committed yet: invisible to others
        await first.commit()
        await second.commit()
    async with memory_store.unit_of_work() as uow:
        assert [w.slug for w in await uow.workspaces.list()] == ["a", "b"]


async def test_a_write_that_no_longer_fits_fails_the_commit_and_changes_nothing(memory_store: MemoryStore) -> None:
    async with memory_store.unit_of_work() as first, memory_store.unit_of_work() as second:
        await first.workspaces.add(_ws("taken"))
        loser = _ws("taken")
        await second.workspaces.add(loser)  # fine in its own copy
        await second.workspaces.add(_ws("other"))
        await first.commit()
        with pytest.raises(Conflict) as info:
            await second.commit()
        assert info.value.field == "slug"
    async with memory_store.unit_of_work() as uow:
        assert [w.slug for w in await uow.workspaces.list()] == ["taken"]  # not even "other"
        assert await uow.workspaces.get(loser.id) is None


async def test_replayed_read_markers_still_never_go_back(memory_store: MemoryStore) -> None:
    ws, ch, user = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with memory_store.unit_of_work() as slow, memory_store.unit_of_work() as fast:
        assert await slow.read_markers.advance(ReadMarker(ws, ch, user, 5)) == 5
        assert await fast.read_markers.advance(ReadMarker(ws, ch, user, 9)) == 9
        await fast.commit()
        await slow.commit()  # replayed onto 9: max(9, 5)
    async with memory_store.unit_of_work() as uow:
        assert await uow.read_markers.get(ws, ch, user) == 9


async def test_a_unit_reads_the_latest_commit_until_it_writes_then_its_own_copy(memory_store: MemoryStore) -> None:
    a = _ws("a")
    async with memory_store.unit_of_work() as reader:
        assert await reader.workspaces.get(a.id) is None
        await memory_store.run(lambda uow: uow.workspaces.add(a))
        assert await reader.workspaces.get(a.id) == a  # no write yet: reads what is committed
        channel = Channel(id=uuid.uuid4(), workspace_id=a.id, name="general", created_at=T0)
        await reader.channels.add(channel)  # its first write: from here on, its own copy
        await memory_store.run(lambda uow: uow.workspaces.add(_ws("late")))
        assert await reader.workspaces.get_by_slug("late") is None
        assert await reader.channels.get(a.id, channel.id) == channel


async def test_a_refused_write_leaves_the_unit_usable_and_nothing_behind(memory_store: MemoryStore) -> None:
    a = _ws("a")
    await memory_store.run(lambda uow: uow.workspaces.add(a))
    async with memory_store.unit_of_work() as uow:
        with pytest.raises(Conflict):
            await uow.workspaces.add(_ws("a"))
        await uow.workspaces.add(_ws("b"))
        await uow.commit()
    async with memory_store.unit_of_work() as uow:
        assert [w.slug for w in await uow.workspaces.list()] == ["a", "b"]


async def test_units_of_work_need_a_started_store_and_async_with() -> None:
    store = MemoryStore()
    with pytest.raises(RuntimeError, match="not started"):
        store.unit_of_work()
    async with store:
        uow = store.unit_of_work()
        with pytest.raises(RuntimeError, match="async with"):
            await uow.commit()
        async with uow:
            with pytest.raises(RuntimeError, match="already open"):
                await uow.__aenter__()
        with pytest.raises(ValueError, match="retries"):
            await store.run(lambda u: u.workspaces.get(uuid.uuid4()), retries=-1)


def test_storm_store_memory_selects_it_and_other_values_are_refused() -> None:
    from storm.bootstrap import build_services
    from storm.config import Config, ConfigError

    assert isinstance(build_services(Config.from_env({"STORM_STORE": "memory"})).store, MemoryStore)
    assert not isinstance(build_services(Config.from_env({})).store, MemoryStore)  # the default is SQL
    with pytest.raises(ConfigError, match="STORM_STORE='redis': expected one of sql, memory"):
        Config.from_env({"STORM_STORE": "redis"})
