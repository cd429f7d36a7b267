"""Run the Alembic migrations from code.  See docs/database.md ("Migrations").

``SqlStore.start()`` calls :func:`upgrade` on a connection of its own engine (``conn.run_sync``), so a new
SQLite file is created and brought to head on first run.  The migration scripts are found next to this
module, not through the current directory, so this works from an installed package and any CWD.  The
command line works too: ``STORM_DATABASE_URL=… alembic -c db/alembic.ini upgrade head``.
``storm migrate --regions …`` adds CockroachDB's multi-region DDL after the upgrade (db/multiregion.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import make_url
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from db import multiregion

if TYPE_CHECKING:  # Alembic is imported when first used, quietly (see _quiet): it logs while importing
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config for our migrations; ``url`` is used when no connection is injected (offline SQL
    generation, or env.py opening its own engine)."""
    # No ini file: embedded upgrades must not reconfigure the application's logging.
    with _quiet():
        from alembic.config import Config
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # ConfigParser interpolation
    return config


def upgrade(sync_connection: Connection, revision: str = "head") -> None:
    """Upgrade the database behind ``sync_connection`` (use with ``AsyncConnection.run_sync``).  Runs in
    the connection's transaction; the caller commits."""
    config = alembic_config()
    config.attributes["connection"] = sync_connection
    with _quiet():
        from alembic import command

        command.upgrade(config, revision)


@contextmanager
def _quiet() -> Iterator[None]:
    """Alembic logs every step at INFO (and a line per plugin when imported), which at each start-up is noise:
    let only its warnings and errors through (a failing migration raises anyway), unless the application
    logs at DEBUG (``storm -v``)."""
    log = logging.getLogger("alembic")
    if log.getEffectiveLevel() <= logging.DEBUG:
        yield
        return
    previous = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(previous)


def downgrade(sync_connection: Connection, revision: str = "base") -> None:
    config = alembic_config()
    config.attributes["connection"] = sync_connection
    from alembic import command

    command.downgrade(config, revision)


async def upgrade_async(url: str, *, regions: Sequence[str] = (), survive: str = "zone") -> list[str]:
    """Upgrade the database at ``url`` to head with a short-lived engine of its own.  With ``regions``
    (CockroachDB only: refused before anything runs on another database), then apply the multi-region DDL
    of :mod:`db.multiregion`, each statement in its own implicit transaction; returns those statements."""
    if regions:
        backend = make_url(url).get_backend_name()
        if backend != "cockroachdb":
            raise multiregion.MultiRegionError(
                f"--regions needs a cockroachdb+asyncpg:// or cockroachdb+psycopg:// URL, not {backend}")
        multiregion.statements("check", regions, survive=survive)  # validate before touching the database
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(upgrade)
        if not regions:
            return []
        async with engine.connect() as conn:
            auto = await conn.execution_options(isolation_level="AUTOCOMMIT")
            return await auto.run_sync(lambda sync: multiregion.apply(sync, regions, survive=survive))
    finally:
        await engine.dispose()
