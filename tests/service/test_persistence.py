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
from storm_tools.seed import DEMO_WORKSPACE, channel_id, demo_id, seed_demo

GENERAL = channel_id(DEMO_WORKSPACE, "general")
ALICE = str(demo_id("user", "alice"))


@pytest.fixture
async def persist_services(tmp_path) -> AsyncIterator[Services]:
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


async def stored(persist_services: Services) -> list[str]:
    async with persist_services.store.unit_of_work() as uow:
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


async def test_messages_are_stored_once_even_when_redelivered(persist_services):
    worker = PersistenceWorker(persist_services)
    await worker.start()
    try:
        mid = str(uuid.uuid4())
        await persist_services.broker.publish(DEMO_WORKSPACE, GENERAL, message("one", mid))
        await eventually(lambda: _has(persist_services, ["one"]))
        sub = await persist_services.broker.subscribe_work("replay")  # a second, independent subscription
        await persist_services.broker.publish(DEMO_WORKSPACE, GENERAL, message("two"))
        got = await sub.receive(10, 1.0)
        await worker.process(got)  # the same record written twice: still one row
        await eventually(lambda: _has(persist_services, ["one", "two"]))
        await sub.close()
    finally:
        await worker.stop()
    assert await stored(persist_services) == ["one", "two"]


async def _has(persist_services: Services, bodies: list[str]) -> bool:
    return await stored(persist_services) == bodies


async def test_poison_record_is_dead_lettered_and_the_rest_stored(persist_services):
    worker = PersistenceWorker(persist_services)
    await worker.start()
    try:
        await persist_services.broker.publish(DEMO_WORKSPACE, GENERAL, b"this is not an event")
        await persist_services.broker.publish(DEMO_WORKSPACE, GENERAL, message("fine"))
        await eventually(lambda: _has(persist_services, ["fine"]))
    finally:
        await worker.stop()
    dead = persist_services.broker.dead_letters(SUBSCRIPTION)  # type: ignore[attr-defined]
    assert [r.offset for r, _ in dead] == [1] and "undecodable" in dead[0][1]


async def test_a_store_outage_longer_than_max_redeliveries_is_waited_out_not_dead_lettered(persist_services,
                                                                                           monkeypatch):
    """chaos postgres-restart: the worker used to count the outage's failed attempts as the record's and
    dead-lettered it after max_redeliveries (3 here): acked, never stored."""
    real_run = persist_services.store.run
    failures = {"n": 0}

    async def broken(fn, **kw):
        failures["n"] += 1
        raise Unavailable("database down")

    monkeypatch.setattr(persist_services.store, "run", broken)
    worker = PersistenceWorker(persist_services)
    await worker.start()
    try:
        await persist_services.broker.publish(DEMO_WORKSPACE, GENERAL, message("kept"))
        await eventually(lambda: _true(failures["n"] >= 3 * 2), timeout=10.0)  # twice max_redeliveries
        assert worker.stats["dead_lettered"] == 0
        monkeypatch.setattr(persist_services.store, "run", real_run)  # the database is back
        await persist_services.broker.publish(DEMO_WORKSPACE, GENERAL, message("after"))
        await eventually(lambda: _has(persist_services, ["kept", "after"]), timeout=10.0)
    finally:
        await worker.stop()
    assert persist_services.broker.dead_letters(SUBSCRIPTION) == []  # type: ignore[attr-defined]


async def test_the_worker_backs_off_while_the_store_is_down(persist_services, monkeypatch):
    attempts: list[float] = []

    async def broken(fn, **kw):
        attempts.append(asyncio.get_running_loop().time())
        raise Unavailable("database down")

    monkeypatch.setattr(persist_services.store, "run", broken)
    worker = PersistenceWorker(persist_services)  # nack_delay_s = 0.05: pauses 0.05, 0.1, 0.2, 0.4 ...
    await worker.start()
    try:
        await persist_services.broker.publish(DEMO_WORKSPACE, GENERAL, message("kept"))
        await eventually(lambda: _true(len(attempts) >= 5), timeout=10.0)
    finally:
        await worker.stop()
    # growing pauses (at least 0.05 + 0.1 + 0.2 + 0.4 s before the 5th attempt), not a fixed 50 ms loop (0.2 s)
    assert attempts[4] - attempts[0] >= 0.7


