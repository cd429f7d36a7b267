"""A small DogStatsD receiver: parse datagrams, keep the points, answer totals, rates and percentiles.

Used by ``storm top`` (live figures), by :mod:`storm_tools.slo` (the SLOs evaluated over what a local run
emitted) and by the emission test.  It understands the DogStatsD text protocol v1.x as the ``datadog``
client writes it: ``name:value[:value…]|type[|@rate][|#tag:v,…][|c:…][|T…]``, several lines per packet.
"""

from __future__ import annotations

import asyncio
import math
import socket
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

KINDS = {"c": "count", "g": "gauge", "d": "distribution", "h": "distribution", "ms": "distribution", "s": "set"}


@dataclass(frozen=True, slots=True)
class Point:
    name: str
    kind: str  # count, gauge, distribution, set
    value: float
    tags: tuple[str, ...]
    at: float = 0.0  # receive time (time.time())

    def tag(self, name: str) -> str | None:
        prefix = name + ":"
        for tag in self.tags:
            if tag.startswith(prefix):
                return tag[len(prefix):]
        return None

    def matches(self, tags: dict[str, str]) -> bool:
        return all(self.tag(k) == v for k, v in tags.items())


def parse(datagram: bytes | str, at: float = 0.0) -> list[Point]:
    """The metric points of one packet; malformed lines, events (``_e``) and service checks (``_sc``) are
    skipped."""
    text = datagram.decode("utf-8", "replace") if isinstance(datagram, bytes) else datagram
    points = []
    for line in text.split("\n"):
        if not line or line.startswith(("_e{", "_sc|")):
            continue
        head, _, rest = line.partition("|")
        name, sep, raw_values = head.partition(":")
        fields = rest.split("|")
        kind = KINDS.get(fields[0]) if sep and fields else None
        if kind is None or not name:
            continue
        rate = 1.0
        tags: tuple[str, ...] = ()
        for field in fields[1:]:
            if field.startswith("@"):
                try:
                    rate = float(field[1:]) or 1.0
                except ValueError:
                    rate = 1.0
            elif field.startswith("#"):
                tags = tuple(t for t in field[1:].split(",") if t)
        for raw in raw_values.split(":"):
            try:
                value = float(raw)
            except ValueError:
                continue
            if kind == "count":
                value /= rate
            points.append(Point(name, kind, value, tags, at))
    return points


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class Collector:
    """Points received, optionally only those of the last ``window_s`` seconds."""

    def __init__(self, window_s: float | None = None) -> None:
        self.window_s = window_s
        self.points: deque[Point] = deque()
        self.started = time.time()
        self.packets = 0

    def add(self, points: Iterable[Point]) -> None:
        self.points.extend(points)
        if self.window_s is not None:
            horizon = time.time() - self.window_s
            while self.points and self.points[0].at < horizon:
                self.points.popleft()

    def feed(self, datagram: bytes | str) -> None:
        self.packets += 1
        self.add(parse(datagram, time.time()))

    def select(self, name: str, **tags: str) -> list[Point]:
        return [p for p in self.points if p.name == name and p.matches(tags)]

    def total(self, name: str, **tags: str) -> float:
        """Sum of a count over every series matching ``tags``."""
        return sum(p.value for p in self.select(name, **tags))

    def values(self, name: str, **tags: str) -> list[float]:
        return [p.value for p in self.select(name, **tags)]

    def latest_gauge(self, name: str, **tags: str) -> float | None:
        """The sum over series (by their tags) of each series' last value."""
        last: dict[tuple[str, ...], float] = {}
        for p in self.select(name, **tags):
            last[p.tags] = p.value
        return sum(last.values()) if last else None

    def names(self) -> set[str]:
        return {p.name for p in self.points}

    def processes(self) -> list[tuple[str, str]]:
        """(service, instance) of every process heard from, sorted."""
        return sorted({(p.tag("service") or "?", p.tag("instance") or "?") for p in self.points})


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.collector.feed(data)


async def listen(collector: Collector, host: str = "127.0.0.1", port: int = 8125, *,
                 sock: socket.socket | None = None) -> tuple[asyncio.DatagramTransport, int]:
    """Receive DogStatsD on ``host:port`` (0: any free port), or on ``sock`` (a UDP socket already bound),
    into ``collector``; returns the transport and the bound port.  Close the transport to stop."""
    loop = asyncio.get_running_loop()
    if sock is not None:
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(collector), sock=sock)
    else:
        transport, _ = await loop.create_datagram_endpoint(lambda: _Protocol(collector), local_addr=(host, port))
    return transport, int(transport.get_extra_info("sockname")[1])
