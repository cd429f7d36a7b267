"""`storm cluster` supervises (storm_cli/cluster.py): a SIGKILLed gateway is restarted while the other keeps
serving, the restart is logged and the state file follows.  Memory adapters and SQLite, so no service is
needed (tests/e2e/test_cluster.py does the same for start and stop)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from storm_tools.verify import free_ports

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 90.0


def _state(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def _healthy(port: int, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _wait(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_a_killed_gateway_is_restarted_while_the_other_keeps_serving(tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    gw1, gw2, gw3, api, consumers = free_ports(5)
    log = (tmp_path / "cluster.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "storm_cli", "cluster", "--no-services", "--broker", "memory", "--cache", "memory",
         "--database-url", f"sqlite+aiosqlite:///{tmp_path / 'cluster.db'}", "--gateways", "3",
         "--gateway-ports", f"{gw1},{gw2},{gw3}", "--api-port", str(api), "--consumers-port", str(consumers),
         "--state-file", str(state_file)],
        cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdin=subprocess.DEVNULL, stdout=log,
        stderr=subprocess.STDOUT)
    try:
        # "ready": the supervisor itself saw every child answer; a kill before that is a start failure by design
        _wait(lambda: _state(state_file).get("ready") is True and all(
            _healthy(p) for p in (gw1, gw2, gw3, api, consumers)), "the cluster to serve")
        before = {c["name"]: c for c in _state(state_file)["children"]}
        assert [n for n in before if n.startswith("gateway-")] == ["gateway-1", "gateway-2", "gateway-3"]

        os.kill(before["gateway-1"]["pid"], signal.SIGKILL)
        down_seen = False
        deadline = time.monotonic() + TIMEOUT_S
        while True:  # gateway-2 answers every time we look while gateway-1 is down and back
            # a second try: on a loaded machine one health check can be slow without gateway-2 having stopped
            assert _healthy(gw2, 5) or _healthy(gw2, 5), "gateway-2 stopped serving when gateway-1 died"
            down_seen = down_seen or not _healthy(gw1)
            now = {c["name"]: c for c in _state(state_file).get("children", [])}
            if now.get("gateway-1", {}).get("restarts") == 1 and _healthy(gw1):
                break
            assert time.monotonic() < deadline, "gateway-1 was not restarted"
            time.sleep(0.1)

        assert down_seen
        assert now["gateway-1"]["pid"] not in (0, before["gateway-1"]["pid"]) and now["gateway-1"]["last_exit"] == -9
        assert now["gateway-2"]["pid"] == before["gateway-2"]["pid"] and now["gateway-2"]["restarts"] == 0
        assert proc.poll() is None  # the supervisor itself is still there
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    text = (tmp_path / "cluster.log").read_text()
    assert "gateway-1 (pid" in text and "exited with -9; restarting it in 0.5 s (the others keep serving)" in text
    assert "restarted gateway-1" in text and proc.returncode == 0
    assert not state_file.exists()  # removed at stop: no stale topology for the chaos actions
