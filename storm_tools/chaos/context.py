"""What the chaos actions and probes know about the topology under test (chaos-experiments/README.md).

Two files, both JSON:

* the **state file** ``storm cluster`` writes (storm_cli/cluster.py; ``--state-file``): per child its name,
  role, PID, port and restarts, rewritten at every restart;
* the **context file** ``storm chaos run`` writes (``STORM_CHAOS_CONTEXT``, default
  ``.services/chaos/context.json``): where that state file is, the Toxiproxy API and the proxy of each
  (child, service) link, the database (direct, for the judge), the dev secret and the services script.

Each experiment's outputs (the driver's records, the faults it injected, the verdict) go to its run
folder: ``STORM_CHAOS_RUN_DIR`` (default ``.services/chaos/run``).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONTEXT = ROOT / ".services" / "chaos" / "context.json"
DEFAULT_RUN_DIR = ROOT / ".services" / "chaos" / "run"
SERVICES = ("pg", "pulsar", "hazelcast")


class ChaosContextError(RuntimeError):
    """The topology under test is not there or not as expected; the message says what to do."""


@dataclass(frozen=True)
class ChildState:
    name: str
    role: str
    port: int
    pid: int
    restarts: int

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ChaosContextError(f"{what} {path} does not exist: start the topology with `storm chaos run` "
                                "(or `storm cluster --state-file ...`)") from None
    except (OSError, ValueError) as exc:
        raise ChaosContextError(f"{what} {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ChaosContextError(f"{what} {path}: expected a JSON object")
    return data


def context() -> dict[str, Any]:
    return _read_json(Path(os.environ.get("STORM_CHAOS_CONTEXT", str(DEFAULT_CONTEXT))), "chaos context")


def run_dir() -> Path:
    path = Path(os.environ.get("STORM_CHAOS_RUN_DIR", str(DEFAULT_RUN_DIR)))
    path.mkdir(parents=True, exist_ok=True)
    return path


def children() -> list[ChildState]:
    state = _read_json(Path(context()["state_file"]), "storm cluster state file")
    return [ChildState(c["name"], c["role"], int(c["port"]), int(c["pid"]), int(c["restarts"]))
            for c in state["children"]]


def child(name: str) -> ChildState:
    found = {c.name: c for c in children()}
    if name not in found:
        raise ChaosContextError(f"no child {name!r} in the cluster; it has {', '.join(sorted(found))}")
    return found[name]


def healthy(c: ChildState) -> bool:
    if c.pid == 0:
        return False
    try:
        with urllib.request.urlopen(f"{c.http_url}/healthz", timeout=2) as response:  # noqa: S310 - loopback
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_serving(names: list[str] | None = None, timeout_s: float = 60.0) -> float:
    """Block until every child named (default: all) answers /healthz; the seconds it took."""
    start = time.monotonic()
    while True:
        current = [c for c in children() if names is None or c.name in names]
        if current and all(healthy(c) for c in current):
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            down = [c.name for c in current if not healthy(c)]
            raise ChaosContextError(f"{', '.join(down)} not serving after {timeout_s:.0f} s")
        time.sleep(0.25)


def record_fault(name: str, *, at: float | None = None, until: float | None = None) -> None:
    """Append a fault (wall-clock start, optional end) to the run folder's faults.jsonl."""
    with (run_dir() / "faults.jsonl").open("a") as out:
        out.write(json.dumps({"name": name, "at": time.time() if at is None else at, "until": until}) + "\n")


def end_faults() -> None:
    """Mark every open fault of the run as ended now."""
    path = run_dir() / "faults.jsonl"
    if path.exists():
        now = time.time()
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        path.write_text("".join(json.dumps({**f, "until": f["until"] or now}) + "\n" for f in lines))
