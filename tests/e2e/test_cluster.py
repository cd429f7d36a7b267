"""`storm cluster` runs each role as its own process and stops them all by PID (storm_cli/cluster.py).

These run on the memory adapters and a SQLite file (`--no-services --broker memory --cache memory`) so they
need no service; the Pulsar/Hazelcast/PostgreSQL wiring is what `make run-cluster` adds on top (see
docs/operations.md).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from storm_tools.verify import free_ports

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 40.0
ROW = re.compile(r"^\s+(gateway-\d|api|consumers)\s+pid (\d+)\s+.*?(?:https?|ws)://127\.0\.0\.1:(\d+)")


def _cluster(tmp_path: Path, ports: list[int]) -> subprocess.Popen[str]:
    gw1, gw2, api, consumers = ports
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "storm_cli", "cluster", "--no-services", "--broker", "memory", "--cache", "memory",
         "--database-url", f"sqlite+aiosqlite:///{tmp_path / 'cluster.db'}", "--gateway-ports", f"{gw1},{gw2}",
         "--api-port", str(api), "--consumers-port", str(consumers)],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


class Output:
    """Reads `storm cluster`'s output to the end in a thread (a full pipe would block it and its children)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.running = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line)
            if "press Ctrl-C" in line:
                self.running.set()

    def text(self) -> str:
        self._thread.join(timeout=10)
        return "".join(self.lines)

    def table(self) -> dict[str, tuple[int, int]]:
        """The {name: (pid, port)} table `storm cluster` prints once every process answers /healthz."""
        if not self.running.wait(READY_TIMEOUT_S):
            pytest.fail("storm cluster never said it was running:\n" + "".join(self.lines[-60:]))
        rows = {}
        for line in self.lines:
            match = ROW.match(line)
            if match:
                rows[match.group(1)] = (int(match.group(2)), int(match.group(3)))
        return rows


def _status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:
        return int(response.status)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, tuple[int, int]], Output]]:
    proc = _cluster(tmp_path, free_ports(4))
    output = Output(proc)
    try:
        yield proc, output.table(), output
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        output.text()  # the reader reaches the end of the output
        if proc.stdout is not None:
            proc.stdout.close()


def test_every_role_is_its_own_healthy_process(cluster: tuple[subprocess.Popen[str], dict[str, tuple[int, int]],
                                                                Output]) -> None:
    proc, rows, _ = cluster

    assert set(rows) == {"gateway-1", "gateway-2", "api", "consumers"}
    pids = {pid for pid, _ in rows.values()}
    assert len(pids) == 4 and proc.pid not in pids
    for name, (pid, port) in rows.items():
        assert psutil.Process(pid).ppid() == proc.pid, name
        assert _status(f"http://127.0.0.1:{port}/healthz") == 200, name
        listening = {c.laddr.port for c in psutil.Process(pid).net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN}
        assert port in listening, f"{name} (pid {pid}) does not listen on {port}"


def test_sigterm_stops_every_process(cluster: tuple[subprocess.Popen[str], dict[str, tuple[int, int]], Output],
                                     ) -> None:
    proc, rows, output = cluster

    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=STOP_TIMEOUT_S)

    assert code == 0
    tail = output.text()
    for name, (pid, _) in rows.items():
        assert f"{name} stopped (exit 0)" in tail, tail
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    # Drain order: the gateways stop before the API, the consumers last.
    order = [tail.index(f"stopping {name}") for name in ("gateway-1", "gateway-2", "api", "consumers")]
    assert order == sorted(order)


def test_a_busy_port_is_a_clear_error_and_starts_nothing(tmp_path: Path) -> None:
    ports = free_ports(4)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports[2]))
        holder.listen()
        proc = _cluster(tmp_path, ports)
        with contextlib.closing(proc.stdout):
            out, _ = proc.communicate(timeout=READY_TIMEOUT_S)

    assert proc.returncode == 1
    assert f"port(s) already in use: {ports[2]} (api)" in out
    assert "started" not in out


def test_children_stop_when_the_supervisor_is_killed(
        cluster: tuple[subprocess.Popen[str], dict[str, tuple[int, int]], Output]) -> None:
    proc, rows, _ = cluster
    children = [psutil.Process(pid) for pid, _ in rows.values()]

    proc.kill()  # SIGKILL: `storm cluster` cannot stop anything itself, and its output pipe closes
    proc.wait(timeout=STOP_TIMEOUT_S)

    _, alive = psutil.wait_procs(children, timeout=STOP_TIMEOUT_S)
    assert not alive, f"still running after the supervisor died: {[p.pid for p in alive]}"
