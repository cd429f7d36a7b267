"""How many records wait on a work subscription (``storm.consumer.backlog``), per broker adapter.

* Pulsar: one admin call, ``GET /admin/v2/broker-stats/topics`` (every topic the broker serves, with its
  subscriptions' ``msgBacklog``), summed over the channel topics' subscriptions named ``name``.  One call
  per flush interval whatever the number of channels; with several brokers, point
  ``STORM_PULSAR_ADMIN_URL`` at each (the figure is then per broker and Datadog sums the gauges).
* The embedded broker: the records its work queue holds, pending and delayed (read, never changed).
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("storm.metrics.backlog")


def sum_backlog(stats: dict[str, Any], subscription: str) -> int:
    """Sum ``msgBacklog`` of ``subscription`` over a ``broker-stats/topics`` document."""
    total = 0
    for bundles in stats.values():
        for kinds in bundles.values():
            for topics in kinds.values():
                for topic in topics.values():
                    sub = (topic.get("subscriptions") or {}).get(subscription)
                    if sub:
                        total += int(sub.get("msgBacklog", 0))
    return total


class PulsarBacklog:
    def __init__(self, admin_url: str, subscription: str, *, timeout_s: float = 2.0) -> None:
        self._url = admin_url.rstrip("/") + "/admin/v2/broker-stats/topics"
        self._subscription = subscription
        self._timeout = timeout_s

    async def __call__(self) -> float | None:
        import httpx

        try:
            async with httpx.AsyncClient(timeout=self._timeout) as http:
                resp = await http.get(self._url)
                resp.raise_for_status()
                return float(sum_backlog(resp.json(), self._subscription))
        except (httpx.HTTPError, ValueError) as exc:
            log.debug("backlog of %s unavailable: %r", self._subscription, exc)
            return None


class MemoryBacklog:
    def __init__(self, broker: Any, subscription: str) -> None:
        self._broker = broker
        self._subscription = subscription

    async def __call__(self) -> float | None:
        queue = getattr(self._broker, "_work", {}).get(self._subscription)
        if queue is None:
            return 0.0
        pending = sum(len(items) for items in queue._pending.values())
        return float(pending + len(queue._delayed))
