"""The benches' own connection to the SQL store's database (bulk set-up and read-back)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection


@asynccontextmanager
async def sql_transaction(database_url: str) -> AsyncIterator[AsyncConnection]:
    """A connection in a transaction on the SQL store's database, for the benches' bulk set-up and read-back.
    A store of its own rather than the services' one: that is a ``Store`` (possibly wrapped, e.g. metered),
    and only the SQL adapter has an engine."""
    from db.store import SqlStore

    async with SqlStore(database_url, create_schema=False) as store, store.engine.begin() as conn:
        yield conn
