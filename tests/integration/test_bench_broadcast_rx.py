"""Shape test of storm_tools/bench/broadcast_rx.py (docs/benchmarks.md): a tiny run on the live Pulsar, never
timed; every published record is received once, and the workspace is gone after."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]


def test_broadcast_rx_counts_every_record_and_cleans_up(storm_services_env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "storm_tools.bench.broadcast_rx", "--channels", "3", "--rate", "60", "--duration",
         "1", "--json"],
        cwd=ROOT, env=storm_services_env, capture_output=True, text=True, timeout=180)

    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr[-3000:]}"
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    result = json.loads(lines[0])
    assert result["published"] == 60 and result["received"] == 60
    assert result["cpu_us_per_record"] > 0
    tenants = httpx.get(f"{storm_services_env['STORM_PULSAR_ADMIN_URL']}/admin/v2/tenants", timeout=10).json()
    assert result["workspace"].startswith("rx-") and result["workspace"] not in tenants
