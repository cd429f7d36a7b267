"""`storm cluster` as a supervisor (storm_cli/cluster.py): the restart backoff, --gateways, --child-env, the
state file and one supervision pass, without processes (fake children).  The processes themselves:
tests/e2e/test_cluster.py and tests/e2e/test_chaos.py."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from storm_cli.cluster import (
    RESTART_MAX_S,
    RESTART_RESET_S,
    Child,
    Cluster,
    ClusterError,
    apply_child_env,
    gateway_ports,
    load_child_env,
    plan_children,
    restart_delay,
    workspace_filter,
)
from storm_cli.main import build_parser


def test_restart_delay_doubles_from_half_a_second_up_to_its_cap() -> None:
    assert [restart_delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert restart_delay(50) == RESTART_MAX_S
    with pytest.raises(ValueError, match="at least 1"):
        restart_delay(0)


def _args(*argv: str) -> Any:
    return build_parser().parse_args(["cluster", *argv])


def test_gateways_n_counts_ports_from_8001_around_the_api_and_consumers() -> None:
    assert gateway_ports(_args()) == [8001, 8002]
    assert gateway_ports(_args("--gateways", "4")) == [8001, 8002, 8005, 8006]
    assert [c.name for c in plan_children(_args("--gateways", "3"), {})][:3] == ["gateway-1", "gateway-2", "gateway-3"]


@pytest.mark.parametrize(("argv", "message"), [
    (("--gateways", "0"), "at least 1"),
    (("--gateways", "3", "--gateway-ports", "9001,9002"), "lists 2 port"),
])
def test_bad_gateway_counts_are_clear_errors(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(ClusterError, match=message):
        gateway_ports(_args(*argv))


def test_child_env_applies_star_then_the_childs_own(tmp_path: Path) -> None:
    path = tmp_path / "env.json"
    path.write_text(json.dumps({"*": {"A": "1", "B": "1"}, "gateway-1": {"B": "2"}}))
    children = plan_children(_args(), {"A": "0"})

    apply_child_env(children, load_child_env(path, [c.name for c in children]))

    by_name = {c.name: c for c in children}
    assert (by_name["gateway-1"].env["A"], by_name["gateway-1"].env["B"]) == ("1", "2")
    assert by_name["api"].env["B"] == "1" and by_name["api"].overrides == ("A", "B")


@pytest.mark.parametrize(("content", "message"), [
    ("[1]", "expected a JSON object"),
    ('{"gateway-9": {"A": "1"}}', "unknown child"),
    ('{"*": {"A": 1}}', "must map setting names to strings"),
    ("{", "--child-env"),
])
def test_bad_child_env_files_are_refused_with_what_is_wrong(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "env.json"
    path.write_text(content)

    with pytest.raises(ClusterError, match=message):
        load_child_env(path, ["gateway-1", "api"])


def test_the_consumers_workspace_prefix_filter() -> None:
    keep = workspace_filter("chaos-")

    assert keep("chaos-1a2b") and not keep("rs-1a2b") and not keep("xchaos-")


class FakeProc:
    """Enough of subprocess.Popen for a supervision pass."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        return self.returncode


def _cluster(tmp_path: Path) -> tuple[Cluster, list[Child], list[str]]:
    children = [Child("gateway-1", "gateway", 9001), Child("gateway-2", "gateway", 9002)]
    for pid, child in enumerate(children, start=100):
        child.proc = FakeProc(pid)  # type: ignore[assignment]
    cluster = Cluster(children, "127.0.0.1", drain_timeout_s=1, out=io.StringIO(), state_file=tmp_path / "state.json")
    spawned: list[str] = []

    def spawn(child: Child) -> None:  # what _spawn does, without a process
        spawned.append(child.name)
        child.proc = FakeProc(child.pid + 1000)  # type: ignore[assignment]
        child.started_at = 0.0
        child.restart_at = None

    cluster._spawn = spawn  # type: ignore[method-assign]
    return cluster, children, spawned


