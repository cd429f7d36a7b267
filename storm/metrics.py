"""Metrics without cost on the hot path: local counters and samples, flushed to a sink on a timer.

Instrumented code never talks to the sink.  It holds instruments made once, at start-up, by
:class:`Metrics`: a :class:`Counter` is a plain int (``counter.value += 1``), a :class:`Sample` a bounded
list of latencies (a reservoir once full), and ``gauge_of``/``count_of`` read an int the code keeps anyway
(``gateway.connections``, ``hub.deliveries``).  Every ``STORM_METRICS_INTERVAL_S`` the flush turns them into a
few sink calls (count deltas, gauges, the sampled values).  With no agent configured the sink is the null
one, :meth:`Metrics.start` starts nothing and the counters are ints nobody reads.

Names and tags are checked against :mod:`storm.metrics_catalogue` when an instrument is created, so a name
outside the catalogue fails at start-up (and in the tests), never silently.  docs/observability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from storm.metrics_catalogue import (
    AUTH_REASONS,
    CLOSE_CODES,
    CONNECT_RESULTS,
    RATE_SCOPES,
    Kind,
    check,
)
from storm.ports.metrics import MetricsSink

log = logging.getLogger("storm.metrics")

SAMPLE_CAP = 512  # values kept per distribution and flush interval (a uniform reservoir beyond)
LOOP_PROBE_S = 0.25


class Counter:
    """A monotonically increasing count; the flush sends the delta."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, n: int = 1) -> None:
        self.value += n


class Sample:
    """Latencies (ms) of one flush interval: the first ``cap`` kept, then a uniform reservoir of all seen."""

    __slots__ = ("cap", "seen", "values")

    def __init__(self, cap: int = SAMPLE_CAP) -> None:
        self.cap = cap
        self.seen = 0
        self.values: list[float] = []

    def add(self, value: float) -> None:
        self.seen += 1
        if len(self.values) < self.cap:
            self.values.append(value)
            return
        slot = random.randrange(self.seen)  # sampling, not security
        if slot < self.cap:
            self.values[slot] = value

    def add_since(self, start: float) -> None:
        """Add the milliseconds from ``start`` (``time.monotonic()``) to now."""
        self.add((time.monotonic() - start) * 1000.0)

    def drain(self) -> list[float]:
        values, self.values, self.seen = self.values, [], 0
        return values


class NullSink:
    """A sink that drops everything: the default of a :class:`Metrics` built without one (unit tests, the
    session core's default) and, as ``storm.adapters.null_metrics.NullMetrics``, the sink when no agent is
    configured."""

    enabled = False

    def count(self, name: str, value: int, tags: Sequence[str]) -> None:
        pass

    def gauge(self, name: str, value: float, tags: Sequence[str]) -> None:
        pass

    def distribution(self, name: str, value: float, tags: Sequence[str]) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class _Gauge:
    """A gauge read by a callable (``gauge_of``) or an awaitable one (``gauge_polled``), at most every
    ``every_s`` (0: at every flush); in between, its last value is sent again."""

    name: str
    tags: tuple[str, ...]
    read: Callable[[], Any]
    every_s: float = 0.0
    due: float = 0.0  # time.monotonic() from which it is read again
    value: float | None = None  # the last read; None: nothing to send

    def due_at(self, now: float) -> bool:
        """Whether to read it now; if so, not again for ``every_s`` (a failing read is not hammered either)."""
        if now < self.due:
            return False
        self.due = now + self.every_s
        return True


def _tags(tags: dict[str, str]) -> tuple[str, ...]:
    return tuple(f"{k}:{v}" for k, v in sorted(tags.items()))


