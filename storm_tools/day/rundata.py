"""The run folder `storm day` writes, read and checked (docs/storm-day.md, "The run folder").

The runner writes run.json, timeline.jsonl, processes.jsonl, incidents.json, checks.json and optionally
metrics.jsonl; :func:`load` reads them into frozen values and refuses a malformed folder with a
:class:`RunFolderError` that names the file, the line and the field (``timeline.jsonl: line 12: field
'ack_ms.p99': expected a number or null, got 'x'``).  run.json and timeline.jsonl are always required;
processes.jsonl, incidents.json and checks.json are required of a completed run only (an interrupted or
failed run is still reported, with what it left).  No I/O here but reading the files.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PERCENTILES = ("p50", "p95", "p99")
STATUSES = ("completed", "interrupted", "failed")


class RunFolderError(ValueError):
    """The run folder is missing a file or holds a malformed one; the message names the file and the field."""

    def __init__(self, file: str, message: str, *, line: int | None = None, field: str | None = None) -> None:
        where = file + (f": line {line}" if line is not None else "") + (f": field {field!r}" if field else "")
        super().__init__(f"{where}: {message}")
        self.file, self.line, self.field = file, line, field


@dataclass(frozen=True)
class Phase:
    name: str
    start_t: float
    end_t: float


@dataclass(frozen=True)
class Run:
    profile: str
    users: int
    minutes: float
    started_at: str
    ended_at: str
    status: str
    error: str | None
    phases: tuple[Phase, ...]
    machine: dict[str, Any] = field(default_factory=dict)
    topology: dict[str, Any] = field(default_factory=dict)
    offered: dict[str, Any] = field(default_factory=dict)
    profile_file: str = ""


@dataclass(frozen=True)
class Second:
    """One line of timeline.jsonl: the clients' figures of one second (counts are per-second deltas)."""

    t: float
    phase: str
    connections: int
    connects_ok: int
    connects_failed: dict[str, int]
    connect_ms: dict[str, float | None]
    publishes: int
    acks: int
    deliveries: int
    ack_ms: dict[str, float | None]
    deliver_ms: dict[str, float | None]
    errors: dict[str, int]
    reconnects: int
    disconnects: dict[str, int]
    target: float | None = None  # users the profile's curve wants connected (optional)
    subscribe_retries: int = 0  # subscribes refused `unavailable` & co. and asked again on the same connection


@dataclass(frozen=True)
class Sample:
    """One line of processes.jsonl: one process's cumulative CPU seconds and resident memory at ``t``."""

    t: float
    name: str
    role: str
    pid: int
    cpu_s: float
    rss_bytes: int


@dataclass(frozen=True)
class Incident:
    name: str
    experiment: str
    description: str
    start_t: float
    end_t: float


