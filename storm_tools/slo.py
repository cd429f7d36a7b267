"""The SLOs of storm_tools/slos.yaml, loaded and evaluated over locally collected metrics (docs/observability.md).

The same file generates the Datadog SLOs (:mod:`storm_tools.datadog_tf`); here its SLIs are computed from
the DogStatsD points a local run emitted, gathered by :class:`storm_tools.statsd.Collector` (``storm top``'s
receiver), so the launch-day run and the chaos experiments judge themselves by the definitions Datadog
uses::

    collector = Collector()
    transport, port = await listen(collector)          # run STORM with DD_AGENT_HOST=127.0.0.1 DD_DOGSTATSD_PORT=port
    ...
    for result in evaluate(load(), collector):
        print(result.id, result.value, result.met)

A ratio SLI is ``sum(good terms) / sum(total terms)`` over the whole run (``extra_bad`` adds bad events a
tool counted itself, e.g. the messages ``storm verify delivery`` found missing).  A threshold SLI is the
share of time slices (``slice_s``, by receive time) whose percentile is at or under ``threshold_ms``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storm_tools.statsd import Collector, Point, percentile

DEFAULT_PATH = Path(__file__).resolve().parent / "slos.yaml"  # package data: found by an installed storm too
_TERM = re.compile(r"^(?P<sign>[+-]?)(?P<metric>[a-z][a-z0-9_.]*)(?:\{(?P<tags>[^}]*)\})?$")


class SloError(ValueError):
    """storm_tools/slos.yaml is malformed; the message says where."""


@dataclass(frozen=True, slots=True)
class Term:
    """``metric{tag:value,tag:a|b}``: the points of ``metric`` whose tags take one of the listed values."""

    metric: str
    tags: tuple[tuple[str, tuple[str, ...]], ...] = ()
    sign: int = 1

    @classmethod
    def parse(cls, text: str) -> Term:
        match = _TERM.match(text.strip())
        if match is None:
            raise SloError(f"bad SLI term {text!r}: expected metric{{tag:value,tag:a|b}}")
        tags = []
        for part in (match["tags"] or "").split(","):
            if not part.strip():
                continue
            name, sep, values = part.strip().partition(":")
            if not sep or not values:
                raise SloError(f"bad tag filter {part!r} in {text!r}")
            tags.append((name, tuple(values.split("|"))))
        return cls(match["metric"], tuple(tags), -1 if match["sign"] == "-" else 1)

    def matches(self, point: Point) -> bool:
        return point.name == self.metric and all(point.tag(k) in values for k, values in self.tags)


@dataclass(frozen=True, slots=True)
class Slo:
    id: str
    name: str
    description: str
    target: float  # percent
    kind: str  # ratio | threshold
    good: tuple[Term, ...] = ()
    total: tuple[Term, ...] = ()
    metric: str = ""
    percentile: float = 99.0
    threshold_ms: float = 0.0
    slice_s: int = 300

    def metrics(self) -> set[str]:
        return {t.metric for t in (*self.good, *self.total)} | ({self.metric} if self.metric else set())


@dataclass(frozen=True, slots=True)
class Definitions:
    window: str
    slos: tuple[Slo, ...]

    def metrics(self) -> set[str]:
        return set().union(*(s.metrics() for s in self.slos))

    def get(self, slo_id: str) -> Slo:
        for slo in self.slos:
            if slo.id == slo_id:
                return slo
        raise KeyError(slo_id)


def parse(doc: Mapping[str, Any]) -> Definitions:
    """Definitions from the YAML document; :class:`SloError` names the first problem."""
    window = str(doc.get("window", ""))
    if window not in ("7d", "30d", "90d"):
        raise SloError(f"window must be 7d, 30d or 90d, got {window!r}")
    slos = []
    seen: set[str] = set()
    for raw in doc.get("slos") or ():
        sid = str(raw.get("id", ""))
        if not re.fullmatch(r"[a-z][a-z0-9_]*", sid) or sid in seen:
            raise SloError(f"SLO id {sid!r} must be unique, lower case and [a-z0-9_]")
        seen.add(sid)
        target = float(raw.get("target", 0))
        if not 0 < target < 100:
            raise SloError(f"{sid}: target must be a percentage between 0 and 100, got {target}")
        sli = raw.get("sli") or {}
        kind = sli.get("kind")
        name, description = str(raw["name"]), " ".join(str(raw.get("description", "")).split())
        if kind == "ratio":
            good = tuple(Term.parse(t) for t in sli.get("good") or ())
            total = tuple(Term.parse(t) for t in sli.get("total") or ())
            if not good or not total:
                raise SloError(f"{sid}: a ratio SLI needs good and total terms")
            slos.append(Slo(sid, name, description, target, "ratio", good=good, total=total))
        elif kind == "threshold":
            slice_s = int(sli.get("slice_s", 300))
            if slice_s not in (60, 300):
                raise SloError(f"{sid}: slice_s must be 60 or 300 (Datadog's time-slice intervals)")
            q = float(sli.get("percentile", 99))
            if q not in (50, 75, 90, 95, 99):
                raise SloError(f"{sid}: percentile must be one of 50, 75, 90, 95, 99")
            slos.append(Slo(sid, name, description, target, "threshold", metric=str(sli["metric"]), percentile=q,
                            threshold_ms=float(sli["threshold_ms"]), slice_s=slice_s))
        else:
            raise SloError(f"{sid}: sli.kind must be ratio or threshold, got {kind!r}")
    if not slos:
        raise SloError("no SLO defined")
    return Definitions(window, tuple(slos))


def load(path: Path = DEFAULT_PATH) -> Definitions:
    try:
        import yaml
    except ModuleNotFoundError:  # pragma: no cover - pyyaml is a dev dependency
        raise SloError("reading storm_tools/slos.yaml needs PyYAML: pip install pyyaml") from None
    return parse(yaml.safe_load(path.read_text()))


@dataclass(frozen=True, slots=True)
class Result:
    id: str
    name: str
    target: float
    value: float | None  # percent good; None when there were no events
    met: bool | None  # None: no data
    good: float = 0.0
    total: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "target": self.target, "value": self.value, "met": self.met,
                "good": self.good, "total": self.total, **self.detail}


def evaluate(defs: Definitions, collector: Collector, *, extra_bad: Mapping[str, float] | None = None) -> list[Result]:
    """Every SLO of ``defs`` over the points in ``collector``."""
    extra_bad = extra_bad or {}
    unknown = set(extra_bad) - {s.id for s in defs.slos}
    if unknown:
        raise SloError(f"extra_bad names unknown SLOs: {sorted(unknown)}")
    points = list(collector.points)
    return [_ratio(s, points, extra_bad.get(s.id, 0.0)) if s.kind == "ratio" else _threshold(s, points)
            for s in defs.slos]


def _sum(terms: tuple[Term, ...], points: list[Point]) -> float:
    return sum(t.sign * p.value for t in terms for p in points if t.matches(p))


def _ratio(slo: Slo, points: list[Point], extra_bad: float) -> Result:
    total = _sum(slo.total, points)
    good = _sum(slo.good, points) - extra_bad
    if total <= 0:
        return Result(slo.id, slo.name, slo.target, None, None, good, total)
    value = 100.0 * max(0.0, good) / total
    return Result(slo.id, slo.name, slo.target, value, value >= slo.target, good, total)


def _threshold(slo: Slo, points: list[Point]) -> Result:
    term = Term(slo.metric)
    mine = [p for p in points if term.matches(p)]
    if not mine:
        return Result(slo.id, slo.name, slo.target, None, None)
    start = min(p.at for p in mine)
    slices: dict[int, list[float]] = {}
    for p in mine:
        slices.setdefault(math.floor((p.at - start) / slo.slice_s), []).append(p.value)
    per_slice = {k: percentile(v, slo.percentile) or 0.0 for k, v in sorted(slices.items())}
    good = sum(1 for v in per_slice.values() if v <= slo.threshold_ms)
    value = 100.0 * good / len(per_slice)
    overall = percentile([p.value for p in mine], slo.percentile)
    detail = {f"p{int(slo.percentile)}_ms": overall, "threshold_ms": slo.threshold_ms, "slices": len(per_slice),
              "samples": len(mine)}
    return Result(slo.id, slo.name, slo.target, value, value >= slo.target, float(good), float(len(per_slice)),
                  detail)
