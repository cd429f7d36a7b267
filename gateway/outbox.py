"""Per-connection outgoing queue: bounded, coalescing, written at once or by the gateway's flusher (ADR 0002,
0006).

* Bounded: more than ``max_events`` events or ``max_bytes`` bytes waiting means the client cannot keep up;
  the queue is dropped and the connection closed with 4008 (SLOW_CONSUMER).  The client resumes with its
  last offsets, so nothing is lost for it, and the gateway's memory never grows without bound.
* Coalescing: everything queued (up to ``coalesce_max_bytes``) leaves as one text frame, events separated
  by ``\\n``.  The faster events arrive relative to the socket draining, the more share one frame and the
  cheaper each delivery becomes.
* Adaptive write delay (``STORM_WRITE_DELAY_S`` = 0, the default; ADR 0006): while the loop has time, an
  event pushed to an outbox with nothing queued is written to the socket at once, inside the push (the
  floor's one write per delivery, no list, no pass).  "Has time" is the writing duty: the flusher times the
  loop turn that wrote (``w``) and keeps the share of the last ``DUTY_WINDOW_S`` spent in such turns (an
  exponentially decaying sum of ``w``; several turns of one burst count as their total, not each as a full
  loop).  Only when writing at once takes more than ``ENTER_DUTY`` of the loop does it hold writes:
  for ``LOAD_FACTOR × w`` (at most ``STORM_WRITE_DELAY_MAX_S``); events pushed during the hold are queued
  and leave in one pass at its end, one frame per connection.  A long turn alone is no load: one broadcast
  to many sockets, 20 ms before the next one, is written at once every time.  During holds each pass is
  timed the same way (its own time plus how late its timer fired; a hold shrinks by at most half per pass,
  so a loop under steady load keeps batching), and its duty counted as if its events had been written one
  by one; writing at once resumes when that falls below ``EXIT_DUTY``, or on a pass with nothing to write.
* Fixed write delay (``STORM_WRITE_DELAY_S`` > 0): nothing is written at once; one pass ``write_delay_s``
  after the first event of a tick (centrifuge's write delay), as before issue 11.
* No task per connection: a queued push only marks the outbox dirty; one :class:`Flusher` per gateway
  writes every dirty outbox in one pass.  A send is driven synchronously (:func:`drive`); only a send that
  has to wait (socket buffer full) gets a task, and that outbox is skipped by later passes until the send
  is done: a slow socket never holds up the others and frames of one connection never overtake each other
  (a write at once happens only when nothing is queued and no send is waiting).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Coroutine, Generator
from typing import Any

log = logging.getLogger("storm.gateway.outbox")

SendFrame = Callable[[bytes], Coroutine[Any, Any, Any]]
DirectWrite = Callable[[bytes], bool]  # write one frame now; False: not possible, use SendFrame


class _Resume:
    """Awaitable that carries on a coroutine whose first step already ran (it yielded ``pending``)."""

    __slots__ = ("_coro", "_pending")

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self._coro = coro
        self._pending = pending

    def __await__(self) -> Generator[Any, None, Any]:
        coro, pending = self._coro, self._pending
        self._pending = None
        while True:
            try:
                yield pending  # the task waits for what the coroutine waits for
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation goes on into the coroutine
                try:
                    pending = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    pending = coro.send(None)
                except StopIteration as stop:
                    return stop.value


async def _finish(coro: Coroutine[Any, Any, Any], pending: Any) -> Any:
    return await _Resume(coro, pending)


def drive(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any] | None:
    """Run ``coro`` now, in the caller's stack, up to its first real wait (Python 3.12's eager tasks).

    Returns None when it completed (the usual case for a socket send: write + drain that does not need to
    wait), else a task that finishes it.  Exceptions of the synchronous part propagate."""
    try:
        pending = coro.send(None)
    except StopIteration:
        return None
    return asyncio.get_running_loop().create_task(_finish(coro, pending))


LOAD_FACTOR = 3.0  # a loop turn (or pass) that wrote for w seconds holds writes for 3w: writing takes <= 1/4
MIN_HOLD_S = 0.001  # a shorter hold is not worth a timer: keep writing at once
ENTER_DUTY = 0.85  # writing at once took more than this share of the loop lately: hold writes (0.6 held
# at 50 msg/s on a quiet machine, where the whole storm dev process is ~57 % busy: p99 46 ms instead of 12)
EXIT_DUTY = 0.5  # during holds, writing the passes' events at once would take less than this share: resume
DUTY_WINDOW_S = 0.05  # "lately": busy time decays with this time constant (several broadcasts at 50/s)


class Flusher:
    """Writes the dirty outboxes of one gateway, and decides whether a push may write at once."""

    __slots__ = ("_after", "_delay", "_dirty", "_due", "_handle", "_hold", "_last", "_max", "_t0", "clock", "duty",
                 "events", "frames", "holds", "immediate", "overflows", "passes", "timing")

    def __init__(self, write_delay_s: float = 0.0, *, max_delay_s: float = 0.025) -> None:
        self._delay = write_delay_s  # > 0: the fixed write delay; 0: adaptive, holds of at most max_delay_s
        self._max = max_delay_s
        self._dirty: list[Outbox] = []
        self._handle: asyncio.TimerHandle | asyncio.Handle | None = None
        self._due = 0.0  # loop time the scheduled pass is due at (its lag is load too)
        self._t0 = 0.0
        self._hold = 0.0  # the current hold (0 while writing at once)
        self._last: float | None = None  # clock time the last timed turn or pass started
        self.duty = 0.0  # share of the last DUTY_WINDOW_S that writing (at once) took: decaying busy time
        self.events = 0  # events and frames written by the current pass (its events per frame)
        self.frames = 0
        self.clock: Callable[[], float] = time.perf_counter  # times the work (tests set a manual one)
        self.immediate = write_delay_s == 0  # a push to an empty outbox may write at once
        self.timing = False  # the current loop turn wrote at once and is being timed
        self.passes = 0
        self.holds = 0  # times the loop was found busy and writes were held (adaptive mode)
        self.overflows = 0  # outboxes that overflowed (storm.outbox.overflows)
        self._after: list[Callable[[], None]] = []  # run after the next pass (metrics: write latencies)

    @property
    def adaptive(self) -> bool:
        return self._delay == 0

    def _schedule(self) -> None:
        loop = asyncio.get_running_loop()
        if self._delay > 0:
            self._due = loop.time() + self._delay
            self._handle = loop.call_later(self._delay, self.run)
        else:
            self._due = loop.time()
            self._handle = loop.call_soon(self.run)

    def mark(self, box: Outbox) -> None:
        self._dirty.append(box)
        if self._handle is None:
            self._schedule()

    def begin_turn(self) -> None:
        """A push wrote at once: time this loop turn, up to the next one (once per turn, not per write)."""
        self.timing = True
        self._t0 = self.clock()
        asyncio.get_running_loop().call_soon(self._end_turn)

    def _end_turn(self) -> None:
        self.timing = False
        if self.immediate:
            work = self.clock() - self._t0
            if self._load(self._t0, work, 1.0) > ENTER_DUTY:
                self._rest(work)

    def _load(self, start: float, work: float, per_frame: float) -> float:
        """The writing duty, updated with a turn or pass that started at ``start`` and wrote for ``work``
        seconds, ``per_frame`` events per frame (what writing them at once costs): the busy time so far,
        decayed over the time since the last one, plus this one's, over ``DUTY_WINDOW_S``."""
        last, self._last = self._last, start
        if last is not None:  # what was busy before fades with the time since (a window of DUTY_WINDOW_S)
            self.duty *= math.exp(-max(0.0, start - last) / DUTY_WINDOW_S)
        self.duty += max(0.0, work) * per_frame / DUTY_WINDOW_S
        return self.duty

    def _rest(self, work: float) -> None:
        """After ``work`` seconds of writing: write at once again, or hold writes for a while (adaptive).  A
        hold shrinks to at most half of the last one per pass, so a loop under steady load keeps batching;
        a pass whose duty fell below ``EXIT_DUTY``, or with nothing to write (:meth:`run`), goes back to
        writing at once."""
        hold = min(self._max, max(work * LOAD_FACTOR, self._hold / 2))
        if hold < MIN_HOLD_S:
            self._hold = 0.0
            self.immediate = True
            return
        self._hold = hold
        self.immediate = False
        self.holds += 1
        if self._handle is None:  # else a pass is due on the next turn; it rests in turn
            loop = asyncio.get_running_loop()
            self._due = loop.time() + hold
            self._handle = loop.call_later(hold, self.run)

    def run(self) -> None:
        """Write every outbox marked since the last pass (also callable directly, e.g. by tests)."""
        start = self.clock()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        dirty, self._dirty = self._dirty, []
        self.passes += 1
        self.events = self.frames = 0
        for box in dirty:
            box.write()
        if self._after:
            after, self._after = self._after, []
            for fn in after:
                fn()
        if self._delay == 0:
            if dirty:  # the pass's own time, and how late its timer fired (the loop was busy)
                work = self.clock() - start
                lag = max(0.0, asyncio.get_running_loop().time() - self._due)
                duty = self._load(start, work, self.events / self.frames if self.frames else 1.0)
                if self.immediate and duty <= ENTER_DUTY:
                    return  # a pass while writing at once (a send had waited, say): the loop still has time
                if not self.immediate and duty < EXIT_DUTY:
                    self._hold = 0.0  # the load is gone: write at once again
                    self.immediate = True
                    return
                self._rest(work + lag)
            else:
                self._hold = 0.0
                self.immediate = True

    def after_pass(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` once what is queued now has been written: at once when nothing is queued (a write at
        once already happened), else after the next pass (one is scheduled if none is)."""
        if not self._dirty:
            fn()
            return
        self._after.append(fn)
        if self._handle is None:
            self._schedule()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._dirty.clear()
        self._after.clear()
        self._hold = 0.0
        self._last = None
        self.duty = 0.0
        self.immediate = self._delay == 0


class Outbox:
    __slots__ = ("_bytes", "_coalesce", "_direct", "_events", "_flusher", "_marked", "_max_bytes", "_max_events",
                 "_on_overflow", "_send", "_writer", "closed", "frames_sent")

    def __init__(
        self,
        send: SendFrame,
        on_overflow: Callable[[], None],
        *,
        max_events: int,
        max_bytes: int,
        coalesce_max_bytes: int,
        flusher: Flusher | None = None,
        direct: DirectWrite | None = None,
    ) -> None:
        self._send = send
        self._direct = direct
        self._on_overflow = on_overflow
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._coalesce = coalesce_max_bytes
        self._flusher = flusher or Flusher()
        self._events: list[bytes] = []  # a list, not a deque: 56 bytes when empty instead of ~600
        self._bytes = 0
        self._marked = False  # waiting in the flusher's dirty list
        self._writer: asyncio.Task[Any] | None = None  # finishes a send that had to wait
        self.closed = False
        self.frames_sent = 0

    def __len__(self) -> int:
        return len(self._events)

    def push(self, data: bytes) -> bool:
        """Queue one encoded event (the session's Transport.send), or write it at once when nothing is queued
        and the flusher says the loop has time.  Hot path: no task, no await, no allocation when written."""
        if self.closed:
            return False
        events = self._events
        if not events:  # nothing queued (so no bytes either): the bound is only the event's own size
            flusher = self._flusher
            if flusher.immediate and self._writer is None and self._direct is not None \
                    and len(data) <= self._max_bytes:
                if not flusher.timing:
                    flusher.begin_turn()
                if self._direct(data):
                    self.frames_sent += 1
                    return True
        size = len(data)
        if len(events) >= self._max_events or self._bytes + size > self._max_bytes:
            self.closed = True
            events.clear()
            self._bytes = 0
            self._flusher.overflows += 1
            self._on_overflow()
            return False
        events.append(data)
        self._bytes += size
        if not self._marked and self._writer is None:
            self._marked = True
            self._flusher.mark(self)
        return True

    def _take(self) -> bytes:
        """The next frame: the oldest events that fit in ``coalesce_max_bytes`` (at least one), joined."""
        events = self._events
        count, size = 1, len(events[0])
        limit = self._coalesce
        while count < len(events) and size + 1 + len(events[count]) <= limit:
            size += 1 + len(events[count])
            count += 1
        flusher = self._flusher
        flusher.events += count
        flusher.frames += 1
        if count == len(events):  # the usual case: everything queued leaves, no slice allocated
            frame = events[0] if count == 1 else b"\n".join(events)
            events.clear()
        else:
            frame = events[0] if count == 1 else b"\n".join(events[:count])
            del events[:count]
        self._bytes -= size - (count - 1)
        return frame

    def write(self) -> None:
        """Hand what is queued to the socket, frame by frame, until a send has to wait (the flusher's pass)."""
        self._marked = False
        direct = self._direct
        while self._events and not self.closed and self._writer is None:
            frame = self._take()
            if direct is not None and direct(frame):
                self.frames_sent += 1
                continue
            try:
                writer = drive(self._send(frame))
            except Exception as exc:
                self._failed(exc)
                return
            if writer is not None:
                self._writer = writer
                writer.add_done_callback(self._sent)
                return
            self.frames_sent += 1

    def _sent(self, task: asyncio.Task[Any]) -> None:
        self._writer = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._failed(exc)
            return
        self.frames_sent += 1
        if self._events and not self.closed and not self._marked:
            self._marked = True
            self._flusher.mark(self)

    def _failed(self, exc: BaseException) -> None:
        # the socket went away under us: the route's cleanup handles the rest
        log.debug("send failed: %r", exc)
        self.closed = True
        self._events.clear()
        self._bytes = 0

    async def flush(self, timeout: float) -> None:
        """Write what is queued now and wait (bounded) until it has been handed to the socket."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.closed and (self._events or self._writer is not None):
            if self._writer is None:
                self.write()
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(asyncio.shield(self._writer), remaining)
            except (TimeoutError, asyncio.CancelledError):
                return
            except Exception:  # noqa: S110 - the failure is recorded by _sent
                pass

    def discard(self) -> None:
        self.closed = True
        self._events.clear()
        self._bytes = 0
        if self._writer is not None:
            self._writer.cancel()
