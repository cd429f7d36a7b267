"""`storm bench persist` runs end to end and reports what it stored (not how fast): a few hundred messages
through the embedded broker and the persistence workers into SQLite, and into PostgreSQL when available.
See docs/benchmarks.md ("persist")."""

from __future__ import annotations

import json

import pytest

from storm_cli import main as cli
from storm_tools.bench.persist import REQUIRED_KEYS


def _bench(capsys: pytest.CaptureFixture[str], url: str, *extra: str) -> dict[str, object]:
    code = cli.main(["bench", "persist", "--messages", "300", "--channels", "4", "--workers", "2",
                     "--batch", "50", "--database-url", url, "--json", *extra])
    out = capsys.readouterr()
    assert "stored 300/300" in out.err  # progress went to stderr, the JSON alone to stdout
    result: dict[str, object] = json.loads(out.out)
    assert code == 0, result
    return result


@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def test_bench_persist_stores_every_message_once(db: str, request: pytest.FixtureRequest,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    url = str(request.getfixturevalue("sqlite_url" if db == "sqlite" else "pg_url"))
    result = _bench(capsys, url)
    assert set(REQUIRED_KEYS) <= set(result)
    assert (result["messages"], result["stored"], result["duplicates"], result["missing"]) == (300, 300, 0, 0)
    assert (result["batch"], result["workers"], result["broker"], result["database"]) == (50, 2, "memory", db)
    assert isinstance(result["msgs_per_s"], float) and result["msgs_per_s"] > 0
    assert "error" not in result


def test_bench_persist_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="must be > 0"):
        cli.main(["bench", "persist", "--messages", "0", "--database-url", "sqlite+aiosqlite://"])


def test_bench_persist_refuses_a_child_publisher_on_the_memory_broker() -> None:
    with pytest.raises(SystemExit, match="--publisher process needs a broker"):
        cli.main(["bench", "persist", "--broker", "memory", "--publisher", "process",
                  "--database-url", "sqlite+aiosqlite://"])


@pytest.mark.integration
@pytest.mark.parametrize("backlog", [False, True], ids=["overlap", "backlog"])
def test_bench_persist_on_pulsar_publishes_from_a_child_process(
        backlog: bool, pg_url: str, pulsar_urls: tuple[str, str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The default on Pulsar: the publishers run in a child process (as gateways do), the figure covers the
    consumers; every message is still stored exactly once and the child's CPU is reported apart."""
    monkeypatch.setenv("STORM_PULSAR_URL", pulsar_urls[0])
    monkeypatch.setenv("STORM_PULSAR_ADMIN_URL", pulsar_urls[1])
    result = _bench(capsys, pg_url, "--broker", "pulsar", *(["--backlog"] if backlog else []))
    assert (result["messages"], result["stored"], result["duplicates"], result["missing"]) == (300, 300, 0, 0)
    assert result["publisher"] == "process" and result["broker"] == "pulsar"
    assert isinstance(result["publisher_cpu_s"], float) and result["publisher_cpu_s"] > 0
    busy, machine_us = result["machine_busy"], result["machine_cpu_us_per_msg"]
    assert isinstance(busy, float) and 0 < busy <= 1
    assert isinstance(machine_us, float) and machine_us > 0
    by_role = result["cpu_us_per_msg_by_role"]
    assert isinstance(by_role, dict) and set(by_role) == {"consumers", "publisher", "pulsar", "postgres", "total"}
    assert by_role["consumers"] == result["cpu_us_per_msg"]
    assert (by_role["publisher"] is None) == backlog  # with --backlog it published before the clock
