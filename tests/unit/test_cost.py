"""`storm cost` (storm_tools/cost.py): the fleet it sizes, its bill, its inputs, and the stormday tfvars.

The checked-in terraform/envs/stormday/fleet.auto.tfvars.json must be exactly what the generator writes,
so the Terraform and the bill describe the same fleet (terraform/README.md, "Sizing").
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from storm_cli.main import main
from storm_tools import cost

ROOT = Path(__file__).resolve().parents[2]


def default_bill(**targets: float) -> cost.Bill:
    cap, assumed = cost.load_capacities()
    return cost.bill(cap, cost.Targets(**targets), cost.load_prices(), assumed,  # type: ignore[arg-type]
                     "storm_tools/capacities/measured.json")


def test_checked_in_stormday_tfvars_is_what_the_generator_writes() -> None:
    checked_in = (ROOT / cost.TFVARS_PATH).read_text()
    assert checked_in == cost.render_tfvars(default_bill()), (
        "regenerate with: storm cost --tfvars terraform/envs/stormday/fleet.auto.tfvars.json")


def test_cli_writes_the_same_tfvars(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "fleet.auto.tfvars.json"
    assert main(["cost", "--tfvars", str(out)]) == 0
    assert out.read_text() == (ROOT / cost.TFVARS_PATH).read_text()
    assert "EUR per hour at the peak" in capsys.readouterr().out


def test_every_role_is_spread_evenly_over_three_zones_with_n_plus_one() -> None:
    b = default_bill()
    cap, _ = cost.load_capacities()
    prices = cost.load_prices()
    busy = cost.vcpus_needed(cap, cost.Targets())
    for r, plan in zip(b.fleet, cost.PLANS, strict=True):
        usable = plan.usable_vcpus or prices["instances"][r.instance_type]["vcpu"]
        assert r.count % 3 == 0 and r.per_zone * 3 == r.count
        # N+1: one instance fewer still keeps every core under the target utilisation
        assert (r.count - 1) * usable * cost.Targets().utilisation >= busy[r.role] - 1e-9, r.role
        assert r.zone_loss_utilisation < 1, r.role
    assert b.survives_zone_loss
    bookies = next(r for r in b.fleet if r.role == "pulsar_bookie")
    assert bookies.per_zone >= 2  # an ensemble of 3 still forms after losing a zone


def test_gateways_follow_the_measured_capacity() -> None:
    base = {r.role: r.count for r in default_bill().fleet}
    doubled = {r.role: r.count for r in default_bill(deliveries_per_s=1_000_000).fleet}
    assert doubled["gateway"] > base["gateway"] * 1.8
    cap, _ = cost.load_capacities()
    slower = dict(cap, gateway_us_per_publish=cap["gateway_us_per_publish"] * 2)
    fleet = cost.size_fleet(slower, cost.Targets(), cost.load_prices())
    assert next(r.count for r in fleet if r.role == "gateway") > base["gateway"] * 1.5


def test_event_total_adds_fleet_hours_and_peak_traffic_hours() -> None:
    b = default_bill(hours=10, peak_hours=3)
    eur = cost.load_prices()["usd_to_eur"]["value"]
    expected = (sum(b.hourly_usd.values()) * 10 + sum(b.transfer_usd_per_peak_hour.values()) * 3) * eur
    assert b.event_eur == pytest.approx(expected, abs=0.02)
    assert b.within_budget == (b.event_eur <= 700)
    assert b.event_eur_if_peak_all_event > b.event_eur
    assert default_bill(budget_eur=1).within_budget is False


def test_json_output_is_one_object(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cost", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["targets"]["connections"] == 100_000 and doc["targets"]["deliveries_per_s"] == 500_000
    assert {r["role"] for r in doc["fleet"]} == {p.role for p in cost.PLANS}
    assert doc["eur_per_hour_at_peak"] > 0 and doc["budget_eur"] == 700


def test_a_storm_day_report_with_capacities_is_accepted(tmp_path: Path) -> None:
    measured = json.loads(cost.DEFAULT_CAPACITIES.read_text())
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"verdict": "pass", "capacities": measured}))
    cap, _ = cost.load_capacities(report)
    assert cap == cost.load_capacities()[0]


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda d: d["capacities"].pop("gateway_us_per_delivery"), "gateway_us_per_delivery' is missing"),
    (lambda d: d["capacities"]["db_us_per_write"].update(value=0), "must be a positive number"),
    (lambda d: d["capacities"]["db_us_per_write"].update(value="fast"), "must be a positive number"),
    (lambda d: d.update(format="other/1"), "not a storm-capacities/1 document"),
    (lambda d: d.pop("format"), "not a storm-capacities/1 document"),
])
def test_bad_capacities_are_clear_errors(tmp_path: Path, mutate, message: str,  # type: ignore[no-untyped-def]
                                         capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(cost.DEFAULT_CAPACITIES.read_text())
    mutate(doc)
    path = tmp_path / "cap.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(cost.CostError, match=message):
        cost.load_capacities(path)
    assert main(["cost", "--from", str(path)]) == 2
    assert "storm cost:" in capsys.readouterr().err


def test_missing_file_and_bad_targets(tmp_path: Path) -> None:
    with pytest.raises(cost.CostError, match="no such file"):
        cost.load_capacities(tmp_path / "nope.json")
    with pytest.raises(cost.CostError, match="peak hours"):
        cost.Targets(peak_hours=30).check()
    with pytest.raises(cost.CostError, match="utilisation"):
        replace(cost.Targets(), utilisation=1.5).check()


def test_every_price_and_capacity_says_where_it_comes_from() -> None:
    prices = cost.load_prices()
    assert prices["region"] == "eu-west-1" and "not read" in prices["caveat"].lower()
    lines = [v for k, v in prices.items() if isinstance(v, dict) and "value" in v] + list(prices["instances"].values())
    for line in lines:
        assert line["source"] and line["as_of"], line
    for key, entry in json.loads(cost.DEFAULT_CAPACITIES.read_text())["capacities"].items():
        assert entry["source"] and isinstance(entry["measured"], bool), key
    assert math.isclose(cost.Targets().publishes_per_s, 50_000)


def test_terraform_readme_quotes_the_current_bill() -> None:
    b = default_bill()
    readme = (ROOT / "terraform" / "README.md").read_text()
    hosts = sum(r.count for r in b.fleet)
    for figure in (f"{b.eur_per_hour_at_peak:.2f} EUR per hour at the peak", f"{b.event_eur:.2f} EUR",
                   f"{b.fleet_usd_per_hour:.2f}", f"Datadog ({hosts} hosts)"):
        assert figure in readme, f"terraform/README.md is stale: {figure!r} (rerun storm cost)"
    for r in b.fleet:
        assert f"{r.count} x {r.instance_type}" in readme, r.role
