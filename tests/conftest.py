"""Shared fixtures.  Database ones: ``sqlite_url``, ``pg_url``, ``store`` (every Store adapter: memory, SQLite,
PostgreSQL) and ``sql_store`` (the SQL adapter on SQLite and PostgreSQL); see docs/database.md, "What is
tested where".

PostgreSQL comes from ``STORM_TEST_PG_URL``, else from a running ``scripts/pg.sh`` cluster.  Without
either, PostgreSQL-backed tests are skipped locally and fail under ``CI=true``: CI must never pass by
skipping them.  The PostgreSQL database is shared between tests (and runs), so every test creates its own
workspaces with unique slugs and ids rather than expecting empty tables.

Pulsar and Hazelcast ones: ``pulsar_urls`` (service URL, admin URL) and ``hazelcast_members``, from
``STORM_TEST_PULSAR_URL`` / ``STORM_TEST_PULSAR_ADMIN_URL`` / ``STORM_TEST_HAZELCAST_MEMBERS`` (printed by
``scripts/services.sh env``; defaults: the ports ``scripts/services.sh up`` uses), ``toxiproxy_url``
(``STORM_TEST_TOXIPROXY_URL``), ``storm_services_env`` and ``all_services_env`` (the environment of a child
``storm`` command pointed at them), with the same rule: skipped
locally when the service does not answer, failed under ``CI=true``.  See docs/operations.md.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.ci import unavailable

if TYPE_CHECKING:
    from db.store import SqlStore
    from storm.ports.store import Store

ROOT = Path(__file__).resolve().parent.parent


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
        unavailable(f"{hint} ({exc})", needed_by="PostgreSQL")
    url = out.stdout.strip()
    if not _answers(url):
        unavailable(f"{hint} (nothing answers at {url})", needed_by="PostgreSQL")
    return url


async def _started_sql_store(request: pytest.FixtureRequest, backend: str) -> AsyncIterator[SqlStore]:
    from db.store import SqlStore

    url = request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url")
    sql_store = SqlStore(url)
    await sql_store.start()
    try:
        yield sql_store
    finally:
        await sql_store.stop()


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[Store]:
    """A started Store of every adapter: the memory store, and the SqlStore with the schema at head on SQLite
    (a fresh file) and on PostgreSQL.  The store contract (tests/contract/test_store_contract.py) runs on it."""
    if request.param == "memory":
        from storm.adapters.memory_store import MemoryStore

        async with MemoryStore() as memory_store:
            yield memory_store
        return
    async for sql_store in _started_sql_store(request, request.param):
        yield sql_store


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
async def sql_store(request: pytest.FixtureRequest) -> AsyncIterator[SqlStore]:
    """The SQL adapter alone, for what only it has (its engine, its tables)."""
    async for started in _started_sql_store(request, request.param):
        yield started


# --- Pulsar and Hazelcast (started by scripts/services.sh up; see docs/operations.md) ---


def _tcp_answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _host_port(address: str, default_port: int) -> tuple[str, int]:
    """``host:port`` (or a ``scheme://host:port[/...]`` URL) -> (host, port)."""
    from urllib.parse import urlsplit

    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    return parts.hostname or "127.0.0.1", parts.port or default_port


@pytest.fixture(scope="session")
def pulsar_urls() -> tuple[str, str]:
    """(service_url, admin_url) of a running Pulsar, after checking the broker reports itself healthy."""
    import urllib.request

    service_url = os.environ.get("STORM_TEST_PULSAR_URL", "pulsar://127.0.0.1:6650")
    admin_url = os.environ.get("STORM_TEST_PULSAR_ADMIN_URL", "http://127.0.0.1:8080").rstrip("/")
    hint = "Pulsar not available: run scripts/services.sh up pulsar, or set STORM_TEST_PULSAR_URL/_ADMIN_URL"
    if not _tcp_answers(*_host_port(service_url, 6650)):
        unavailable(f"{hint} (nothing answers at {service_url})", needed_by="Pulsar")
    health = f"{admin_url}/admin/v2/brokers/health"
    try:
        with urllib.request.urlopen(health, timeout=5) as response:
            body = response.read().decode().strip()
    except OSError as exc:
        unavailable(f"{hint} ({health}: {exc})", needed_by="Pulsar")
    if body != "ok":
        unavailable(f"{hint} ({health} answered {body!r}, not 'ok')", needed_by="Pulsar")
    return service_url, admin_url


@pytest.fixture(scope="session")
def hazelcast_members() -> str:
    """``host:port`` of a running Hazelcast member (cluster name ``storm``)."""
    members = os.environ.get("STORM_TEST_HAZELCAST_MEMBERS", "127.0.0.1:5701")
    hint = "Hazelcast not available: run scripts/services.sh up hazelcast, or set STORM_TEST_HAZELCAST_MEMBERS"
    first = members.split(",")[0].strip()
    if not _tcp_answers(*_host_port(first, 5701)):
        unavailable(f"{hint} (nothing answers at {first})", needed_by="Hazelcast")
    return members


@pytest.fixture(scope="session")
def toxiproxy_url() -> str:
    """The HTTP API of a running Toxiproxy (the chaos experiments' proxy), from ``STORM_TEST_TOXIPROXY_URL``."""
    import urllib.error
    import urllib.request

    url = os.environ.get("STORM_TEST_TOXIPROXY_URL", "http://127.0.0.1:8474")
    try:
        with urllib.request.urlopen(f"{url}/version", timeout=5):  # nosec B310 - loopback test service
            return url
    except (urllib.error.URLError, OSError) as exc:
        unavailable(f"Toxiproxy not available at {url} ({exc}): run scripts/services.sh up toxiproxy",
                    needed_by="Toxiproxy")


@pytest.fixture
def storm_services_env(pg_url: str, pulsar_urls: tuple[str, str], hazelcast_members: str) -> dict[str, str]:
    """This process's environment plus the ``STORM_*`` settings that point a ``storm`` command run as a child
    (``storm bench e2e|connect|reconnect``) at the real services."""
    return {**os.environ, "STORM_DATABASE_URL": pg_url, "STORM_PULSAR_URL": pulsar_urls[0],
            "STORM_PULSAR_ADMIN_URL": pulsar_urls[1], "STORM_HAZELCAST_MEMBERS": hazelcast_members}


@pytest.fixture
def all_services_env(pg_url: str, pulsar_urls: tuple[str, str], hazelcast_members: str,
                     toxiproxy_url: str) -> dict[str, str]:
    """This process's environment plus every real service's address, for a ``storm`` command run as a child
    (``storm chaos run --no-services``, ``storm day --no-services``)."""
    return {**os.environ, "STORM_TEST_PG_URL": pg_url, "STORM_TEST_PULSAR_URL": pulsar_urls[0],
            "STORM_TEST_PULSAR_ADMIN_URL": pulsar_urls[1], "STORM_TEST_HAZELCAST_MEMBERS": hazelcast_members,
            "STORM_TEST_TOXIPROXY_URL": toxiproxy_url}
