"""`storm bench store` runs on SQLite and PostgreSQL and reports every case (its shape, never its speed).
See docs/benchmarks.md ("storm bench store")."""

from __future__ import annotations

import json

import pytest

from storm_cli import main as cli
from storm_tools.bench.store import BATCHES, REQUIRED_KEYS


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def test_bench_store_reports_each_case_per_unit_of_work(db: str, request: pytest.FixtureRequest,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    url = str(request.getfixturevalue("sqlite_url" if db == "sqlite" else "pg_url"))
    code = cli.main(["bench", "store", "--reps", "3", "--database-url", url, "--json"])
    out = capsys.readouterr()
    result = json.loads(out.out)  # the JSON alone on stdout, progress on stderr
    assert code == 0, result
    assert set(REQUIRED_KEYS) <= set(result) and result["reps"] == 3
    assert result["database"].startswith(db)
    cases = {"read", "read_only", *(f"read_states_{n}" for n in BATCHES), "first_sight_1", "first_sight_16"}
    assert set(result["cpu_us"]) == cases == set(result["wall_us"])
    assert all(v > 0 for v in result["cpu_us"].values())
    assert "read_states_64:" in out.err


def test_bench_store_refuses_a_bad_rep_count(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="--reps must be >= 1"):
        cli.main(["bench", "store", "--reps", "0"])


def test_bench_store_says_which_database_it_cannot_reach(unused_tcp_port: int) -> None:
    url = f"postgresql+asyncpg://storm:secret@127.0.0.1:{unused_tcp_port}/nothing"
    with pytest.raises(SystemExit) as stopped:
        cli.main(["bench", "store", "--reps", "1", "--database-url", url])
    message = str(stopped.value)
    assert f"cannot reach the database at postgresql+asyncpg://storm:***@127.0.0.1:{unused_tcp_port}/nothing" in message
    assert "secret" not in message and "scripts/pg.sh up" in message
