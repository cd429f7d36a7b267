"""Metrics port: where a process's figures go (DogStatsD, nowhere, a test's list).  docs/observability.md.

The sink is called only by :class:`storm.metrics.Metrics` when it flushes (every ``STORM_METRICS_INTERVAL_S``),
never on the hot path: instrumented code counts in plain ints and appends sampled latencies to a bounded
list, and the flush turns those into a handful of sink calls.  A sink never blocks the event loop for long
and never raises for a metric it cannot send (metrics are best effort).

``tags`` are ``"name:value"`` strings of the catalogue's enums; the process tags (service, env, version,
instance) are the sink's own constant tags.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class MetricsSink(Protocol):
    def count(self, name: str, value: int, tags: Sequence[str]) -> None:
        """Add ``value`` events to the counter ``name`` (a delta since the previous flush)."""
        ...

    def gauge(self, name: str, value: float, tags: Sequence[str]) -> None:
        """Set the current value of ``name``."""
        ...

    def distribution(self, name: str, value: float, tags: Sequence[str]) -> None:
        """One sampled value of ``name`` (global percentiles are computed by the agent/Datadog)."""
        ...

    def flush(self) -> None:
        """Hand whatever the sink buffered to its transport (called once per flush)."""
        ...

    def close(self) -> None:
        """Flush and release the transport.  Idempotent."""
        ...

    @property
    def enabled(self) -> bool:
        """False for a sink that drops everything: :class:`storm.metrics.Metrics` then never flushes."""
        ...
