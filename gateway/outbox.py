"""Per-connection outgoing queue: bounded, coalescing, written by the gateway's flusher (ADR 0002, 0006).

* Bounded: more than ``max_events`` events or ``max_bytes`` bytes waiting means the client cannot keep up;
  the queue is dropped and the connection closed with 4008 (SLOW_CONSUMER).  The client resumes with its
  last offsets, so nothing is lost for it, and the gateway's memory never grows without bound.
* Coalescing: everything queued (up to ``coalesce_max_bytes``) leaves as one text frame, events separated
  by ``\\n``.  The faster events arrive relative to the socket draining, the more share one frame and the
  cheaper each delivery becomes.
* No task per connection: :meth:`Outbox.push` only queues and marks the outbox dirty.  One
  :class:`Flusher` per gateway writes every dirty outbox in one pass, ``write_delay_s`` after the first
  event of a tick (centrifuge's write delay), so events of one tick share a frame.  A send is driven
  synchronously (:func:`drive`); only a send that has to wait (socket buffer full) gets a task, and that
  outbox is skipped by later passes until the send is done: a slow socket never holds up the others and
  frames of one connection never overtake each other.
"""

from __future__ import annotations

import asyncio
import logging
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


class Flusher:
    """Writes the dirty outboxes of one gateway, one pass per tick."""

    __slots__ = ("_after", "_delay", "_dirty", "_handle", "overflows", "passes")

    def __init__(self, write_delay_s: float = 0.0) -> None:
        self._delay = write_delay_s
        self._dirty: list[Outbox] = []
        self._handle: asyncio.Handle | None = None
        self.passes = 0
        self.overflows = 0  # outboxes that overflowed (storm.outbox.overflows)
        self._after: list[Callable[[], None]] = []  # run after the next pass (metrics: write latencies)

    def mark(self, box: Outbox) -> None:
        self._dirty.append(box)
        if self._handle is None:
            loop = asyncio.get_running_loop()
            self._handle = loop.call_later(self._delay, self.run) if self._delay > 0 else loop.call_soon(self.run)

    def run(self) -> None:
        """Write every outbox marked since the last pass (also callable directly, e.g. by tests)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        dirty, self._dirty = self._dirty, []
        self.passes += 1
        for box in dirty:
            box.write()
        if self._after:
            after, self._after = self._after, []
            for fn in after:
                fn()

    def after_pass(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` once the next pass has written what is queued now (a pass is scheduled if none is)."""
        self._after.append(fn)
        if self._handle is None:
            loop = asyncio.get_running_loop()
            self._handle = loop.call_later(self._delay, self.run) if self._delay > 0 else loop.call_soon(self.run)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._dirty.clear()
        self._after.clear()


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
        """Queue one encoded event (the session's Transport.send).  Hot path: no task, no await."""
        if self.closed:
            return False
        size = len(data)
        if len(self._events) >= self._max_events or self._bytes + size > self._max_bytes:
            self.closed = True
            self._events.clear()
            self._bytes = 0
            self._flusher.overflows += 1
            self._on_overflow()
            return False
        self._events.append(data)
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
