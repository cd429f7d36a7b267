"""The SQL store's connections on PostgreSQL: what replaced SQLAlchemy's pre-ping, and reads without a
transaction.  See docs/database.md ("Connections and the pool", "Reads without a transaction").

* A pooled connection whose server process is gone (a restart, a failover, ``pg_terminate_backend``) is
  thrown away at checkout and another one used: the caller sees no error, as with the pre-ping, and
  without its three round trips per checkout.
* ``unit_of_work(read_only=True)`` runs its statements outside a transaction (the server's session is
  ``idle``, not ``idle in transaction``, between them); a normal unit of work opens one.
* The read states of a batch of subscribes are one statement on PostgreSQL, whatever the batch's size
  (what they answer is the store contract's, tests/contract/test_store_contract.py).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
from sqlalchemy import event, text

from db.store import PoolSize, SqlStore
from storm.domain import Workspace
from storm.ports.store import UnitOfWork

pytestmark = pytest.mark.integration
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
async def pg_store(pg_url: str) -> AsyncIterator[SqlStore]:
    async with SqlStore(pg_url, pool=PoolSize(size=1, overflow=0, timeout_s=5.0)) as store:
        yield store


def _dsn(pg_url: str) -> str:
    return pg_url.replace("postgresql+asyncpg://", "postgresql://")


async def _backend_pid(store: SqlStore) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def _state_of(pg_url: str, pid: int) -> str:
    admin = await asyncpg.connect(_dsn(pg_url))
    try:
        return str(await admin.fetchval("SELECT state FROM pg_stat_activity WHERE pid = $1", pid))
    finally:
        await admin.close()


async def test_a_pooled_connection_the_server_ended_is_replaced_without_an_error(pg_store: SqlStore,
                                                                                  pg_url: str) -> None:
    before = await _backend_pid(pg_store)  # the pool's one connection, now idle in the pool
    admin = await asyncpg.connect(_dsn(pg_url))
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", before) is True
    finally:
        await admin.close()
    await asyncio.sleep(0.2)  # the event loop sees the socket close (a restart is no quicker than that)
    ws = Workspace(id=uuid.uuid4(), slug=f"pool-{uuid.uuid4().hex[:16]}", name="Pool", plan="pro", created_at=T0)

    async def add(uow: UnitOfWork) -> None:
        await uow.workspaces.add(ws)

    await pg_store.run(add)  # no error: the dead connection was dropped at checkout
    async with pg_store.unit_of_work(read_only=True) as uow:
        assert await uow.workspaces.get(ws.id) == ws
    after = await _backend_pid(pg_store)
    assert after != before


async def test_a_read_only_unit_holds_no_transaction_open_and_a_normal_one_does(pg_store: SqlStore,
                                                                                pg_url: str) -> None:
    pid = await _backend_pid(pg_store)  # pool size 1: every unit below runs on this server process
    async with pg_store.unit_of_work(read_only=True) as uow:
        await uow.workspaces.get(uuid.uuid4())
        assert await _state_of(pg_url, pid) == "idle"
    async with pg_store.unit_of_work() as uow:
        await uow.workspaces.get(uuid.uuid4())
        assert await _state_of(pg_url, pid) == "idle in transaction"
    assert await _state_of(pg_url, pid) == "idle"  # rolled back when it closed


async def test_the_read_states_of_a_batch_are_one_statement_whatever_its_size(pg_store: SqlStore) -> None:
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        statements.append(statement)

    event.listen(pg_store.engine.sync_engine, "before_cursor_execute", seen)
    try:
        for size in (1, 7, 250):
            statements.clear()
            wanted = [(uuid.uuid4(), uuid.uuid4(), 2**40) for _ in range(size)]
            async with pg_store.unit_of_work(read_only=True) as uow:
                assert await uow.read_markers.unread_at(uuid.uuid4(), wanted) == [(0, 0)] * size
            assert len(statements) == 1, (size, statements)
    finally:
        event.remove(pg_store.engine.sync_engine, "before_cursor_execute", seen)
