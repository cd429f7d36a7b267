"""Creating and dropping whole PostgreSQL databases (``storm cluster``, ``storm verify``, ``storm bench e2e``
and the real-services tests each get a database of their own).

Both go through one maintenance connection to the server's ``postgres`` database, in autocommit (``CREATE
DATABASE`` cannot run in a transaction).  Names are checked first: they are spliced into DDL, which takes
no bind parameters.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

CLUSTER_DATABASE = "storm_cluster"  # the database `storm cluster` and `storm verify` use on the services' server


def cluster_database_url(pg_url: str, database: str = CLUSTER_DATABASE) -> str:
    """``pg_url`` with its database replaced (credentials kept)."""
    from sqlalchemy import make_url

    return make_url(pg_url).set(database=database).render_as_string(hide_password=False)


@asynccontextmanager
async def _maintenance(url: str, verb: str) -> AsyncIterator[tuple[Any, str]]:
    """(autocommit connection to the server's ``postgres`` database, the checked name of ``url``'s)."""
    from sqlalchemy import make_url
    from sqlalchemy.ext.asyncio import create_async_engine

    target = make_url(url)
    name = target.database or ""
    if not name.replace("_", "").isalnum():
        raise ValueError(f"refusing to {verb} a database named {name!r}")
    engine = create_async_engine(target.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as conn:
            yield conn, name
    finally:
        await engine.dispose()


async def ensure_database(url: str) -> bool:
    """Create the database named in ``url`` unless it exists; whether it was created."""
    from sqlalchemy import text

    async with _maintenance(url, "create") as (conn, name):
        exists = (await conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})).scalar()
        if not exists:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        return not exists


async def create_database(base_url: str, name: str) -> str:
    """Create database ``name`` on the server of ``base_url`` (unless it exists); its URL."""
    from sqlalchemy import make_url

    url = make_url(base_url).set(database=name).render_as_string(hide_password=False)
    await ensure_database(url)
    return url


async def drop_database(url: str) -> None:
    from sqlalchemy import text

    async with _maintenance(url, "drop") as (conn, name):
        await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