async def _true(value: bool) -> bool:
    return value


async def test_worker_survives_a_cache_outage_during_workspace_lookup(persist_services, monkeypatch):
    worker = PersistenceWorker(persist_services)
    await worker.start()
    calls = {"n": 0}
    real = persist_services.directory.workspace

    async def flaky(slug):
        calls["n"] += 1
        if calls["n"] == 1:
            raise Unavailable("cache down")
        return await real(slug)

    monkeypatch.setattr(persist_services.directory, "workspace", flaky)
    try:
        await persist_services.broker.publish(DEMO_WORKSPACE, GENERAL, message("kept"))
        await eventually(lambda: _has(persist_services, ["kept"]))
    finally:
        await worker.stop()


async def test_records_of_a_deleted_workspace_are_dropped(persist_services):
    worker = PersistenceWorker(persist_services)
    await worker.start()
    try:
        await persist_services.broker.publish("gone-ws", GENERAL, message("orphan"))
        await persist_services.broker.publish(DEMO_WORKSPACE, GENERAL, message("kept"))
        await eventually(lambda: _has(persist_services, ["kept"]))
    finally:
        await worker.stop()
    assert worker.stats["dead_lettered"] == 0


RANDOM = channel_id(DEMO_WORKSPACE, "random")


def message_in(channel: str, text: str) -> bytes:
    return e.encode(e.MessageEvent(channel=channel, id=str(uuid.uuid4()), author=ALICE, author_name="Alice",
                                   text=text, ts=1_700_000_000.0))


async def stored_in(persist_services: Services, channel: str) -> list[str]:
    async with persist_services.store.unit_of_work() as uow:
        ws = await uow.workspaces.get_by_slug(DEMO_WORKSPACE)
        assert ws is not None
        rows = await uow.messages.page(ws.id, uuid.UUID(channel), before=None, limit=100)
    return [r.body for r in reversed(rows)]


async def _publish_as_one_batch(persist_services: Services, worker: PersistenceWorker, records: list[tuple[str, bytes]],
                                workspace_of: dict[str, str] | None = None):
    """Touch the channel logs first (the embedded broker's first touch awaits the store), then start the
    worker and publish without yielding: its first receive() finds every record, i.e. one batch."""
    workspace_of = workspace_of or {}
    for channel, _ in records:
        await persist_services.broker.head(workspace_of.get(channel, DEMO_WORKSPACE), channel)
    await worker.start()
    for channel, payload in records:
        await persist_services.broker.publish(workspace_of.get(channel, DEMO_WORKSPACE), channel, payload)


async def test_a_batch_is_written_with_one_multi_row_insert(persist_services):
    """A batch spanning two workspaces and three channels: one INSERT … ON CONFLICT DO NOTHING."""
    from datetime import UTC, datetime

    from sqlalchemy import event

    from storm.domain import Workspace

    other = Workspace(id=uuid.uuid4(), slug=f"other-{uuid.uuid4().hex[:8]}", name="Other", plan="free",
                      created_at=datetime.now(UTC))

    async def add(uow):
        await uow.workspaces.add(other)

    await persist_services.store.run(add)
    elsewhere = str(uuid.uuid4())
    inserts: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("INSERT INTO messages"):
            inserts.append(statement)

    engine = persist_services.store.engine.sync_engine  # type: ignore[attr-defined]
    event.listen(engine, "before_cursor_execute", count)
    worker = PersistenceWorker(persist_services)
    records = [(GENERAL if i % 2 else RANDOM, message_in(GENERAL if i % 2 else RANDOM, f"m{i}")) for i in range(60)]
    records += [(elsewhere, message_in(elsewhere, f"x{i}")) for i in range(10)]
    try:
        await _publish_as_one_batch(persist_services, worker, records, {elsewhere: other.slug})
        await eventually(lambda: _true(worker.stats["inserted"] == 70))
    finally:
        await worker.stop()
        event.remove(engine, "before_cursor_execute", count)
    assert worker.stats["batches"] == 1
    assert len(inserts) == 1 and "ON CONFLICT DO NOTHING" in inserts[0]
    async with persist_services.store.unit_of_work() as uow:
        rows = await uow.messages.page(other.id, uuid.UUID(elsewhere), before=None, limit=100)
    assert [r.body for r in reversed(rows)] == [f"x{i}" for i in range(10)]
    assert await stored_in(persist_services, RANDOM) == [f"m{i}" for i in range(0, 60, 2)]
    assert await stored_in(persist_services, GENERAL) == [f"m{i}" for i in range(1, 60, 2)]


