"""Process figures for every role: resident memory, CPU and open descriptors (psutil), read at each flush."""

from __future__ import annotations

import psutil

from storm.metrics import Metrics


def install(metrics: Metrics) -> None:
    """Register ``storm.process.rss``, ``storm.process.cpu`` and ``storm.process.open_fds`` as gauges."""
    process = psutil.Process()
    process.cpu_percent(None)  # the first call starts the interval; each flush then reads the CPU since the last

    def open_fds() -> float | None:
        try:
            return float(process.num_fds())
        except (AttributeError, psutil.Error):  # not on this platform
            return None

    metrics.gauge_of("storm.process.rss", lambda: float(process.memory_info().rss))
    metrics.gauge_of("storm.process.cpu", lambda: process.cpu_percent(None))
    metrics.gauge_of("storm.process.open_fds", open_fds)
