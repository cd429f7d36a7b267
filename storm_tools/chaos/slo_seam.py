"""The one place the chaos experiments judge a run against the SLOs: the shared definitions of storm_tools/slos.yaml,
evaluated by :mod:`storm_tools.slo` (the same file Datadog's SLOs are generated from; docs/observability.md).

During the baseline and the method the STORM processes send their metrics to a DogStatsD receiver on the
port the chaos context names (``storm chaos run`` starts the cluster with ``DD_AGENT_HOST=127.0.0.1`` and
that ``DD_DOGSTATSD_PORT``); :func:`collect` receives them for as long as the load runs.  :func:`evaluate`
runs every SLO over those points, adding the driver's own findings as bad events of
``acked_delivered`` (acked messages lost or never stored, which the metrics cannot see).

An SLO without data in the window (no reconnect happened, so no ``resume_gap``) is reported as not judged
(``ok: null``) unless the load must have produced it (:data:`MUST_HAVE_DATA`): then missing data fails.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

from storm_tools.slo import evaluate as evaluate_slos
from storm_tools.slo import load
from storm_tools.statsd import Collector, Point, listen

MUST_HAVE_DATA = frozenset({"acked_delivered", "publish_ack_p99", "delivery_p99"})  # the driver publishes


@dataclass(frozen=True)
class SloVerdict:
    slo: str
    name: str
    value: float | None  # percent good (ratio: good events; threshold: good time slices)
    target: float
    ok: bool | None  # None: not judged (no data, and none was required)
    detail: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.asynccontextmanager
async def collect(port: int) -> AsyncIterator[Collector]:
    """Receive the cluster's DogStatsD points on 127.0.0.1:``port`` while the block runs (0: metrics off)."""
    collector = Collector()
    if not port:
        yield collector
        return
    transport, _ = await listen(collector, "127.0.0.1", port)
    try:
        yield collector
        await asyncio.sleep(0)
    finally:
        transport.close()


def points_to_json(collector: Collector) -> list[dict[str, Any]]:
    return [asdict(p) for p in collector.points]


def points_from_json(rows: list[dict[str, Any]]) -> Collector:
    collector = Collector()
    collector.add(Point(r["name"], r["kind"], float(r["value"]), tuple(r["tags"]), float(r["at"])) for r in rows)
    return collector


def evaluate(result: dict[str, Any], points: list[dict[str, Any]]) -> list[SloVerdict]:
    """Every SLO of storm_tools/slos.yaml over ``points``, with the driver's lost and unstored messages as bad
    ``acked_delivered`` events."""
    extra_bad = {"acked_delivered": float(result.get("lost_messages", 0) + result.get("not_stored", 0))}
    verdicts = []
    for r in evaluate_slos(load(), points_from_json(points), extra_bad=extra_bad):
        ok = r.met if r.met is not None else (False if r.id in MUST_HAVE_DATA else None)
        detail = {k: v for k, v in r.as_dict().items() if k not in ("id", "name", "target", "value", "met")}
        verdicts.append(SloVerdict(r.id, r.name, r.value, r.target, ok, detail))
    return verdicts
