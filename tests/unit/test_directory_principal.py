"""A connect's principal comes from the cache once the user has been seen (storm/directory.py, issue 11):
no store transaction per connect, and the membership stays the gate (removals and tombstones still bite)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from storm.adapters.memory_cache import MemoryCache
from storm.adapters.memory_store import MemoryStore
from storm.directory import TOMBSTONE_TTL_S, Directory
from storm.domain import Membership, Role, Workspace
from storm.errors import Forbidden
from storm.ports.clock import ManualClock
from storm.ports.identity import Claims


class CountingStore(MemoryStore):
    """The memory store, counting the units of work opened (a SQL store's transactions)."""

    def __init__(self) -> None:
        super().__init__()
        self.units = 0

    def unit_of_work(self) -> Any:
        self.units += 1
        return super().unit_of_work()


WS = Workspace(id=uuid.uuid4(), slug="conn", name="Conn", plan="pro")


def claims(subject: str) -> Claims:
    return Claims(subject=subject, workspace=WS.slug, name=subject.split("|")[-1], expires_at=2e9)


@pytest.fixture
async def env() -> AsyncIterator[tuple[CountingStore, ManualClock, Directory]]:
    store = CountingStore()
    clock = ManualClock()
    cache = MemoryCache(clock)
    await store.start()
    await cache.start()
    async with store.unit_of_work() as uow:
        await uow.workspaces.add(WS)
        await uow.commit()
    try:
        yield store, clock, Directory(store, cache)
    finally:
        await cache.stop()
        await store.stop()


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
