"""Alembic environment for the STORM schema.  See docs/database.md ("Migrations").

Three ways in:

* an injected connection (``config.attributes["connection"]``, set by :func:`db.migrate.upgrade`): run in
  the caller's transaction; this is how ``SqlStore.start()`` migrates;
* online from the command line: open an engine on the URL (async drivers through ``asyncio.run``);
* offline (``--sql``): print the DDL for the URL's dialect without connecting.

The URL is ``sqlalchemy.url`` when set (``db.migrate.alembic_config(url)``), else ``STORM_DATABASE_URL``,
else STORM's default database.
"""

from __future__ import annotations

import asyncio
import logging.config
import os

from alembic import context
from sqlalchemy import create_engine, make_url
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from db.models import metadata

config = context.config
DEFAULT_URL = "sqlite+aiosqlite:///storm.db"  # storm.config.Config.database_url


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or os.environ.get("STORM_DATABASE_URL") or DEFAULT_URL


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        # SQLite alters tables by copying them; later migrations need batch mode there.
        render_as_batch=connection.dialect.name == "sqlite",
    )


def run_with_connection(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True,
                      dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.run_sync(run_with_connection)
    finally:
        await engine.dispose()


def run_online() -> None:
    injected = config.attributes.get("connection")
    if injected is not None:
        run_with_connection(injected)
        return
    if config.config_file_name is not None:  # the command line: log like alembic usually does
        logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)
    url = make_url(_url())
    if url.get_dialect().is_async:
        asyncio.run(_run_async(url.render_as_string(hide_password=False)))
        return
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            run_with_connection(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
