"""Fixtures of the end-to-end tests, which start STORM processes and talk to them over sockets:

* ``storm_dev_server``: a `storm dev` process on a free port (its base URL);
* ``storm_server``: a `storm dev` process that a test may SIGKILL and start again (the SDK tests;
  tests/support/dev_server.py);
* ``topology`` and ``live``: two gateways, the tenants API and the consumers as processes on the real services
  (tests/support/topology.py; the fault tests)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import topology as topology_support
from tests.support.dev_server import StormProcess, free_port, healthy
from tests.support.topology import Topology, running_topology

STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
ROOT = Path(__file__).resolve().parents[2]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture(scope="module")
def storm_dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start `python -m storm_cli.main dev` on a free port with its own SQLite file; yield its base URL."""
    tmp = tmp_path_factory.mktemp("storm-dev")
    port = free_port()
    env = {**os.environ, "STORM_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/e2e.db", "PYTHONUNBUFFERED": "1"}
    stdout_path, stderr_path = tmp / "stdout.log", tmp / "stderr.log"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "storm_cli", "dev", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not healthy(f"{base}/healthz"):
            if proc.poll() is not None:
                pytest.fail(f"storm dev exited with {proc.returncode} before becoming healthy:\n"
                            f"{stderr_path.read_text(errors='replace')[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"storm dev not healthy within {STARTUP_TIMEOUT_S:.0f} s:\n"
                            f"{stderr_path.read_text(errors='replace')[-4000:]}")
            time.sleep(0.1)
        yield base
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def storm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StormProcess]:
    """One `storm dev` per test module (SQLite in a temp dir).  Tests that kill it start it again."""
    server = StormProcess(tmp_path_factory.mktemp("storm-sdk"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- the multi-process topology on the real services (docs/delivery.md, "Fault tests") -------------


@pytest.fixture(scope="session")
def topology(pg_url: str, pulsar_urls: tuple[str, str], hazelcast_members: str) -> Iterator[Topology]:
    with running_topology(pg_url, pulsar_urls, hazelcast_members) as topo:
        yield topo


@pytest.fixture
def live(topology: Topology) -> Topology:
    """The topology with every process running (an earlier fault test may have left one down)."""
    topology.revive()
    return topology


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed and topology_support.ACTIVE and "topology" in getattr(item, "fixturenames", ()):
        report.sections.append(("storm process logs", topology_support.ACTIVE[-1].logs()))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The Pulsar restart is slow and disturbs everything on the broker: it runs last."""
    items.sort(key=lambda item: "pulsar_restart" in item.name)
