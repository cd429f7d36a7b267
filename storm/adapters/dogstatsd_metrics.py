"""The metrics sink on DogStatsD (the ``datadog`` package), for a Datadog Agent or ``storm top``.

Configured by the standard variables (read through :class:`storm.config.Config`): ``DD_DOGSTATSD_URL``
(``udp://host:port`` or ``unix:///path``) or ``DD_AGENT_HOST`` + ``DD_DOGSTATSD_PORT``; ``DD_ENV``,
``DD_SERVICE`` and ``DD_VERSION`` become the ``env``, ``service`` and ``version`` tags (``service`` defaults
to the process's role).  The client aggregates counts and gauges and buffers packets itself (client-side
aggregation and buffering on; a background thread sends every ``flush_interval``), and its own telemetry is
off.  UDP sends never block; a missing agent only loses packets, and says so once a minute per process (the
client's own "Error submitting packet ... Connection refused" warning, one per failed send, is rate limited
by :class:`DroppedPacketLog`: an agent that is down, or a collector that listens only part of the time such
as the chaos driver's, used to flood the log with one warning per flush and process).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlparse

log = logging.getLogger("storm.metrics.dogstatsd")

FLUSH_INTERVAL_S = 0.5  # the client's own buffer flush; our counts are already aggregated per interval


class DroppedPacketLog(logging.Filter):
    """On the ``datadog.dogstatsd`` logger: lets the client's first "Error submitting packet" warning through,
    then at most one per ``every_s`` telling how many were held back; other records pass untouched."""

    MARK = "Error submitting packet"

    def __init__(self, every_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.every_s, self.clock = every_s, clock
        self._last: float | None = None
        self.held_back = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if not (isinstance(record.msg, str) and record.msg.startswith(self.MARK)):
            return True
        now = self.clock()
        if self._last is not None and now - self._last < self.every_s:
            self.held_back += 1
            return False
        if self.held_back:
            record.msg = f"{record.msg} ({self.held_back} more such packets dropped in the last {self.every_s:g} s)"
        self._last, self.held_back = now, 0
        return True


def _limit_dropped_packet_log() -> None:
    """Once per process: the filter on the client library's logger."""
    logger = logging.getLogger("datadog.dogstatsd")
    if not any(isinstance(f, DroppedPacketLog) for f in logger.filters):
        logger.addFilter(DroppedPacketLog())


@dataclass(frozen=True, slots=True)
class Target:
    host: str | None = None
    port: int = 8125
    socket_path: str | None = None

    @classmethod
    def parse(cls, url: str, agent_host: str, port: int) -> Target | None:
        """The agent address: ``url`` wins over ``agent_host``/``port``; None when neither is set."""
        if url:
            parsed = urlparse(url)
            if parsed.scheme == "unix":
                return cls(socket_path=parsed.path)
            if parsed.scheme == "udp" and parsed.hostname:
                return cls(host=parsed.hostname, port=parsed.port or 8125)
            raise ValueError(f"DD_DOGSTATSD_URL={url!r}: expected udp://host:port or unix:///path")
        if agent_host:
            return cls(host=agent_host, port=port)
        return None


class DogStatsdMetrics:
    enabled = True

    def __init__(self, target: Target, constant_tags: Sequence[str]) -> None:
        from datadog.dogstatsd.base import DogStatsd  # the optional extra storm-chat[datadog]

        _limit_dropped_packet_log()
        self.target = target
        self._client = DogStatsd(
            host=target.host, port=target.port, socket_path=target.socket_path,
            disable_aggregation=False, disable_buffering=False, flush_interval=FLUSH_INTERVAL_S,
            disable_telemetry=True, constant_tags=[], origin_detection_enabled=False,
        )
        # the client adds DD_ENV/DD_SERVICE/DD_VERSION from the environment itself; ours are already resolved
        self._client.constant_tags = list(constant_tags)
        self._closed = False

    def count(self, name: str, value: int, tags: Sequence[str]) -> None:
        self._client.count(name, value, tags=list(tags))

    def gauge(self, name: str, value: float, tags: Sequence[str]) -> None:
        self._client.gauge(name, value, tags=list(tags))

    def distribution(self, name: str, value: float, tags: Sequence[str]) -> None:
        self._client.distribution(name, value, tags=list(tags))

    def flush(self) -> None:
        try:
            self._client.flush_aggregated_metrics()
            self._client.flush_buffered_metrics()
        except Exception:  # metrics are best effort
            log.debug("dogstatsd flush failed", exc_info=True)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._client.stop()
            self._client.close_socket()
        except Exception:
            log.debug("dogstatsd close failed", exc_info=True)
