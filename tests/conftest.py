"""Shared fixtures.  Database ones: ``sqlite_url``, ``pg_url`` and ``store`` (see docs/database.md,
"What is tested where").

PostgreSQL comes from ``STORM_TEST_PG_URL``, else from a running ``scripts/pg.sh`` cluster.  Without
either, PostgreSQL-backed tests are skipped locally and fail under ``CI=true``: CI must never pass by
skipping them.  The PostgreSQL database is shared between tests (and runs), so every test creates its own
workspaces with unique slugs and ids rather than expecting empty tables.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import pytest

if TYPE_CHECKING:
    from db.store import SqlStore

ROOT = Path(__file__).resolve().parent.parent


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: PostgreSQL tests may not be skipped)", pytrace=False)
    pytest.skip(reason)


def _answers(url: str) -> bool:
    from sqlalchemy import make_url

    parsed = make_url(url)
    try:
        with socket.create_connection((parsed.host or "127.0.0.1", parsed.port or 5432), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'storm.db'}"


@pytest.fixture(scope="session")
def pg_url() -> str:
    url = os.environ.get("STORM_TEST_PG_URL")
    if url:
        return url
    hint = "PostgreSQL not available: run scripts/pg.sh up, or set STORM_TEST_PG_URL"
    try:
        out = subprocess.run(["bash", str(ROOT / "scripts" / "pg.sh"), "url"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        _unavailable(f"{hint} ({exc})")
    url = out.stdout.strip()
    if not _answers(url):
        _unavailable(f"{hint} (nothing answers at {url})")
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[SqlStore]:
    """A started SqlStore with the schema at head, on SQLite (a fresh file) and on PostgreSQL."""
    from db.store import SqlStore

    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    sql_store = SqlStore(url)
    await sql_store.start()
    try:
        yield sql_store
    finally:
        await sql_store.stop()
