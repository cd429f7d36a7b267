"""The persistence worker's failure policy (docs/consumers.md), on the embedded broker and SQLite."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from consumers.persistence import SUBSCRIPTION, PersistenceWorker
from storm.bootstrap import Services, build_services
from storm.config import Config
from storm.errors import Unavailable
from storm.protocol import events as e
from storm.seed import DEMO_WORKSPACE, channel_id, demo_id, seed_demo

GENERAL = channel_id(DEMO_WORKSPACE, "general")
ALICE = str(demo_id("user", "alice"))


@pytest.fixture
async def services(tmp_path) -> AsyncIterator[Services]:
    cfg = Config.from_env({}, database_url=f"sqlite+aiosqlite:///{tmp_path}/p.db", nack_delay_s=0.05,
                          consumer_max_redeliveries=3, consumer_max_wait_s=0.02)
    svc = build_services(cfg)
    await svc.start()
    await seed_demo(svc.store)
    try:
        yield svc
    finally:
        await svc.stop()


def message(text: str, mid: str | None = None) -> bytes:
    return e.encode(e.MessageEvent(channel=GENERAL, id=mid or str(uuid.uuid4()), author=ALICE,
                                   author_name="Alice", text=text, ts=1_700_000_000.0))


async def stored(services: Services) -> list[str]:
    async with services.store.unit_of_work() as uow:
        ws = await uow.workspaces.get_by_slug(DEMO_WORKSPACE)
        assert ws is not None
        rows = await uow.messages.page(ws.id, uuid.UUID(GENERAL), before=None, limit=100)
    return [r.body for r in reversed(rows)]


async def eventually(check, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)


async def test_messages_are_stored_once_even_when_redelivered(services):
    worker = PersistenceWorker(services)
    await worker.start()
    try:
        mid = str(uuid.uuid4())
        await services.broker.publish(DEMO_WORKSPACE, GENERAL, message("one", mid))
        await eventually(lambda: _has(services, ["one"]))
        sub = await services.broker.subscribe_work("replay")  # a second, independent subscription
        await services.broker.publish(DEMO_WORKSPACE, GENERAL, message("two"))
        got = await sub.receive(10, 1.0)
        await worker.process(got)  # the same record written twice: still one row
        await eventually(lambda: _has(services, ["one", "two"]))
        await sub.close()
    finally:
        await worker.stop()
    assert await stored(services) == ["one", "two"]


async def _has(services: Services, bodies: list[str]) -> bool:
    return await stored(services) == bodies


async def test_poison_record_is_dead_lettered_and_the_rest_stored(services):
    worker = PersistenceWorker(services)
    await worker.start()
    try:
        await services.broker.publish(DEMO_WORKSPACE, GENERAL, b"this is not an event")
        await services.broker.publish(DEMO_WORKSPACE, GENERAL, message("fine"))
        await eventually(lambda: _has(services, ["fine"]))
    finally:
        await worker.stop()
    dead = services.broker.dead_letters(SUBSCRIPTION)  # type: ignore[attr-defined]
    assert [r.offset for r, _ in dead] == [1] and "undecodable" in dead[0][1]


async def test_store_outage_is_retried_then_dead_lettered_without_killing_the_worker(services, monkeypatch):
    real_run = services.store.run
    failures = {"n": 0}

    async def broken(fn, **kw):
        failures["n"] += 1
        raise Unavailable("database down")

    monkeypatch.setattr(services.store, "run", broken)
    worker = PersistenceWorker(services)
    await worker.start()
    try:
        await services.broker.publish(DEMO_WORKSPACE, GENERAL, message("lost?"))
        await eventually(lambda: _true(worker.stats["dead_lettered"] == 1))
        assert failures["n"] == 3  # delivered max_redeliveries times, then dead-lettered
        monkeypatch.setattr(services.store, "run", real_run)  # the database is back
        await services.broker.publish(DEMO_WORKSPACE, GENERAL, message("after"))
        await eventually(lambda: _has(services, ["after"]))
    finally:
        await worker.stop()


async def _true(value: bool) -> bool:
    return value


async def test_worker_survives_a_cache_outage_during_workspace_lookup(services, monkeypatch):
    worker = PersistenceWorker(services)
    await worker.start()
    calls = {"n": 0}
    real = services.directory.workspace

    async def flaky(slug):
        calls["n"] += 1
        if calls["n"] == 1:
            raise Unavailable("cache down")
        return await real(slug)

    monkeypatch.setattr(services.directory, "workspace", flaky)
    try:
        await services.broker.publish(DEMO_WORKSPACE, GENERAL, message("kept"))
        await eventually(lambda: _has(services, ["kept"]))
    finally:
        await worker.stop()


async def test_records_of_a_deleted_workspace_are_dropped(services):
    worker = PersistenceWorker(services)
    await worker.start()
    try:
        await services.broker.publish("gone-ws", GENERAL, message("orphan"))
        await services.broker.publish(DEMO_WORKSPACE, GENERAL, message("kept"))
        await eventually(lambda: _has(services, ["kept"]))
    finally:
        await worker.stop()
    assert worker.stats["dead_lettered"] == 0
