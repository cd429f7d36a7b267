"""The Alembic migrations build exactly the schema of db/models.py, on SQLite and PostgreSQL, and undo it.

PostgreSQL tests run in a scratch database of their own (created and dropped here), so downgrading never
touches the tables other tests share.  See docs/database.md ("Migrations").
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, make_url, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from db import migrate
from db.models import metadata
from db.store import SqlStore

ROOT = Path(__file__).resolve().parents[2]
HEAD = ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()


@pytest.fixture
async def scratch_pg_url(pg_url: str) -> AsyncIterator[str]:
    name = f"storm_mig_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(pg_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def empty_db_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "scratch_pg_url"))


def _differences(conn: Connection) -> list[object]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, metadata))


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


def _revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


async def test_upgrade_builds_the_models_schema_and_downgrade_removes_it(empty_db_url: str) -> None:
    await migrate.upgrade_async(empty_db_url)
    engine = create_async_engine(empty_db_url)
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_differences) == []
            assert await conn.run_sync(_revision) == HEAD
            assert await conn.run_sync(_tables) == {*metadata.tables, "alembic_version"}
        async with engine.begin() as conn:
            await conn.run_sync(migrate.downgrade)
        async with engine.connect() as conn:
            assert await conn.run_sync(_tables) <= {"alembic_version"}
        async with engine.begin() as conn:  # and back up again
            await conn.run_sync(migrate.upgrade)
        async with engine.connect() as conn:
            assert await conn.run_sync(_differences) == []
    finally:
        await engine.dispose()


async def test_the_comparison_would_notice_a_difference(sqlite_url: str) -> None:
    """Guards the guard: an empty database differs from the models."""
    engine = create_async_engine(sqlite_url)
    try:
        async with engine.connect() as conn:
            differences = await conn.run_sync(_differences)
    finally:
        await engine.dispose()
    assert {d[1].name for d in differences if d[0] == "add_table"} == set(metadata.tables)  # type: ignore[index,attr-defined]


async def test_store_start_creates_the_sqlite_file_and_migrates_once(tmp_path: Path) -> None:
    path = tmp_path / "new" / "storm.db"
    for _ in range(2):  # the second start finds the schema at head and changes nothing
        async with SqlStore(f"sqlite+aiosqlite:///{path}"):
            pass
        assert path.exists()
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with engine.connect() as conn:
            assert await conn.run_sync(_revision) == HEAD
    finally:
        await engine.dispose()


async def test_store_without_create_schema_leaves_the_database_alone(tmp_path: Path) -> None:
    path = tmp_path / "untouched.db"
    async with SqlStore(f"sqlite+aiosqlite:///{path}", create_schema=False):
        pass
    assert not path.exists()


@pytest.mark.parametrize("url", ["postgresql+asyncpg://u@h/db", "cockroachdb+asyncpg://root@h:26257/db"])
def test_offline_ddl_is_portable(url: str) -> None:
    """No PostgreSQL-only features that CockroachDB lacks or that make hot ranges (checked on the DDL
    CockroachDB's dialect renders, since no CockroachDB server runs here)."""
    config = migrate.alembic_config(url)
    config.output_buffer = io.StringIO()
    command.upgrade(config, "head", sql=True)
    ddl = config.output_buffer.getvalue().upper()
    assert ddl.count("CREATE TABLE") == len(metadata.tables) + 1  # + alembic_version
    # Alembic's own bookkeeping (UPDATE alembic_version ... WHERE version_num = ...) is not our DDL
    ddl = "\n".join(s for s in ddl.split(";") if "ALEMBIC_VERSION" not in s)
    for feature in ("CREATE TYPE", "SERIAL", "SEQUENCE", "TRIGGER", " WHERE "):
        assert feature not in ddl, feature


def test_alembic_command_line_from_another_directory(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    env = {**os.environ, "STORM_DATABASE_URL": url}
    alembic = [sys.executable, "-m", "alembic", "-c", str(ROOT / "db" / "alembic.ini")]
    subprocess.run([*alembic, "upgrade", "head"], cwd=tmp_path, env=env, check=True, capture_output=True)
    current = subprocess.run([*alembic, "current"], cwd=tmp_path, env=env, check=True, capture_output=True,
                             text=True)
    assert f"{HEAD} (head)" in current.stdout
