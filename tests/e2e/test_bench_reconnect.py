"""Shape test of `storm bench reconnect` (storm_tools/bench/reconnect.py, docs/benchmarks.md "Reconnect storm"):
a tiny storm on the real services, checked for shape and completeness (every dropped client resumed on the
survivor, no acked message lost), never for speed (the 10 s target is the bench's, not the suite's)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]


def test_reconnect_bench_kills_the_busiest_gateway_and_every_dropped_client_resumes(
        storm_services_env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "storm_cli", "bench", "reconnect", "--connections", "60", "--gateways", "2",
         "--sample-channels", "2", "--settle-timeout", "90", "--json"],
        cwd=ROOT, env=storm_services_env, capture_output=True, text=True, timeout=420)

    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout must be one JSON line; exit {proc.returncode}\n{proc.stderr[-4000:]}"
    result = json.loads(lines[0])
    assert proc.returncode == 0, f"exit {proc.returncode}: {result}\n{proc.stderr[-3000:]}"
    assert result["connected"] == 60 and result["initial_failed"] == {}
    assert result["killed"] in result["by_gateway"]
    assert result["killed_held"] == max(result["by_gateway"].values()) > 0
    # every client of the killed gateway dropped and came back, and only they (the survivor kept its own)
    assert result["dropped"] == result["killed_held"] == result["resumed"]
    assert result["not_resumed"] == 0 and result["readmit_all_s"] is not None
    assert 0 < result["readmit_p50_ms"] <= result["readmit_p99_ms"] <= result["readmit_all_s"] * 1000 + 10
    assert result["attempts"] >= result["dropped"]
    assert isinstance(result["refused_by_reason"], dict) and result["undocumented_refusals"] == {}
    assert result["acked"] > 0 and result["lost"] == 0 and result["duplicates"] == 0 and result["inversions"] == 0
    assert result["cleanup"] == "deleted"


def test_loss_is_scored_per_member_of_each_sampled_channel() -> None:
    from storm_tools.bench.reconnect import failed, score_loss

    acked = {"c1": [10, 20, 30]}
    members = {"c1": ["0", "1"]}
    assert score_loss(acked, members, {"0": [10, 20, 30], "1": [10, 20, 30]}) == \
        {"lost": 0, "duplicates": 0, "inversions": 0}
    assert score_loss(acked, members, {"0": [10, 30, 20, 20], "1": [10]}) == \
        {"lost": 2, "duplicates": 1, "inversions": 1}
    ok = {"connections": 10, "connected": 10, "not_resumed": 0, "lost": 0, "undocumented_refusals": {},
          "initial_failed": {}}
    assert not failed(ok)
    assert failed({**ok, "not_resumed": 1}) and failed({**ok, "lost": 1})
    assert failed({**ok, "undocumented_refusals": {"forbidden": 1}}) and failed({**ok, "connected": 9})