@dataclass(frozen=True)
class Checks:
    acked: int
    stored: int
    lost: int
    duplicates: int
    inversions: int
    stored_exactly_once: bool
    connect_attempts: int
    connect_success: int
    examples: dict[str, list[Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricPoint:
    """One line of metrics.jsonl: a DogStatsD metric aggregated over one second (a distribution's value may be
    the list of its samples)."""

    t: float
    metric: str
    type: str
    tags: dict[str, str]
    values: tuple[float, ...]


@dataclass(frozen=True)
class RunData:
    folder: Path
    run: Run
    timeline: tuple[Second, ...]
    processes: tuple[Sample, ...]
    incidents: tuple[Incident, ...]
    checks: Checks | None
    metrics: tuple[MetricPoint, ...]
    missing: tuple[str, ...] = ()  # optional files the run did not leave

    @property
    def duration_s(self) -> float:
        return (self.timeline[-1].t - self.timeline[0].t + 1.0) if self.timeline else 0.0


class _Obj:
    """Typed access to one JSON object, every error naming the file, the line and the field."""

    def __init__(self, doc: Any, file: str, line: int | None = None, prefix: str = "") -> None:
        if not isinstance(doc, dict):
            raise RunFolderError(file, f"expected a JSON object, got {type(doc).__name__}", line=line,
                                 field=prefix.rstrip(".") or None)
        self.doc, self.file, self.line, self.prefix = doc, file, line, prefix

    def fail(self, key: str, message: str) -> RunFolderError:
        return RunFolderError(self.file, message, line=self.line, field=self.prefix + key)

    def get(self, key: str, required: bool = True) -> Any:
        if key not in self.doc:
            if required:
                raise self.fail(key, "missing")
            return None
        return self.doc[key]

    def num(self, key: str, *, required: bool = True, default: float = 0.0, minimum: float | None = 0.0) -> float:
        value = self.get(key, required)
        if value is None and not required:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"expected a number, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.fail(key, f"must be >= {minimum:g}, got {value!r}")
        return float(value)

    def whole(self, key: str, *, required: bool = True) -> int:
        value = self.num(key, required=required)
        if value != int(value):
            raise self.fail(key, f"expected a whole number, got {value!r}")
        return int(value)

    def text(self, key: str, *, required: bool = True, choices: tuple[str, ...] | None = None) -> str:
        value = self.get(key, required)
        if value is None and not required:
            return ""
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {value!r}")
        if choices and value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}, got {value!r}")
        return value

    def counts(self, key: str) -> dict[str, int]:
        value = self.get(key, required=False)
        if value is None:
            return {}
        if isinstance(value, int | float) and not isinstance(value, bool):
            return {"all": int(value)} if value else {}  # a plain count is accepted as one code
        inner = _Obj(value, self.file, self.line, self.prefix + key + ".")
        return {str(k): inner.whole(k) for k in value}

    def percentiles(self, key: str) -> dict[str, float | None]:
        value = self.get(key, required=False)
        if value is None:
            return dict.fromkeys(PERCENTILES)
        inner = _Obj(value, self.file, self.line, self.prefix + key + ".")
        out: dict[str, float | None] = {}
        for p in PERCENTILES:
            v = value.get(p)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or v < 0):
                raise inner.fail(p, f"expected a number >= 0 or null, got {v!r}")
            out[p] = None if v is None else float(v)
        return out


def _read_json(folder: Path, name: str) -> Any:
    path = folder / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunFolderError(name, f"missing from {folder}") from None
    except json.JSONDecodeError as exc:
        raise RunFolderError(name, f"not JSON ({exc.msg} at line {exc.lineno})", line=exc.lineno) from None


def _read_jsonl(folder: Path, name: str) -> Iterator[tuple[int, Any]]:
    path = folder / name
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RunFolderError(name, f"missing from {folder}") from None
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip():
            continue
        try:
            yield number, json.loads(raw)
        except json.JSONDecodeError as exc:
            if number == len(text.splitlines()) and not text.endswith("\n"):
                return  # a last line cut short by an interrupted run
            raise RunFolderError(name, f"not JSON ({exc.msg})", line=number) from None


def read_run(folder: Path) -> Run:
    o = _Obj(_read_json(folder, "run.json"), "run.json")
    phases = []
    raw_phases = o.get("phases", required=False) or []
    if not isinstance(raw_phases, list):
        raise o.fail("phases", "expected a list")
    for i, raw in enumerate(raw_phases):
        p = _Obj(raw, "run.json", prefix=f"phases[{i}].")
        start, end = p.num("start_t"), p.num("end_t")
        if end < start:
            raise p.fail("end_t", f"ends ({end:g}) before it starts ({start:g})")
        phases.append(Phase(p.text("name"), start, end))
    error = o.get("error", required=False)
    return Run(
        profile=o.text("profile"), users=o.whole("users"), minutes=o.num("minutes"), started_at=o.text("started_at"),
        ended_at=o.text("ended_at", required=False), status=o.text("status", choices=STATUSES),
        error=None if error is None else str(error), phases=tuple(phases),
        machine=dict(o.get("machine", required=False) or {}), topology=dict(o.get("topology", required=False) or {}),
        offered=dict(o.get("offered", required=False) or {}), profile_file=o.text("profile_file", required=False))


def read_timeline(folder: Path) -> tuple[Second, ...]:
    seconds = []
    for n, raw in _read_jsonl(folder, "timeline.jsonl"):
        o = _Obj(raw, "timeline.jsonl", n)
        seconds.append(Second(
            t=o.num("t", minimum=None), phase=o.text("phase", required=False), connections=o.whole("connections"),
            connects_ok=o.whole("connects_ok", required=False), connects_failed=o.counts("connects_failed"),
            connect_ms=o.percentiles("connect_ms"), publishes=o.whole("publishes", required=False),
            acks=o.whole("acks", required=False), deliveries=o.whole("deliveries", required=False),
            ack_ms=o.percentiles("ack_ms"), deliver_ms=o.percentiles("deliver_ms"), errors=o.counts("errors"),
            reconnects=o.whole("reconnects", required=False), disconnects=o.counts("disconnects"),
            subscribe_retries=o.whole("subscribe_retries", required=False),
            target=o.num("target") if o.get("target", required=False) is not None else None))
    if not seconds:
        raise RunFolderError("timeline.jsonl", "holds no second")
    seconds.sort(key=lambda s: s.t)
    return tuple(seconds)


