"""The database URL picks the dialect, the driver and the isolation level.  See docs/database.md.

CockroachDB has no server here (no registry ships one): its URLs are checked by building the engine, which
does not connect, and inspecting the dialect SQLAlchemy chose.  PostgreSQL URLs, for both drivers, are also
checked on the live server (marked ``integration``).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import make_url, text

from db import models
from db.store import SqlStore
from storm.config import ConfigError
from storm.domain import Message, Workspace
from storm.ports.store import UnitOfWork


@pytest.mark.parametrize(("url", "dialect", "driver", "dialect_class", "isolation"), [
    ("sqlite+aiosqlite://", "sqlite", "aiosqlite", "SQLiteDialect_aiosqlite", None),
    ("postgresql+asyncpg://u:p@127.0.0.1:9/db", "postgresql", "asyncpg", "PGDialect_asyncpg", "SERIALIZABLE"),
    ("postgresql+psycopg://u:p@127.0.0.1:9/db", "postgresql", "psycopg", "PGDialectAsync_psycopg",
     "SERIALIZABLE"),
    ("cockroachdb+asyncpg://root@127.0.0.1:9/storm", "cockroachdb", "asyncpg", "CockroachDBDialect_asyncpg",
     "SERIALIZABLE"),
    ("cockroachdb+psycopg://root@127.0.0.1:9/storm", "cockroachdb", "psycopg",
     "CockroachDBDialectAsync_psycopg", "SERIALIZABLE"),
])
async def test_url_selects_dialect_driver_and_isolation(
    url: str, dialect: str, driver: str, dialect_class: str, isolation: str | None
) -> None:
    store = SqlStore(url, create_schema=False)
    assert (store.dialect, store.driver, store.isolation_level) == (dialect, driver, isolation)
    await store.start()  # builds the engine; nothing listens on port 9 and nothing connects yet
    try:
        engine_dialect = store.engine.dialect
        assert type(engine_dialect).__name__ == dialect_class
        assert (engine_dialect.name, engine_dialect.driver, engine_dialect.is_async) == (dialect, driver, True)
        # create_engine(isolation_level=…) is applied to every new connection from this attribute.
        assert getattr(engine_dialect, "_on_connect_isolation_level", None) == isolation
    finally:
        await store.stop()


@pytest.mark.parametrize("url", [
    "mysql+aiomysql://u:p@host/db",
    "postgresql://u:p@host/db",  # synchronous psycopg2: would block the event loop
    "sqlite:///storm.db",
    "cockroachdb://root@host/db",
    "not a url",
])
def test_unsupported_urls_are_refused_with_the_setting_named(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        SqlStore(url)
    assert "STORM_DATABASE_URL" in str(err.value)


def test_cockroachdb_dialect_renders_the_idempotent_multi_row_insert() -> None:
    """What the persistence worker sends, compiled for CockroachDB: one INSERT with many VALUES rows and
    ON CONFLICT DO NOTHING (CockroachDB speaks PostgreSQL's form)."""
    from sqlalchemy.dialects import postgresql

    dialect = make_url("cockroachdb+asyncpg://root@h/db").get_dialect()()
    rows = [{"id": uuid.uuid4(), "workspace_id": uuid.uuid4(), "channel_id": uuid.uuid4(),
             "author_id": uuid.uuid4(), "body": "x", "offset": i, "client_msg_id": None, "thread_id": None,
             "created_at": datetime.now(UTC), "edited_at": None, "deleted_at": None} for i in (1, 2)]
    statement = (postgresql.insert(models.messages).values(rows).on_conflict_do_nothing()
                 .returning(models.messages.c.id))
    sql = str(statement.compile(dialect=dialect))
    assert sql.startswith("INSERT INTO messages (id, workspace_id, channel_id, author_id, body, \"offset\"")
    assert sql.count("), (") == 1  # two rows, one statement
    assert sql.endswith("ON CONFLICT DO NOTHING RETURNING messages.id")


@pytest.mark.integration
@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_postgresql_connections_are_serializable_with_either_driver(pg_url: str, driver: str) -> None:
    url = make_url(pg_url).set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)
    async with SqlStore(url) as store:
        async with store.engine.connect() as conn:
            assert (await conn.execute(text("SHOW transaction_isolation"))).scalar_one() == "serializable"
        ws = Workspace(id=uuid.uuid4(), slug=f"drv-{uuid.uuid4().hex[:16]}", name="D", plan="pro",
                       created_at=datetime.now(UTC))
        msgs = [Message(id=uuid.uuid4(), workspace_id=ws.id, channel_id=ws.id, author_id=ws.id, body=str(i),
                        offset=i * 1000, created_at=ws.created_at) for i in range(1, 4)]

        async def write(uow: UnitOfWork) -> int:
            await uow.workspaces.add(ws)
            return await uow.messages.add_many(msgs + msgs[:2])  # repeats inside one batch are skipped too

        assert await store.run(write) == 3

        async def again(uow: UnitOfWork) -> int:
            return await uow.messages.add_many(msgs)

        assert await store.run(again) == 0
