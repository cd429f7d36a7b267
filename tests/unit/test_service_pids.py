"""The benches and storm day find the services' processes for their CPU share (storm_tools/bench/e2e.py):
Pulsar's ZooKeeper, its metadata store in a process of its own since 2026-12-07, counts as Pulsar's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from storm_tools.bench.e2e import service_pids, service_roles


@pytest.fixture
def sleepers():
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(4)]
    try:
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_zookeeper_counts_in_pulsar(tmp_path: Path, sleepers: list[int], monkeypatch) -> None:
    pulsar, zookeeper, hazelcast, postgres = sleepers
    (tmp_path / "pg").mkdir()
    (tmp_path / "pulsar.pid").write_text(f"{pulsar}\n")
    (tmp_path / "zookeeper.pid").write_text(f"{zookeeper}\n")
    (tmp_path / "hazelcast.pid").write_text(f"{hazelcast}\n")
    (tmp_path / "pg" / "postmaster.pid").write_text(f"{postgres}\n/data\n")
    monkeypatch.setitem(os.environ, "STORM_SERVICES_DIR", str(tmp_path))
    assert service_pids() == {"pulsar": pulsar, "zookeeper": zookeeper, "hazelcast": hazelcast, "postgres": postgres}
    assert service_roles() == {"pulsar": [pulsar, zookeeper], "hazelcast": [hazelcast], "postgres": [postgres]}


def test_without_a_zookeeper_pulsar_is_its_own_process(tmp_path: Path, sleepers: list[int], monkeypatch) -> None:
    pulsar, _, hazelcast, postgres = sleepers
    (tmp_path / "pg").mkdir()
    (tmp_path / "pulsar.pid").write_text(f"{pulsar}\n")
    (tmp_path / "hazelcast.pid").write_text(f"{hazelcast}\n")
    (tmp_path / "pg" / "postmaster.pid").write_text(f"{postgres}\n")
    monkeypatch.setitem(os.environ, "STORM_SERVICES_DIR", str(tmp_path))
    assert service_roles() == {"pulsar": [pulsar], "hazelcast": [hazelcast], "postgres": [postgres]}
