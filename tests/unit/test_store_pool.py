"""The database pool is sized by configuration (docs/database.md, "Connection pool"): a gateway under a
connect ramp ran out of SQLAlchemy's default 5 + 10 connections and its handshakes waited up to 30 s for
one; the size, the overflow and the wait are now settings, and a bad value is refused naming it."""

from __future__ import annotations

import pytest

from db.store import SqlStore
from storm.bootstrap import _build_store
from storm.config import Config, ConfigError

PG = "postgresql+asyncpg://storm:storm@127.0.0.1:1/none"


async def test_the_pool_follows_the_settings() -> None:
    config = Config.from_env({"STORM_DB_POOL_SIZE": "3", "STORM_DB_POOL_OVERFLOW": "7",
                              "STORM_DB_POOL_TIMEOUT_S": "2.5"}, database_url=PG)
    store = _build_store(config)
    assert isinstance(store, SqlStore)
    engine = store._create_engine()  # no connection is opened
    try:
        pool = engine.sync_engine.pool
        assert (pool.size(), pool._max_overflow, pool._timeout) == (3, 7, 2.5)  # type: ignore[attr-defined]
    finally:
        await engine.dispose()


async def test_the_defaults_are_larger_than_sqlalchemys() -> None:
    engine = SqlStore(PG)._create_engine()
    try:
        pool = engine.sync_engine.pool
        assert (pool.size(), pool._max_overflow, pool._timeout) == (10, 10, 10.0)  # type: ignore[attr-defined]
    finally:
        await engine.dispose()


@pytest.mark.parametrize(("env", "name"), [
    ({"STORM_DB_POOL_SIZE": "0"}, "STORM_DB_POOL_SIZE"),
    ({"STORM_DB_POOL_OVERFLOW": "-1"}, "STORM_DB_POOL_OVERFLOW"),
    ({"STORM_DB_POOL_TIMEOUT_S": "0"}, "STORM_DB_POOL_TIMEOUT_S"),
    ({"STORM_HISTORY_SHARE_S": "-1"}, "STORM_HISTORY_SHARE_S"),
])
def test_a_bad_pool_or_share_setting_is_refused_naming_it(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Config.from_env(env)
