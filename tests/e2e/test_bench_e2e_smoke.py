"""Smoke test of `storm bench e2e` (storm_tools/bench/e2e.py, docs/benchmarks.md): a tiny run on the real services,
checked for shape and for completeness (every acked message reached every other member), not for speed."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
CONNECTIONS, MEMBERS, RATE, DURATION = 40, 10, 100, 3


def test_e2e_bench_delivers_every_acked_message_and_cleans_up(storm_services_env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "storm_cli", "bench", "e2e", "--connections", str(CONNECTIONS), "--members",
         str(MEMBERS), "--rate", str(RATE), "--duration", str(DURATION), "--warmup", "1", "--json"],
        cwd=ROOT, env=storm_services_env, capture_output=True, text=True, timeout=300)

    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr[-4000:]}"
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout must be exactly one JSON line, got: {proc.stdout!r}"
    result = json.loads(lines[0])
    for key in ("published", "acked", "delivered", "ack_p50_ms", "ack_p99_ms", "deliver_p50_ms", "deliver_p99_ms",
                "expected_deliveries", "missing", "cpu_s", "load_avg_1m"):
        assert key in result, key
    assert result["connected"] == CONNECTIONS
    assert result["published"] == RATE * DURATION  # open loop: the schedule is kept whatever the acks do
    assert 0 < result["acked"] <= result["published"]
    # Every acked message reached each of the other members of its channel.
    assert result["expected_deliveries"] == result["acked"] * (MEMBERS - 1)
    assert result["missing"] == 0
    assert result["delivered"] == result["expected_deliveries"]
    assert 0 < result["ack_p50_ms"] <= result["ack_p99_ms"]
    assert 0 < result["deliver_p50_ms"] <= result["deliver_p99_ms"]
    assert result.get("duplicates", 0) == 0 and result.get("misordered", 0) == 0
    # CPU per acked message for every role, measured over the same window (issue 12), never refused by the
    # bench's own workspace: its limits are above the offered rate, and the output says so.
    per_msg = result["cpu_us_per_msg"]
    assert set(per_msg) == {"gateways", "pulsar", "hazelcast", "consumers", "postgres", "clients", "server_total"}
    assert per_msg["gateways"] > 0 and per_msg["clients"] > 0
    assert per_msg["server_total"] == pytest.approx(
        sum(v for k, v in per_msg.items() if k not in ("clients", "server_total") and v is not None), abs=0.5)
    assert result["cpu_window_s"] >= DURATION
    assert result["limits"]["above_offered"] is True
    assert result["limits"]["workspace_publish_rate"] > RATE
    assert result.get("rejected", 0) == 0
    # The workspace is gone from Pulsar once the bench is over.
    assert result["cleanup"] == "deleted", result["cleanup"]
    admin_url = storm_services_env["STORM_PULSAR_ADMIN_URL"]
    with urllib.request.urlopen(f"{admin_url}/admin/v2/tenants", timeout=10) as response:
        tenants = json.loads(response.read())
    assert result["workspace"] not in tenants


def test_connect_bench_on_the_real_services_with_rs256_tokens(storm_services_env: dict[str, str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "storm_cli", "bench", "connect", "--services", "real", "--connections", "60",
         "--subscribe", "1", "--client-procs", "2", "--json"],
        cwd=ROOT, env=storm_services_env, capture_output=True, text=True, timeout=300)

    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr[-4000:]}"
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout must be exactly one JSON line, got: {proc.stdout!r}"
    result = json.loads(lines[0])
    assert result["connected"] == 60
    assert result["refused"] == {} and result["failed_by_reason"] == {}
    assert result["connects_per_s"] > 0 and result["server_cpu_us_per_connect"] > 0
    assert result["identity"].startswith("Auth0-style RS256")
    assert result["jwks_fetches"] >= 1  # the gateway verified against the bench's JWKS
    assert {"gateways", "pulsar", "hazelcast", "postgres"} <= set(result["cpu_us_per_connect"])
    assert result["cleanup"] == "deleted", result["cleanup"]
