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


def test_connect_opens_authenticates_subscribes_and_holds() -> None:
    result = _bench("connect", "--connections", "120", "--subscribe", "1", "--client-procs", "2",
                    "--hold", "2", "--ping-s", "0.5")
    assert result["connected"] == 120
    assert result["refused"] == {} and result["failed_by_reason"] == {}
    _positive(result, "connects_per_s", "server_cpu_us_per_connect", "setup_p50_ms", "setup_p99_ms",
              "setup_max_ms", "client_cpu_us_per_connect", "handshake_span_s")
    assert result["setup_p50_ms"] <= result["setup_p99_ms"] <= result["setup_max_ms"]
    assert result["server_cpu_us_per_connect"] == result["cpu_us_per_connect"]["gateways"]
    assert result["client_procs"] == 2 and result["subscribe"] == 1
    assert result["identity"].startswith("dev tokens")
    # held with pings: nothing closed by the server, every connection answered
    assert result["still_open"] == 120 and result["closed_by_server"] == {}
    assert result["pongs"] >= 120
    assert "gateways" in result["hold_cores"]


def test_connect_classifies_setup_failures_by_reason() -> None:
    from storm_tools.bench.connect import Refused, classify, failed
    from storm_tools.bench.wsclient import WebSocketError

    assert classify(Refused("unauthorized", "bad token")) == ("unauthorized", "bad token", True)
    assert classify(WebSocketError("handshake refused: b'HTTP/1.1 429 Too Many Requests'"))[::2] == ("http_429", True)
    assert classify(TimeoutError())[::2] == ("timeout", False)
    assert classify(ConnectionRefusedError(111, "refused"))[::2] == ("connection_refused", False)
    assert classify(ConnectionError("closed during setup (code 4002)"))[::2] == ("closed_4002", False)
    assert classify(OSError(99, "Cannot assign requested address"))[::2] == ("eaddrnotavail", False)
    ok = {"connected": 10, "refused": {}, "failed_by_reason": {}}
    assert not failed(ok)
    assert failed({**ok, "refused": {"http_503": 1}})
    assert failed({**ok, "failed_by_reason": {"timeout": 1}})
    assert failed({**ok, "closed_by_server": {"4002": 1}})


def test_connect_counts_a_full_gateways_503_as_a_refusal_not_a_cut_socket() -> None:
    """A gateway at STORM_MAX_CONNECTIONS answers 503: the bench reports it as that answer (it used to say
    "closed during setup (code None)" and leave the 503 in a future nobody read)."""
    import os

    proc = subprocess.run(
        [sys.executable, "-m", "storm_cli", "bench", "connect", "--connections", "80", "--client-procs", "1",
         "--json"], capture_output=True, text=True, timeout=120, env={**os.environ, "STORM_MAX_CONNECTIONS": "50"})
    assert proc.returncode == 1, proc.stderr[-2000:]  # refusals fail the run
    result = json.loads(proc.stdout)
    assert result["connected"] == 50 and result["refused"] == {"http_503": 30} and result["failed_by_reason"] == {}
    assert "maximum of connections" in result["first_error"]  # the server's reason, not only its status
    assert "never retrieved" not in proc.stderr


def test_connect_refuses_bad_arguments_clearly() -> None:
    proc = subprocess.run([sys.executable, "-m", "storm_cli", "bench", "connect", "--subscribe", "4"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "--subscribe <= 3" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "storm_cli", "bench", "connect", "--identity", "rs256"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "--identity dev" in proc.stderr
