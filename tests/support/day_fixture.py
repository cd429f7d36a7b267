"""A synthetic `storm day` run folder (docs/storm-day.md, "The run folder") with known answers.

:func:`write_run` writes a 120-second run of 1 000 users: ramp 0-30 s, plateau 30-100 s, decline 100-120 s;
50 publishes/s at the plateau, each delivered to 10 members, ack p99 20 ms, delivery p99 40 ms; and one
incident, ``gateway-sigkill``, injected at t = 60 s and ended at t = 61.5 s, whose effect is crafted:

* t = 60: nothing visible yet (the kill lands within the second);
* t = 61: connections fall to 520 (480 users disconnected, close 1006), 30 connects refused, ack p99 400 ms,
  delivery p99 900 ms, 20 publishes not acked  -> detected at 61;
* t = 62..65: connections 700, 850, 950, 985 (under 99 % of 1 000), p99s within the SLO;
* t = 66 on: 995 then 1 000 connections  -> recovered at 66 (5 steady seconds 66-70), 6 s after the injection.

Processes are sampled every 2 s at constant rates (cores): each of 2 gateways 0.3, pulsar 0.2, consumers 0.1,
postgres 0.15, hazelcast 0.05, load 0.6; the gateways' RSS grows by 6 000 bytes per connection over 80 MiB.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

USERS = 1000
DURATION = 120
PUBLISH_RATE = 50
FANOUT = 10
INCIDENT = {"name": "gateway-sigkill", "experiment": "gateway-sigkill",
            "description": "SIGKILL one of the two gateways at the peak", "start_t": 60.0, "end_t": 61.5}
DETECTION_T, RECOVERY_T = 61.0, 66.0
CORES = {"gateway": 0.3, "pulsar": 0.2, "consumers": 0.1, "postgres": 0.15, "hazelcast": 0.05, "load": 0.6}
PROCESSES = [("gateway-1", "gateway"), ("gateway-2", "gateway"), ("consumers-1", "consumers"), ("pulsar", "pulsar"),
             ("postgres", "postgres"), ("hazelcast", "hazelcast"), ("load-1", "load")]
GATEWAY_BASE_RSS = 80 * 2**20
BYTES_PER_CONNECTION = 6000


def phase(t: int) -> str:
    return "ramp" if t < 30 else "plateau" if t < 100 else "decline"


def connections_at(t: int) -> int:
    if t < 30:
        return round(USERS * (t + 1) / 30)
    if t < 100:
        return {61: 520, 62: 700, 63: 850, 64: 950, 65: 985, 66: 995}.get(t, USERS)
    return round(USERS * (1 - 0.5 * (t - 99) / 20))


def second(t: int) -> dict[str, Any]:
    conns = connections_at(t)
    pubs = round(PUBLISH_RATE * conns / USERS)
    line: dict[str, Any] = {
        "t": float(t), "phase": phase(t), "connections": conns,
        "connects_ok": max(0, conns - connections_at(t - 1)) if t > 0 else conns, "connects_failed": {},
        "connect_ms": {"p50": 9.0, "p99": 40.0}, "publishes": pubs, "acks": pubs, "deliveries": pubs * FANOUT,
        "ack_ms": {"p50": 4.0, "p95": 9.0, "p99": 20.0}, "deliver_ms": {"p50": 6.0, "p95": 12.0, "p99": 40.0},
        "errors": {"rate_limited": 1} if t == 40 else {}, "reconnects": 0, "disconnects": {},
    }
    if t == 61:
        line.update(connects_failed={"refused": 30}, acks=pubs - 20, disconnects={"1006": 480},
                    ack_ms={"p50": 120.0, "p95": 300.0, "p99": 400.0},
                    deliver_ms={"p50": 200.0, "p95": 600.0, "p99": 900.0})
    if 62 <= t <= 66:
        line["reconnects"] = line["connects_ok"]
    if t == 61:  # the subscribes the restarting broker refused, asked again on the same connections
        line["subscribe_retries"] = 12
    return line


def timeline() -> list[dict[str, Any]]:
    return [second(t) for t in range(DURATION)]


def processes() -> list[dict[str, Any]]:
    rows = []
    for t in range(0, DURATION + 1, 2):
        conns = connections_at(min(t, DURATION - 1))
        for i, (name, role) in enumerate(PROCESSES):
            rss = GATEWAY_BASE_RSS + BYTES_PER_CONNECTION * conns // 2 if role == "gateway" else 200 * 2**20
            rows.append({"t": float(t), "name": name, "role": role, "pid": 1000 + i, "cpu_s": round(CORES[role] * t, 3),
                         "rss_bytes": rss})
    return rows


def run_json(status: str = "completed") -> dict[str, Any]:
    return {"profile": "fixture", "profile_file": "tests/support/day_fixture.py", "users": USERS,
            "minutes": DURATION / 60, "started_at": "2026-12-06T12:00:00+00:00",
            "ended_at": "2026-12-06T12:02:00+00:00", "status": status, "error": None,
            "machine": {"cores": 2, "mem_gib": 24.0},
            "topology": {"gateways": 2, "consumers": 1, "api": 1, "load_processes": 1},
            "offered": {"msgs_per_s": PUBLISH_RATE, "note": "a fixture: 50 messages/s at the plateau"},
            "phases": [{"name": "ramp", "start_t": 0, "end_t": 30}, {"name": "plateau", "start_t": 30, "end_t": 100},
                       {"name": "decline", "start_t": 100, "end_t": 120}]}


def checks(lines: list[dict[str, Any]]) -> dict[str, Any]:
    acked = sum(s["acks"] for s in lines)
    attempts = sum(s["connects_ok"] + sum(s["connects_failed"].values()) for s in lines)
    return {"acked": acked, "stored": acked, "lost": 0, "duplicates": 0, "inversions": 0,
            "stored_exactly_once": True, "connect_attempts": attempts,
            "connect_success": sum(s["connects_ok"] for s in lines), "examples": {"lost": [], "duplicates": [],
                                                                                   "inversions": []}}


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_run(folder: Path, *, lines: list[dict[str, Any]] | None = None,
              incidents: list[dict[str, Any]] | None = None, status: str = "completed",
              metrics: list[dict[str, Any]] | None = None, skip: tuple[str, ...] = ()) -> Path:
    """The run folder (module docstring) in ``folder``; ``lines``/``incidents`` replace the crafted ones,
    ``skip`` leaves files out."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = timeline() if lines is None else lines
    files: dict[str, Any] = {
        "run.json": run_json(status), "incidents.json": [INCIDENT] if incidents is None else incidents,
        "checks.json": checks(lines),
    }
    for name, doc in files.items():
        if name not in skip:
            (folder / name).write_text(json.dumps(doc, indent=2))
    if "timeline.jsonl" not in skip:
        write_jsonl(folder / "timeline.jsonl", lines)
    if "processes.jsonl" not in skip:
        write_jsonl(folder / "processes.jsonl", processes())
    if metrics is not None:
        write_jsonl(folder / "metrics.jsonl", metrics)
    return folder


if __name__ == "__main__":  # python -m tests.support.day_fixture FOLDER: a folder to try the report on
    import sys

    print(write_run(Path(sys.argv[1])))