class Metrics:
    """One per process (``Services.metrics``): the instruments, the flush timer and the process probes."""

    def __init__(self, sink: MetricsSink | None = None, *, interval_s: float = 2.0) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s!r}")
        self.sink: MetricsSink = sink if sink is not None else NullSink()
        self.interval_s = interval_s
        self._counters: dict[tuple[str, tuple[str, ...]], Counter] = {}
        self._sent: dict[tuple[str, tuple[str, ...]], int] = {}
        self._counts_of: list[tuple[str, tuple[str, ...], Callable[[], int]]] = []
        self._gauges_of: list[_Gauge] = []
        self._polled: list[_Gauge] = []
        self._samples: dict[tuple[str, tuple[str, ...]], Sample] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._gc_started = 0.0
        self._gc_sample: Sample | None = None
        self._state = "new"

    @property
    def enabled(self) -> bool:
        return bool(self.sink.enabled)

    # -- instruments (made once, at start-up) -----------------------------------------------------------
    def counter(self, name: str, **tags: str) -> Counter:
        key = self._key(name, "count", tags)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = Counter()
        return counter

    def sample(self, name: str, **tags: str) -> Sample:
        key = self._key(name, "distribution", tags)
        sample = self._samples.get(key)
        if sample is None:
            sample = self._samples[key] = Sample()
        return sample

    def count_of(self, name: str, read: Callable[[], int], **tags: str) -> None:
        """Emit the growth of ``read()`` (a count the code keeps anyway) at every flush, zero included."""
        key = self._key(name, "count", tags)
        self._counts_of.append((key[0], key[1], read))

    def gauge_of(self, name: str, read: Callable[[], float | None], *, every_s: float = 0.0, **tags: str) -> None:
        """Emit ``read()`` as a gauge at every flush (None: nothing this time); with ``every_s``, read at most
        that often, its last value sent again at the flushes in between."""
        key = self._key(name, "gauge", tags)
        self._gauges_of.append(_Gauge(key[0], key[1], read, every_s))

    def gauge_polled(self, name: str, fetch: Callable[[], Awaitable[float | None]], *, every_s: float = 0.0,
                     **tags: str) -> None:
        """A gauge read by awaiting ``fetch()`` before a timed flush (e.g. an admin API), at most 2 s; with
        ``every_s``, fetched at most that often, its last value sent again at the flushes in between."""
        key = self._key(name, "gauge", tags)
        self._polled.append(_Gauge(key[0], key[1], fetch, every_s))

    async def poll(self) -> None:
        """Await the polled gauges that are due and hand every value to the sink (the timer calls it before
        ``flush``)."""
        now = time.monotonic()
        for polled in self._polled:
            if polled.due_at(now):
                try:
                    polled.value = await asyncio.wait_for(polled.read(), 2.0)
                except Exception:
                    polled.value = None
                    log.warning("polling %s failed", polled.name, exc_info=True)
            if polled.value is not None:
                self.sink.gauge(polled.name, float(polled.value), polled.tags)

    @staticmethod
    def _key(name: str, kind: Kind, tags: dict[str, str]) -> tuple[str, tuple[str, ...]]:
        check(name, kind, tags)
        return name, _tags(tags)

    # -- flushing ---------------------------------------------------------------------------------------
    def flush(self) -> None:
        """Send count deltas, gauges and the sampled values to the sink (also callable by tests)."""
        sink = self.sink
        for key, counter in self._counters.items():  # zero deltas too: a monitor on a rare event has data
            value = counter.value
            sink.count(key[0], value - self._sent.get(key, 0), key[1])
            self._sent[key] = value
        for name, tags, read in self._counts_of:
            key = (name, (*tags, "\x00read"))  # apart from counter() keys of the same name
            try:
                value = int(read())
            except Exception:
                log.exception("reading %s failed", name)
                continue
            sink.count(name, value - self._sent.get(key, 0), tags)
            self._sent[key] = value
        now = time.monotonic()
        for gauge in self._gauges_of:
            if gauge.due_at(now):
                try:
                    gauge.value = gauge.read()
                except Exception:
                    gauge.value = None
                    log.exception("reading %s failed", gauge.name)
            if gauge.value is not None:
                sink.gauge(gauge.name, float(gauge.value), gauge.tags)
        for (name, tags), sample in self._samples.items():
            for ms in sample.drain():
                sink.distribution(name, ms, tags)
        sink.flush()

    # -- lifecycle --------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the flush timer and the loop-lag and GC probes; nothing at all when the sink drops."""
        if self._state != "new":
            raise RuntimeError(f"metrics already {self._state}")
        self._state = "running"
        if not self.enabled:
            return
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._flush_every()), loop.create_task(self._probe_loop())]
        self._gc_sample = self.sample("storm.process.gc_pause")
        gc.callbacks.append(self._on_gc)

    async def stop(self) -> None:
        """Stop the timers, flush what is left and close the sink.  Idempotent."""
        if self._state == "stopped":
            return
        was_running = self._state == "running"
        self._state = "stopped"
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._on_gc)
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if was_running and self.enabled:
            try:
                self.flush()
            finally:
                self.sink.close()

    async def _flush_every(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.poll()
                self.flush()
            except Exception:  # metrics are best effort: never take the process down
                log.exception("metrics flush failed")

    async def _probe_loop(self) -> None:
        lag = self.sample("storm.process.loop_lag")
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LOOP_PROBE_S)
            lag.add(max(0.0, loop.time() - before - LOOP_PROBE_S) * 1000.0)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        elif self._gc_sample is not None and self._gc_started:
            self._gc_sample.add((time.perf_counter() - self._gc_started) * 1000.0)
            self._gc_started = 0.0


