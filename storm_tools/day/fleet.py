"""The load fleet of `storm day`: the load processes (storm_tools/day/load.py), their per-second figures merged.

Users are dealt to ``ceil(users / PER_PROCESS)`` processes round robin by rank (so each process has its share
of every phase of the ramp), and each process binds its sockets to its own 127.0.0.x source addresses, at most
:data:`PER_ADDRESS` connections each (every address has its own ephemeral port range, and the gateways
count connections per client IP: ``STORM_MAX_CONNECTIONS_PER_IP``).

:class:`Timeline` merges the ``tick`` lines of all processes by second: counters summed, codes summed,
latency percentiles over the pooled samples (each process keeps at most 2 000 samples per metric and second,
so the pooled percentiles are those of a uniform sample when a second had more).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from storm_tools.bench.procs import ClientProcess, source_address

PER_PROCESS = 9000
PER_ADDRESS = 4000  # below the gateways' STORM_MAX_CONNECTIONS_PER_IP (5000 in the day's topology)
COUNTERS = ("connects_ok", "connect_attempts", "publishes", "acks", "deliveries", "reconnects", "rejected",
            "unacked", "typing", "reactions", "read_markers", "history", "delivery_duplicates",
            "delivery_inversions", "replayed", "subscribe_retries")


def percentiles(samples: list[float], qs: tuple[float, ...] = (0.5, 0.95, 0.99)) -> dict[str, float | None]:
    ordered = sorted(samples)
    out: dict[str, float | None] = {}
    for q in qs:
        key = f"p{round(q * 100)}"
        at = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
        out[key] = round(ordered[at], 2) if ordered else None
    return out


class Timeline:
    """Per-second lines of the run, merged over the load processes."""

    def __init__(self, processes: int, phase_at: Callable[[float], str]) -> None:
        self.processes = processes
        self.phase_at = phase_at
        self.seconds: dict[int, dict[str, Any]] = {}
        self.connections: dict[int, dict[int, int]] = {}  # sec -> process -> gauge
        self.written = -1

    def add(self, process: int, tick: dict[str, Any]) -> None:
        sec = int(tick["sec"])
        row = self.seconds.setdefault(sec, {"c": {}, "codes": {"connects_failed": {}, "errors": {}, "disconnects": {}},
                                            "samples": {"connect_ms": [], "ack_ms": [], "deliver_ms": []}})
        for key in COUNTERS:
            if tick.get(key):
                row["c"][key] = row["c"].get(key, 0) + int(tick[key])
        for table in row["codes"]:
            for code, n in (tick.get(table) or {}).items():
                row["codes"][table][code] = row["codes"][table].get(code, 0) + int(n)
        for key in row["samples"]:
            row["samples"][key].extend(tick.get(key) or [])
        self.connections.setdefault(sec, {})[process] = int(tick.get("connections", 0))

    def line(self, sec: int) -> dict[str, Any]:
        row = self.seconds.get(sec) or {"c": {}, "codes": {"connects_failed": {}, "errors": {}, "disconnects": {}},
                                        "samples": {"connect_ms": [], "ack_ms": [], "deliver_ms": []}}
        gauges = self.connections.get(sec)
        if gauges is None or len(gauges) < self.processes:  # a process had no tick that second: its last gauge
            gauges = dict(gauges or {})
            for earlier in range(sec - 1, max(-1, sec - 30), -1):
                for proc, value in self.connections.get(earlier, {}).items():
                    gauges.setdefault(proc, value)
        c = row["c"]
        return {
            "t": float(sec), "phase": self.phase_at(float(sec)), "connections": sum(gauges.values()),
            "connects_ok": c.get("connects_ok", 0), "connects_failed": row["codes"]["connects_failed"],
            "connect_ms": percentiles(row["samples"]["connect_ms"], (0.5, 0.99)),
            "publishes": c.get("publishes", 0), "acks": c.get("acks", 0), "deliveries": c.get("deliveries", 0),
            "ack_ms": percentiles(row["samples"]["ack_ms"]), "deliver_ms": percentiles(row["samples"]["deliver_ms"]),
            "errors": row["codes"]["errors"], "reconnects": c.get("reconnects", 0),
            "disconnects": row["codes"]["disconnects"],
            "typing": c.get("typing", 0), "reactions": c.get("reactions", 0), "read_markers": c.get("read_markers", 0),
            "unacked": c.get("unacked", 0), "rejected": c.get("rejected", 0), "replayed": c.get("replayed", 0),
            "subscribe_retries": c.get("subscribe_retries", 0),
        }

    def totals(self) -> dict[str, int]:
        """Every counter summed over the run (what the processes' results say, when one never reported)."""
        out: dict[str, int] = {}
        for row in self.seconds.values():
            for key, value in row["c"].items():
                out[key] = out.get(key, 0) + value
        return out

    def ready_lines(self, now_sec: int, lag: int = 3) -> list[dict[str, Any]]:
        """Lines of the seconds every process has had time to report (``lag`` seconds behind ``now_sec``)."""
        out = []
        while self.written + 1 <= now_sec - lag:
            self.written += 1
            out.append(self.line(self.written))
        return out

    def rest(self) -> list[dict[str, Any]]:
        last = max(self.seconds, default=self.written)
        return self.ready_lines(last, lag=0)


def deal(users: list[list[Any]], processes: int) -> list[list[list[Any]]]:
    """Users (specs sorted by rank) to processes round robin."""
    return [users[i::processes] for i in range(processes)]


def addresses(process: int, count: int) -> list[str]:
    """The source addresses of one process: enough for ``count`` sockets at :data:`PER_ADDRESS` each."""
    per = max(1, math.ceil(count / PER_ADDRESS))
    return [source_address(process * 4 + k) for k in range(min(per, 4))]


class Fleet:
    """The load processes; always :meth:`stop` (the runner's finally)."""

    def __init__(self, configs: list[dict[str, Any]], timeline: Timeline,
                 on_event: Callable[[int, dict[str, Any]], None]) -> None:
        self.procs = [ClientProcess(f"load-{c['index'] + 1}", "storm_tools.day.load", c) for c in configs]
        self.timeline = timeline
        self.on_event = on_event
        self.results: dict[int, dict[str, Any]] = {}
        self._readers: list[asyncio.Task[None]] = []

    @property
    def pids(self) -> list[int]:
        return [p.proc.pid for p in self.procs if p.proc is not None]

    async def start(self) -> None:
        for i, proc in enumerate(self.procs):
            await proc.start()
            self._readers.append(asyncio.get_running_loop().create_task(self._read(i, proc)))

    async def _read(self, index: int, proc: ClientProcess) -> None:
        with contextlib.suppress(RuntimeError, asyncio.IncompleteReadError, ValueError):
            while True:
                event = await proc.next_event(timeout=10**6)
                if event.get("event") == "tick":
                    self.timeline.add(index, event)
                elif event.get("event") == "result":
                    self.results[index] = event
                    return
                else:
                    self.on_event(index, event)

    def storm(self, share: float, pause_max_s: float) -> None:
        for proc in self.procs:
            with contextlib.suppress(Exception):
                proc.send({"cmd": "storm", "share": share, "pause_max_s": pause_max_s})

    async def stop(self, timeout_s: float = 120.0) -> None:
        for proc in self.procs:
            with contextlib.suppress(Exception):
                proc.send({"cmd": "stop"})
        if self._readers:
            await asyncio.wait(self._readers, timeout=timeout_s)
        for proc in self.procs:
            await proc.stop()
        for task in self._readers:
            task.cancel()


def write_lines(path: Path, lines: list[dict[str, Any]]) -> None:
    import json

    if lines:
        with path.open("a") as out:
            out.writelines(json.dumps(line) + "\n" for line in lines)
