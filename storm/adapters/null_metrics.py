"""The metrics sink when no DogStatsD agent is configured: it drops everything (storm/ports/metrics.py).

The same class as the default sink of :class:`storm.metrics.Metrics` (the core cannot import an adapter, so
the class lives there and this module names it for the bootstrap)."""

from __future__ import annotations

from storm.metrics import NullSink as NullMetrics

__all__ = ["NullMetrics"]