def _after_pass_now(fn: Callable[[], None]) -> None:
    fn()


class GatewayMeters:
    """The instruments of the gateway and its session core (storm/protocol/session.py), made once per gateway.

    ``after_pass`` runs a function once the gateway's writer has written what is queued now (the gateway
    sets it to its flusher's; by default at once): ack and delivery latencies end when the frame is written.
    """

    def __init__(self, metrics: Metrics | None = None) -> None:
        m = metrics if metrics is not None else Metrics()
        self.metrics = m
        self.connects = {r: m.counter("storm.gateway.connects", result=r) for r in CONNECT_RESULTS}
        self.connect_time = m.sample("storm.gateway.connect_time")
        self.disconnects = {c: m.counter("storm.gateway.disconnects", code=c) for c in CLOSE_CODES}
        self.resumes = {flag: m.counter("storm.gateway.resumes", recovered=str(flag).lower())
                        for flag in (True, False)}
        self.resume_gap = m.sample("storm.gateway.resume_gap")
        self.ack_latency = m.sample("storm.publish.ack_latency")
        self.delivery_latency = m.sample("storm.delivery.latency")
        self.ratelimit = {s: m.counter("storm.ratelimit.refused", scope=s) for s in RATE_SCOPES}
        self.auth_failures = {r: m.counter("storm.auth.failures", reason=r) for r in AUTH_REASONS}
        self._commands: dict[tuple[str, str], Counter] = {}
        self.after_pass: Callable[[Callable[[], None]], None] = _after_pass_now

    def connected(self, elapsed_ms: float) -> None:
        """A session sent ``hello``, ``elapsed_ms`` after the upgrade."""
        self.connects["ok"].value += 1
        self.connect_time.add(elapsed_ms)

    def refused(self, close_code: int, *, invalid_token: bool) -> None:
        """A connect ended before ``hello`` with ``close_code``; ``invalid_token``: the token was checked and
        refused (else the first frame was not an auth)."""
        if close_code == 4001:
            self.auth_failed("invalid_token" if invalid_token else "not_auth", "unauthenticated")
        elif close_code == 4003:
            self.auth_failed("timeout", "auth_timeout")
        elif close_code == 4010:
            self.auth_failed("revoked", "revoked")
        elif close_code == 4029:
            self.connects["quota"].value += 1
        else:
            self.connects["internal"].value += 1

    def auth_failed(self, reason: str, result: str) -> None:
        """An authentication failed (``reason`` of storm.auth.failures) and the connect ended with ``result``."""
        self.auth_failures[reason].value += 1
        self.connects[result].value += 1

    def command(self, op: str, result: str) -> None:
        counter = self._commands.get((op, result))
        if counter is None:
            try:
                counter = self.metrics.counter("storm.commands", op=op, result=result)
            except ValueError:  # an op or code the catalogue does not list: a bug, logged once, not emitted
                log.error("storm.commands: op=%s result=%s is not in the catalogue", op, result)
                counter = Counter()
            self._commands[(op, result)] = counter
        counter.value += 1

    def disconnect(self, code: int | None) -> None:
        counter = self.disconnects.get(str(code)) if code is not None else None
        (counter or self.disconnects["client"]).value += 1

    def resumed(self, recovered: bool, oldest_missed: float, now: float) -> None:
        """A subscribe with ``since``; ``oldest_missed`` is the broker time (epoch s) of the first replayed
        event, 0 when none was replayed."""
        self.resumes[recovered].value += 1
        if oldest_missed > 0:
            self.resume_gap.add(max(0.0, now - oldest_missed) * 1000.0)

    def ack_written(self, read_at: float) -> None:
        """A publish read at ``read_at`` (``time.monotonic()``) was acknowledged: time it to the write."""
        sample = self.ack_latency
        self.after_pass(lambda: sample.add_since(read_at))

    def delivered(self, published_at: float) -> None:
        """A channel event appended at ``published_at`` (epoch seconds) was queued for the subscribers."""
        sample = self.delivery_latency
        self.after_pass(lambda: sample.add(max(0.0, time.time() - published_at) * 1000.0))