async def test_failed_batch_falls_back_record_by_record_keeping_channel_order(persist_services, monkeypatch):
    """One record fails twice: the batch is retried record by record; the failing record is nacked and the
    later record of its channel is handed back unwritten, while the other channel goes ahead.  After the
    redelivery everything is stored once, in channel order, and nothing was acknowledged unwritten."""
    import consumers.persistence as persistence

    real_apply_all = persistence.apply_all
    committed: list[str] = []
    failures = {"n": 0}

    async def flaky(uow, plans, ids):
        bodies = [msg.body for plan in plans.values() for msg in plan.messages]
        if "a2" in bodies and failures["n"] < 2:
            failures["n"] += 1
            raise RuntimeError("flaky write")  # this record's fault; an outage (Unavailable) is waited out whole
        inserted = await real_apply_all(uow, plans, ids)
        committed.extend(bodies)  # still inside the transaction: recorded only if it did not raise
        return inserted

    monkeypatch.setattr(persistence, "apply_all", flaky)
    worker = PersistenceWorker(persist_services)
    records = [(GENERAL, message_in(GENERAL, "a1")), (RANDOM, message_in(RANDOM, "b1")),
               (GENERAL, message_in(GENERAL, "a2")), (RANDOM, message_in(RANDOM, "b2")),
               (GENERAL, message_in(GENERAL, "a3"))]
    try:
        await _publish_as_one_batch(persist_services, worker, records)
        await eventually(lambda: _true(worker.stats["inserted"] == 5))
    finally:
        await worker.stop()
    assert failures["n"] == 2  # the whole batch, then a2 alone
    assert worker.stats["retried"] == 1 and worker.stats["dead_lettered"] == 0
    general = [b for b in committed if b.startswith("a")]
    assert general == ["a1", "a2", "a3"]  # a3 never overtook a2
    assert committed.index("b2") < committed.index("a2")  # the other channel did not wait for the retry
    assert await stored_in(persist_services, GENERAL) == ["a1", "a2", "a3"]
    assert await stored_in(persist_services, RANDOM) == ["b1", "b2"]


@pytest.mark.parametrize("linger_s", [0.3, 0.0])
async def test_records_trickling_in_within_the_linger_share_one_transaction(tmp_path, linger_s):
    """STORM_CONSUMER_LINGER_S (docs/consumers.md, "Batching"): ten records 10 ms apart are one batch when
    the worker lingers 300 ms, and several when it does not linger."""
    cfg = Config.from_env({}, database_url=f"sqlite+aiosqlite:///{tmp_path}/l.db", consumer_linger_s=linger_s)
    svc = build_services(cfg)
    await svc.start()
    await seed_demo(svc.store)
    worker = PersistenceWorker(svc)
    await worker.start()
    try:
        for i in range(10):
            await svc.broker.publish(DEMO_WORKSPACE, GENERAL, message(f"t{i}"))
            await asyncio.sleep(0.01 if linger_s else 0.05)  # without linger: each one written before the next
        await eventually(lambda: _true(worker.stats["inserted"] == 10))
        if linger_s:
            assert worker.stats["batches"] == 1
        else:
            assert worker.stats["batches"] > 1
        assert await stored(svc) == [f"t{i}" for i in range(10)]
    finally:
        await worker.stop()
        await svc.stop()
