"""Real serialization failures (SQLSTATE 40001) on PostgreSQL at SERIALIZABLE, and SqlStore.run retrying
them.  See docs/database.md ("Transactions and retries").

Each test makes two transactions conflict for certain: asyncio events order their reads and writes, and
only the first attempt of each waits, so the retry runs free.  The conflicts are the ones STORM meets:

* write skew: each transaction reads two rows and writes one of them (the anomaly SERIALIZABLE forbids);
* two persistence workers writing the same redelivered batch: ``INSERT … ON CONFLICT DO NOTHING`` meets a
  row committed after its snapshot was taken, which PostgreSQL refuses with 40001 at SERIALIZABLE.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from db import models
from db.errors import RetriesExhausted, SerializationFailure
from db.store import RetryPolicy, SqlStore
from storm.domain import Message, ReadMarker, Workspace
from storm.errors import Unavailable
from storm.ports.store import UnitOfWork

pytestmark = pytest.mark.integration
T0 = datetime(2026, 1, 1, tzinfo=UTC)
WAIT_S = 10.0


@pytest.fixture
async def pg_store(pg_url: str) -> AsyncIterator[SqlStore]:
    async with SqlStore(pg_url) as store:
        store.retry_policy = RetryPolicy(base_s=0.005, cap_s=0.05)
        yield store


async def _workspace(store: SqlStore) -> Workspace:
    ws = Workspace(id=uuid.uuid4(), slug=f"ser-{uuid.uuid4().hex[:16]}", name="Ser", plan="pro", created_at=T0)

    async def add(uow: UnitOfWork) -> None:
        await uow.workspaces.add(ws)

    await store.run(add)
    return ws


async def test_write_skew_is_aborted_and_retried_into_a_serial_order(
    pg_store: SqlStore, caplog: pytest.LogCaptureFixture
) -> None:
    """T1 and T2 both read markers A (1) and B (2); then T1 sets A := A + B and T2 sets B := A + B.  Run
    side by side without SERIALIZABLE both would commit (A = 3, B = 3: a state no serial order gives).
    PostgreSQL aborts one with 40001, run() reruns it on fresh data, and the end state is a serial one."""
    ws = await _workspace(pg_store)
    ch_a, ch_b, user = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()

    async def seed(uow: UnitOfWork) -> None:
        await uow.read_markers.advance(ReadMarker(ws.id, ch_a, user, 1))
        await uow.read_markers.advance(ReadMarker(ws.id, ch_b, user, 2))

    await pg_store.run(seed)
    attempts = {"A": 0, "B": 0}
    read = {"A": asyncio.Event(), "B": asyncio.Event()}

    def txn(mine: str, other: str, channel: uuid.UUID) -> object:
        async def body(uow: UnitOfWork) -> int:
            attempts[mine] += 1
            a = await uow.read_markers.get(ws.id, ch_a, user)
            b = await uow.read_markers.get(ws.id, ch_b, user)
            if attempts[mine] == 1:  # first attempt: both must have read before either writes
                read[mine].set()
                await asyncio.wait_for(read[other].wait(), WAIT_S)
            return await uow.read_markers.advance(ReadMarker(ws.id, channel, user, a + b))

        return body

    with caplog.at_level(logging.INFO, logger="storm.db"):
        results = await asyncio.wait_for(asyncio.gather(
            pg_store.run(txn("A", "B", ch_a)),  # type: ignore[arg-type]
            pg_store.run(txn("B", "A", ch_b)),  # type: ignore[arg-type]
        ), 30)

    async with pg_store.unit_of_work() as uow:
        final = (await uow.read_markers.get(ws.id, ch_a, user), await uow.read_markers.get(ws.id, ch_b, user))
    # T1 then T2: A = 3, B = 3 + 2 = 5.  T2 then T1: B = 3, A = 1 + 3 = 4.  Never (3, 3).
    assert final in {(3, 5), (4, 3)}
    assert tuple(results) == final
    assert pg_store.serialization_retries >= 1
    assert sum(attempts.values()) == 2 + pg_store.serialization_retries
    assert any("serialization failure, retry 1/5" in r.getMessage() for r in caplog.records)


def _batch(ws: Workspace, n: int) -> list[Message]:
    channel, author = uuid.uuid4(), uuid.uuid4()
    return [Message(id=uuid.uuid4(), workspace_id=ws.id, channel_id=channel, author_id=author, body=f"m{i}",
                    offset=(7 << 32) + 10 * i, created_at=T0) for i in range(n)]


async def _redelivered_batch(store: SqlStore, ws: Workspace, batch: list[Message], *, retries: int) -> list[int]:
    """Worker 2 opens its transaction (snapshot taken) before worker 1 commits the same batch, then inserts
    it: the rows exist but its snapshot cannot see them, so DO NOTHING cannot decide and PostgreSQL raises
    40001.  Returns the rows each worker inserted."""
    snapshot_taken, first_committed = asyncio.Event(), asyncio.Event()
    attempts = {"w2": 0}

    async def worker1(uow: UnitOfWork) -> int:
        await asyncio.wait_for(snapshot_taken.wait(), WAIT_S)
        return await uow.messages.add_many(batch)

    async def worker2(uow: UnitOfWork) -> int:
        attempts["w2"] += 1
        await uow.messages.get(ws.id, batch[0].id)  # the first statement fixes the snapshot
        if attempts["w2"] == 1:
            snapshot_taken.set()
            await asyncio.wait_for(first_committed.wait(), WAIT_S)
        return await uow.messages.add_many(batch)

    async def first() -> int:
        try:
            return await store.run(worker1)
        finally:
            first_committed.set()

    results = await asyncio.wait_for(asyncio.gather(first(), store.run(worker2, retries=retries),
                                                    return_exceptions=True), 30)
    return results  # type: ignore[return-value]


async def test_two_workers_writing_one_batch_store_it_once(pg_store: SqlStore) -> None:
    ws = await _workspace(pg_store)
    batch = _batch(ws, 300)
    results = await _redelivered_batch(pg_store, ws, batch, retries=5)
    assert results == [300, 0]  # the retry sees the committed rows and inserts none
    assert pg_store.serialization_retries == 1
    async with pg_store.engine.connect() as conn:
        rows = (await conn.execute(select(func.count()).select_from(models.messages)
                                   .where(models.messages.c.workspace_id == ws.id))).scalar_one()
    assert rows == 300


async def test_retries_exhausted_is_a_clear_unavailable(pg_store: SqlStore) -> None:
    ws = await _workspace(pg_store)
    batch = _batch(ws, 5)
    first, second = await _redelivered_batch(pg_store, ws, batch, retries=0)
    assert first == 5
    assert isinstance(second, RetriesExhausted) and isinstance(second, Unavailable)
    assert not isinstance(second, SerializationFailure)
    assert second.attempts == 1 and second.code == "unavailable"
    assert "still conflicting after 1 attempts" in str(second)
    assert isinstance(second.__cause__, SerializationFailure)  # the real 40001 is kept as the cause
    assert (pg_store.serialization_retries, pg_store.serialization_gave_up) == (0, 1)
