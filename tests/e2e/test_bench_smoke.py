"""Smoke test of `storm bench` (docs/benchmarks.md): tiny runs, checked for shape, not for speed."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

pytestmark = pytest.mark.e2e


def _bench(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-m", "storm_cli", "bench", *args, "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr[-3000:]}"
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"stdout must be exactly one JSON line, got: {proc.stdout!r}"
    return json.loads(lines[0])


def _positive(result: dict, *keys: str) -> None:
    for key in keys:
        value = result[key]
        assert isinstance(value, int | float) and math.isfinite(value) and value > 0, (key, value)


def test_fanout_counts_every_delivery_on_both_servers() -> None:
    result = _bench("fanout", "--subscribers", "20", "--messages", "5")
    for key in ("deliveries", "wall_s", "server_cpu_us_per_delivery", "floor_us_per_delivery", "ratio_to_floor",
                "p50_ms", "p99_ms"):
        assert key in result, key
    assert result["deliveries"] == 20 * 5
    assert result["floor_deliveries"] == 20 * 5
    assert "missing" not in result and "floor_missing" not in result
    _positive(result, "deliveries", "wall_s", "server_cpu_us_per_delivery", "floor_us_per_delivery",
              "ratio_to_floor", "p50_ms", "p99_ms")
    assert result["p50_ms"] <= result["p99_ms"]


def test_idle_measures_memory_per_connection() -> None:
    result = _bench("idle", "--connections", "50")
    assert result["connections"] == 50
    assert result["gateway_connections"] == 50
    _positive(result, "rss_bytes_per_connection", "rss_before", "rss_after")
