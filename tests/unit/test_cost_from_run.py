"""`storm cost --from REPORT` (storm_tools/cost.py + storm_tools/day/capacity.py): the bill sized from the
capacities a `storm day` run measured, saying which figures came from the run and which from the defaults
(docs/storm-day.md, "The bill").  The run is the synthetic one of tests/support/day_fixture.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from storm_cli.main import main
from storm_tools import cost
from storm_tools.day import report
from tests.support import day_fixture as fx

FROM_RUN = ["consumer_us_per_message", "db_us_per_write", "gateway_bytes_per_connection", "gateway_us_per_publish",
            "hazelcast_us_per_publish", "pulsar_us_per_publish"]


def test_a_run_folder_without_report_is_derived_from_its_files(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    folder = fx.write_run(tmp_path / "run")
    assert main(["cost", "--from", str(folder), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["capacities_from_run"] == FROM_RUN
    assert doc["run_figures"]["publishes_per_s_per_pulsar_core"] == 250.0
    assert doc["run_figures"]["connections_per_gib"] == round(2**30 / fx.BYTES_PER_CONNECTION)
    assert doc["targets"]["connections"] == 100_000 and doc["budget_eur"] == 700
    # the assumed figures are still the defaults' unmeasured ones
    assert any(a.startswith("pulsar_broker_share:") for a in doc["assumptions"])


def test_the_run_figures_size_the_fleet(tmp_path: Path) -> None:
    """The fixture's Pulsar burns 4 000 us per publish (the default: 140): its brokers and bookies grow."""
    folder = fx.write_run(tmp_path / "run")
    cap, _ = cost.load_capacities(folder)
    assert cap["pulsar_us_per_publish"] == 4000.0
    default, _ = cost.load_capacities()
    prices = cost.load_prices()
    run_fleet = {r.role: r.count for r in cost.size_fleet(cap, cost.Targets(), prices)}
    default_fleet = {r.role: r.count for r in cost.size_fleet(default, cost.Targets(), prices)}
    assert run_fleet["pulsar_bookie"] > 5 * default_fleet["pulsar_bookie"]


def test_a_report_json_and_its_folder_give_the_same_bill(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = fx.write_run(tmp_path / "run")
    report.write_report(folder, plots=False, progress=lambda _m: None)
    assert main(["cost", "--from", str(folder / "report.json"), "--json"]) == 0
    from_json = json.loads(capsys.readouterr().out)
    assert main(["cost", "--from", str(folder), "--json"]) == 0
    from_folder = json.loads(capsys.readouterr().out)
    assert from_json["fleet"] == from_folder["fleet"] and from_json["event_eur"] == from_folder["event_eur"]
    assert from_json["capacities_from_run"] == FROM_RUN


def test_the_table_says_which_figures_came_from_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = fx.write_run(tmp_path / "run")
    assert main(["cost", "--from", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "EUR per hour at the peak" in out and "the 700 EUR budget" in out
    assert "from the run (38 s of steady window): " + ", ".join(FROM_RUN) in out
    assert "from the defaults (measured.json): " in out and "pulsar_broker_share" in out.split("from the defaults")[1]
    assert "publishes per s per pulsar core 250, " in out


def test_the_default_bill_names_no_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cost", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["capacities_from_run"] == [] and doc["run_figures"] == {}


def test_a_folder_that_is_not_a_run_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = fx.write_run(tmp_path / "run", skip=("timeline.jsonl",))
    with pytest.raises(cost.CostError, match=r"not a storm day run folder: timeline\.jsonl: missing"):
        cost.load_capacities(folder)
    assert main(["cost", "--from", str(folder)]) == 2
    assert "timeline.jsonl: missing" in capsys.readouterr().err
