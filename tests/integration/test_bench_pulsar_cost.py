"""Shape test of storm_tools/bench/pulsar_cost.py (docs/benchmarks.md): a tiny run on the live Pulsar, never
timed; its tenant is gone after."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("batching_ms", [0, 5])
def test_pulsar_cost_prints_its_figures_and_cleans_up(storm_services_env: dict[str, str], batching_ms: int) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "storm_tools.bench.pulsar_cost", "--topics", "3", "--rate", "60", "--duration", "1",
         "--warmup", "0.5", "--batching-delay-ms", str(batching_ms), "--json"],
        cwd=ROOT, env=storm_services_env, capture_output=True, text=True, timeout=180)

    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr[-3000:]}"
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    result = json.loads(lines[0])
    assert result["acked"] == 60  # every message of the window got its receipt
    assert result["entries"] >= 1 and result["msgs_per_entry"] >= 1.0
    if batching_ms == 0:
        assert result["msgs_per_entry"] == 1.0  # without batching every message is its own entry
    for key in ("pulsar_us_per_msg", "pulsar_us_per_msg_without_jit", "jit_cpu_s"):
        assert key in result
    assert result["cleanup"] == "deleted"
    tenants = httpx.get(f"{storm_services_env['STORM_PULSAR_ADMIN_URL']}/admin/v2/tenants", timeout=10).json()
    assert result["tenant"].startswith("pcost-") and result["tenant"] not in tenants
