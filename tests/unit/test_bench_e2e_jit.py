"""`storm bench e2e` reports the JVMs' JIT compiler time apart (storm_tools/bench/e2e.py, jit_seconds): a
freshly started Pulsar spends much of the bench's window compiling, which is no per-message cost."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storm_tools.bench.e2e import cpu_per_message, jit_seconds, without_jit


def _task(root: Path, pid: int, tid: int, comm: str, ns: int) -> None:
    task = root / str(pid) / "task" / str(tid)
    task.mkdir(parents=True)
    (task / "comm").write_text(comm + "\n")
    (task / "schedstat").write_text(f"{ns} 0 0\n")


def test_only_the_compiler_threads_count(tmp_path: Path) -> None:
    _task(tmp_path, 7, 1, "java", 9_000_000_000)
    _task(tmp_path, 7, 2, "C2 CompilerThre", 1_500_000_000)
    _task(tmp_path, 7, 3, "C1 CompilerThre", 500_000_000)
    _task(tmp_path, 7, 4, "pulsar-io-3-1", 4_000_000_000)
    assert jit_seconds(7, tmp_path) == pytest.approx(2.0)


def test_a_thread_that_ended_while_listed_is_skipped(tmp_path: Path) -> None:
    _task(tmp_path, 7, 2, "C2 CompilerThre", 1_000_000_000)
    (tmp_path / "7" / "task" / "3").mkdir()  # listed, then gone: no comm, no schedstat
    assert jit_seconds(7, tmp_path) == pytest.approx(1.0)


def test_a_process_without_compiler_threads_has_none() -> None:  # Linux /proc, as every bench's CPU meter
    assert jit_seconds(os.getpid()) == 0.0


def test_per_message_cpu_without_jit_subtracts_it_from_the_jvm_roles_only() -> None:
    cpu_s = {"gateways": 2.0, "pulsar": 1.5, "hazelcast": 0.2, "consumers": 0.5, "postgres": 0.1, "clients": 0.3}
    out = cpu_per_message(without_jit(cpu_s, {"pulsar": 1.0, "hazelcast": 0.1}), 1000)
    assert out["pulsar"] == 500.0 and out["hazelcast"] == 100.0 and out["gateways"] == 2000.0
    assert out["server_total"] == 2000.0 + 500.0 + 100.0 + 500.0 + 100.0
