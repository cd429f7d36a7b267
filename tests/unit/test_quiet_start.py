"""`make run` / `storm dev` start quietly (issue 13 item 5): Alembic's INFO lines stay out of the log unless
the application logs at DEBUG, a failing migration still raises, and the access log is a setting."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, text

from db.migrate import upgrade
from gateway.serve import hypercorn_config
from storm.config import Config


def _migrate(caplog: pytest.LogCaptureFixture, level: int) -> list[logging.LogRecord]:
    engine = create_engine("sqlite://")
    with caplog.at_level(level), engine.begin() as conn:  # the root logger at `level`, as `storm` sets it
        caplog.clear()
        upgrade(conn)
    engine.dispose()
    return [r for r in caplog.records if r.name.startswith("alembic")]


def test_migrations_log_nothing_at_info(caplog: pytest.LogCaptureFixture) -> None:
    assert _migrate(caplog, logging.INFO) == []
    assert logging.getLogger("alembic").level == logging.NOTSET  # restored afterwards


def test_migrations_log_their_steps_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    steps = [r.getMessage() for r in _migrate(caplog, logging.DEBUG)]
    assert any("Running upgrade" in m for m in steps)


def test_a_failing_migration_still_raises() -> None:
    engine = create_engine("sqlite://")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE workspaces (x INTEGER)"))  # in the way of the first migration
        with pytest.raises(Exception, match="workspaces"):
            upgrade(conn)
    engine.dispose()


def test_importing_the_migrations_module_logs_nothing() -> None:
    """Alembic logs a line per plugin when imported; db.migrate imports it quietly, when first used."""
    code = ("import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stdout); "
            "import db.migrate, sqlalchemy as sa; e = sa.create_engine('sqlite://'); "
            "c = e.connect(); db.migrate.upgrade(c); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "ok", out.stdout


def test_the_access_log_is_a_setting() -> None:
    assert hypercorn_config(Config.from_env({})).accesslog is None
    on = hypercorn_config(Config.from_env({"STORM_ACCESS_LOG": "true"})).accesslog
    assert isinstance(on, logging.Logger) and on.name == "hypercorn.access" and on.isEnabledFor(logging.INFO)
