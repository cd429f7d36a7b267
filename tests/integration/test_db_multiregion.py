"""The CockroachDB multi-region DDL (db/multiregion.py) and `storm migrate --regions`.

No CockroachDB server exists here, so these tests check the exact statements generated and that nothing is
run on a database that is not CockroachDB.  docs/database.md says what must still be verified on a real
cluster.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine

from db import multiregion
from db.migrate import upgrade_async
from db.multiregion import MultiRegionError
from storm_cli import main as cli

EXPECTED_TWO_REGIONS = [
    'ALTER DATABASE "storm" SET PRIMARY REGION "eu-west1"',
    'ALTER DATABASE "storm" ADD REGION IF NOT EXISTS "eu-central1"',
    'ALTER DATABASE "storm" SURVIVE ZONE FAILURE',
    "ALTER TABLE workspaces SET LOCALITY GLOBAL",
    "ALTER TABLE users SET LOCALITY GLOBAL",
    "ALTER TABLE memberships SET LOCALITY REGIONAL BY ROW",
    "ALTER TABLE channels SET LOCALITY REGIONAL BY ROW",
    "ALTER TABLE channel_members SET LOCALITY REGIONAL BY ROW",
    "ALTER TABLE messages SET LOCALITY REGIONAL BY ROW",
    "ALTER TABLE reactions SET LOCALITY REGIONAL BY ROW",
    "ALTER TABLE read_markers SET LOCALITY REGIONAL BY ROW",
    "ALTER TABLE webhooks SET LOCALITY REGIONAL BY ROW",
    "ALTER TABLE incoming_webhooks SET LOCALITY REGIONAL BY ROW",
    "ALTER TABLE webhook_deliveries SET LOCALITY REGIONAL BY ROW",
]


def test_statements_for_two_regions() -> None:
    assert multiregion.statements("storm", ["eu-west1", "eu-central1"]) == EXPECTED_TWO_REGIONS


def test_region_survival_needs_three_regions() -> None:
    with pytest.raises(MultiRegionError, match="at least 3 regions"):
        multiregion.statements("storm", ["eu-west1", "eu-central1"], survive="region")
    ddl = multiregion.statements("storm", ["eu-west1", "eu-central1", "us-east1"], survive="region")
    assert ddl[:4] == [
        'ALTER DATABASE "storm" SET PRIMARY REGION "eu-west1"',
        'ALTER DATABASE "storm" ADD REGION IF NOT EXISTS "eu-central1"',
        'ALTER DATABASE "storm" ADD REGION IF NOT EXISTS "us-east1"',
        'ALTER DATABASE "storm" SURVIVE REGION FAILURE',
    ]


def test_every_table_of_the_schema_gets_a_locality() -> None:
    from db.models import metadata

    assert set(multiregion.GLOBAL_TABLES) | set(multiregion.REGIONAL_BY_ROW_TABLES) == set(metadata.tables)


@pytest.mark.parametrize(("regions", "message"), [
    ("", "at least one region"),
    ("eu-west1,eu-west1", "listed twice"),
    ('eu-west1,"; DROP TABLE users; --', "not a CockroachDB region name"),
    ("EU West", "not a CockroachDB region name"),
])
def test_bad_region_lists_are_refused(regions: str, message: str) -> None:
    with pytest.raises(MultiRegionError, match=message):
        multiregion.parse_regions(regions)


def test_bad_database_name_and_survival_goal_are_refused() -> None:
    with pytest.raises(MultiRegionError, match="plain identifier"):
        multiregion.statements('storm"; DROP', ["eu-west1"])
    with pytest.raises(MultiRegionError, match="survival goal"):
        multiregion.statements("storm", ["eu-west1"], survive="node")


class _FakeCockroachConnection:
    """Records what apply() would send; answers current_database()."""

    class dialect:  # mimics Connection.dialect
        name = "cockroachdb"

    def __init__(self) -> None:
        self.sent: list[str] = []

    def execute(self, statement: Any) -> Any:
        self.sent.append(str(statement))
        outer = self

        class _Result:
            def scalar_one(self) -> str:
                assert outer.sent == ["SELECT current_database()"]
                return "storm"

        return _Result()


def test_apply_runs_the_statements_in_order_on_cockroachdb() -> None:
    conn = _FakeCockroachConnection()
    assert multiregion.apply(conn, ["eu-west1", "eu-central1"]) == EXPECTED_TWO_REGIONS
    assert conn.sent == ["SELECT current_database()", *EXPECTED_TWO_REGIONS]


def test_apply_refuses_other_databases(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with engine.connect() as conn, pytest.raises(MultiRegionError, match="CockroachDB-only"):
            multiregion.apply(conn, ["eu-west1"])
    finally:
        engine.dispose()


async def test_upgrade_with_regions_refuses_before_touching_another_database(tmp_path: Path) -> None:
    db = tmp_path / "untouched.db"
    with pytest.raises(MultiRegionError, match="cockroachdb"):
        await upgrade_async(f"sqlite+aiosqlite:///{db}", regions=["eu-west1"])
    assert not db.exists()


def test_migrate_dry_run_prints_the_ddl(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STORM_DATABASE_URL", "cockroachdb+asyncpg://root@127.0.0.1:9/storm")
    assert cli.main(["migrate", "--regions", "eu-west1,eu-central1", "--dry-run"]) == 0
    assert capsys.readouterr().out.splitlines() == [s + ";" for s in EXPECTED_TWO_REGIONS]


def test_migrate_with_regions_on_sqlite_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("STORM_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
    assert cli.main(["migrate", "--regions", "eu-west1"]) == 2
    err = capsys.readouterr().err
    assert "storm migrate: --regions needs a cockroachdb" in err
    assert not (tmp_path / "m.db").exists()


def test_migrate_dry_run_needs_a_cockroachdb_url(monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("STORM_DATABASE_URL", "postgresql+asyncpg://u:p@127.0.0.1:9/storm")
    assert cli.main(["migrate", "--regions", "eu-west1", "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "needs a cockroachdb" in captured.err