def test_an_exited_child_is_restarted_after_its_backoff_and_the_others_are_left_alone(tmp_path: Path) -> None:
    cluster, (gw1, gw2), spawned = _cluster(tmp_path)
    gw1.started_at = gw2.started_at = 0.0
    gw1.proc.returncode = -9  # type: ignore[union-attr]

    cluster.supervise_once(now=10.0)  # noticed: restart due at 10.5
    assert spawned == [] and gw1.restart_at == pytest.approx(10.5) and gw1.last_exit == -9
    cluster.supervise_once(now=10.4)
    assert spawned == []
    cluster.supervise_once(now=10.5)

    assert spawned == ["gateway-1"] and gw1.restarts == 1 and gw1.pid == 1100
    assert gw2.restarts == 0 and gw2.pid == 101
    state = json.loads((tmp_path / "state.json").read_text())
    assert [(c["name"], c["pid"], c["restarts"], c["last_exit"]) for c in state["children"]] == [
        ("gateway-1", 1100, 1, -9), ("gateway-2", 101, 0, None)]
    out = cluster.out.getvalue()  # type: ignore[attr-defined]
    assert "gateway-1 (pid 100) exited with -9; restarting it in 0.5 s" in out
    assert "restarted gateway-1 (pid 1100, was 100; restart #1)" in out


def test_quick_exits_back_off_and_a_long_run_resets_the_backoff(tmp_path: Path) -> None:
    cluster, (gw1, _), _ = _cluster(tmp_path)
    gw1.started_at = 0.0
    gw1.proc.returncode = 1  # type: ignore[union-attr]
    cluster.supervise_once(now=1.0)
    cluster.supervise_once(now=2.0)  # restarted (started_at = 0.0 by the fake spawn)
    gw1.proc.returncode = 1  # type: ignore[union-attr]
    cluster.supervise_once(now=3.0)  # second quick exit: 1 s
    assert gw1.restart_at == pytest.approx(4.0)
    cluster.supervise_once(now=4.0)
    gw1.proc.returncode = 1  # type: ignore[union-attr]
    cluster.supervise_once(now=RESTART_RESET_S + 10)  # ran longer than the reset: back to 0.5 s

    assert gw1.restart_at == pytest.approx(RESTART_RESET_S + 10.5) and gw1.quick_exits == 1


class RecordingBroker:
    """A broker that only records the work filter it is given (storm.ports.broker.WorkScope)."""

    def __init__(self) -> None:
        self.work_filter: Any = None

    def limit_work_to(self, workspace_filter: Any) -> None:
        self.work_filter = workspace_filter


@pytest.mark.parametrize(("prefix", "limited"), [("chaos-", True), ("", False)])
def test_consumers_take_only_the_workspaces_of_their_prefix(prefix: str, limited: bool) -> None:
    from storm.bootstrap import build_services
    from storm.config import Config
    from storm_cli.cluster import create_consumers_app

    broker = RecordingBroker()
    services = build_services(Config.from_env({"STORM_CONSUMER_WORKSPACE_PREFIX": prefix}))  # memory adapters
    services.broker = broker  # type: ignore[assignment]

    create_consumers_app(services)

    if limited:
        assert broker.work_filter("chaos-1a2b") and not broker.work_filter("rs-1a2b")
    else:
        assert broker.work_filter is None  # one deployment per Pulsar: every workspace


def test_the_state_file_says_ready_only_once_the_supervisor_saw_every_child_answer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Chaos actions and tests wait for "ready": a child killed before it is true stops the whole cluster (a
    start failure), which is what made a CI run kill gateway-1 'too early' and see gateway-2 stop."""
    import threading

    from storm_cli import cluster as cluster_module

    cluster, _children, _ = _cluster(tmp_path)
    answers = {9001: [False, True], 9002: [True]}
    monkeypatch.setattr(cluster_module, "_healthy", lambda url: answers[int(url.split(":")[2].split("/")[0])].pop(0))
    monkeypatch.setattr("storm_cli.cluster.time.sleep", lambda _s: None)
    cluster.write_state()
    assert json.loads((tmp_path / "state.json").read_text())["ready"] is False

    cluster.wait_healthy(10, threading.Event())

    assert json.loads((tmp_path / "state.json").read_text())["ready"] is True
    assert answers == {9001: [], 9002: []}


def test_a_child_that_exits_before_the_first_answer_is_a_start_failure(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from storm_cli import cluster as cluster_module

    cluster, (gw1, _gw2), _ = _cluster(tmp_path)
    monkeypatch.setattr(cluster_module, "_healthy", lambda url: False)
    gw1.proc.returncode = 2  # type: ignore[union-attr]
    with pytest.raises(cluster_module.ClusterError, match=r"gateway-1 .* exited with 2 before answering"):
        cluster.wait_healthy(10, threading.Event())
    assert cluster.ready is False
