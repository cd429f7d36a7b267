"""Two chaos experiments for real, through Chaos Toolkit's `chaos run` (chaos-experiments/README.md): a gateway
SIGKILLed under load, and +200 ms on every link to PostgreSQL through Toxiproxy.

`storm chaos run` starts its own `storm cluster` (two gateways, the API and the consumers, each pointed at its
Toxiproxy proxies) on a database of its own, drives 40 SDK clients in channels of 10 through each experiment,
and stops everything it started; this test reads the journals Chaos Toolkit wrote and the verdicts beside
them.  Needs PostgreSQL, Pulsar, Hazelcast and Toxiproxy (`scripts/services.sh up all`): skipped locally when
one is missing, failed under CI=true.  About three minutes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = ("gateway-sigkill", "latency-postgres")
BUDGET_S = 420


def _journal(report: Path, name: str) -> dict[str, Any]:
    return dict(json.loads((report / name / "journal.json").read_text()))


def test_gateway_sigkill_and_postgres_latency_hold_through_chaos_run(all_services_env: dict[str, str]) -> None:
    # in reports/ (not pytest's basetemp, which other runs rotate away): the journals are the evidence
    report = ROOT / "reports" / "chaos" / f"test-{uuid.uuid4().hex[:8]}"
    run = subprocess.run(
        [sys.executable, "-m", "storm_cli", "chaos", "run", *EXPERIMENTS, "--no-services", "--connections", "40",
         "--duration", "30", "--report", str(report), "--experiment-timeout", "240"],
        cwd=ROOT, env=all_services_env, capture_output=True, text=True, timeout=BUDGET_S, check=False)
    cluster_log = report / "cluster.log"
    tail = (f"stderr:\n{run.stderr[-4000:]}\nstdout:\n{run.stdout[-2000:]}\ncluster.log:\n"
            + (cluster_log.read_text(errors="replace")[-6000:] if cluster_log.exists() else "(none)"))

    summary = json.loads((report / "summary.json").read_text())
    if [row["experiment"] for row in summary["experiments"]] != list(EXPERIMENTS):
        pytest.fail(f"not every experiment ran; report {report}\n{tail}", pytrace=False)
    for name in EXPERIMENTS:
        journal = _journal(report, name)
        states = journal.get("steady_states") or {}
        held = (journal["status"], journal["deviated"], (states.get("before") or {}).get("steady_state_met"),
                (states.get("after") or {}).get("steady_state_met"))
        if held != ("completed", False, True, True):
            verdicts = {phase: (report / name / f"verdict-{phase}.json") for phase in ("before", "after")}
            shown = {k: json.loads(v.read_text()).get("slos") if v.exists() else None for k, v in verdicts.items()}
            pytest.fail(f"{name}: (status, deviated, before met, after met) = {held}; report {report}\n"
                        f"SLO verdicts: {json.dumps(shown)[:4000]}\nrun: {json.dumps(journal.get('run'))[:3000]}\n"
                        f"{tail}", pytrace=False)
        assert [r["status"] for r in journal["run"]] == ["succeeded"] * len(journal["run"]), (name, journal["run"])
        verdict = json.loads((report / name / "verdict-after.json").read_text())
        figures = verdict["figures"]
        assert figures["acked"] > 0 and figures["acked"] == figures["published"], (name, figures)
        assert (figures["lost"], figures["duplicates"], figures["inversions"], figures["not_stored"]) == (0, 0, 0, 0)
        assert figures["database_checked"] and figures["faults"], (name, figures)
        assert {v["slo"] for v in verdict["slos"]} >= {"publish_ack_p99", "delivery_p99", "acked_delivered"}
    assert run.returncode == 0, tail

    kill = {r["activity"]["name"]: r for r in _journal(report, "gateway-sigkill")["run"]}["sigkill-gateway-1"]
    assert kill["output"]["killed_pid"] > 0 and kill["output"]["serving_again_after_s"] < 60
    assert json.loads((report / "gateway-sigkill" / "traffic.json").read_text())["reconnects"] >= 20  # half of 40
    toxic = {r["activity"]["name"]: r for r in _journal(report, "latency-postgres")["run"]}["add-200ms-to-pg"]
    assert toxic["output"]["attributes"] == {"latency": 200, "jitter": 20} and len(toxic["output"]["proxies"]) == 4
    assert "| gateway-sigkill | held |" in (report / "summary.md").read_text()