def read_processes(folder: Path) -> tuple[Sample, ...]:
    samples = []
    for n, raw in _read_jsonl(folder, "processes.jsonl"):
        o = _Obj(raw, "processes.jsonl", n)
        samples.append(Sample(o.num("t", minimum=None), o.text("name"), o.text("role"), o.whole("pid"), o.num("cpu_s"),
                              o.whole("rss_bytes")))
    samples.sort(key=lambda s: (s.t, s.name))
    return tuple(samples)


def read_incidents(folder: Path, run_end_t: float | None = None) -> tuple[Incident, ...]:
    """The incidents; one still under way when the run stopped (``end_t`` null) ends at ``run_end_t``."""
    doc = _read_json(folder, "incidents.json")
    if not isinstance(doc, list):
        raise RunFolderError("incidents.json", f"expected a list of incidents, got {type(doc).__name__}")
    incidents = []
    for i, raw in enumerate(doc):
        o = _Obj(raw, "incidents.json", prefix=f"[{i}].")
        start = o.num("start_t", minimum=None)
        if o.get("end_t") is None and run_end_t is not None:
            end = max(start, run_end_t)
        else:
            end = o.num("end_t", minimum=None)
        if end < start:
            raise o.fail("end_t", f"ends ({end:g}) before it starts ({start:g})")
        name = o.text("name")
        incidents.append(Incident(name, o.text("experiment", required=False) or name,
                                  o.text("description", required=False), start, end))
    return tuple(sorted(incidents, key=lambda i: i.start_t))


def read_checks(folder: Path) -> Checks:
    o = _Obj(_read_json(folder, "checks.json"), "checks.json")
    exact = o.get("stored_exactly_once")
    if not isinstance(exact, bool):
        raise o.fail("stored_exactly_once", f"expected true or false, got {exact!r}")
    examples = o.get("examples", required=False) or {}
    if not isinstance(examples, dict):
        raise o.fail("examples", "expected an object of lists")
    return Checks(o.whole("acked"), o.whole("stored"), o.whole("lost"), o.whole("duplicates"),
                  o.whole("inversions"), exact, o.whole("connect_attempts"), o.whole("connect_success"),
                  {str(k): list(v)[:10] for k, v in examples.items() if isinstance(v, list)})


def read_metrics(folder: Path) -> tuple[MetricPoint, ...]:
    points = []
    for n, raw in _read_jsonl(folder, "metrics.jsonl"):
        o = _Obj(raw, "metrics.jsonl", n)
        value = o.get("value")
        values = value if isinstance(value, list) else [value]
        if not values or any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
            raise o.fail("value", f"expected a number or a list of numbers, got {value!r}")
        tags = o.get("tags", required=False) or {}
        if isinstance(tags, list):  # ["k:v", ...] as DogStatsD writes them
            tags = dict(str(t).partition(":")[::2] for t in tags)
        if not isinstance(tags, dict):
            raise o.fail("tags", f"expected an object, got {tags!r}")
        points.append(MetricPoint(o.num("t", minimum=None), o.text("metric"), o.text("type", required=False) or "count",
                                  {str(k): str(v) for k, v in tags.items()}, tuple(float(v) for v in values)))
    return tuple(points)


def load(folder: Path) -> RunData:
    """Every file of the run folder, checked (module docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RunFolderError(str(folder), "not a directory")
    run = read_run(folder)
    timeline = read_timeline(folder)
    strict = run.status == "completed"
    missing: list[str] = []

    def optional(name: str, reader: Any, empty: Any, required: bool) -> Any:
        if not (folder / name).exists() and not required:
            missing.append(name)
            return empty
        return reader(folder)

    processes = optional("processes.jsonl", read_processes, (), strict)
    incidents = optional("incidents.json", lambda f: read_incidents(f, timeline[-1].t + 1), (), strict)
    checks = optional("checks.json", read_checks, None, strict)
    metrics = optional("metrics.jsonl", read_metrics, (), False)
    return RunData(folder, run, timeline, processes, incidents, checks, metrics, tuple(missing))
