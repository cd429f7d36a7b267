"""Per-connection outgoing queue: bounded, coalescing, with a writer that exists only while there is data.

* Bounded: more than ``max_events`` events or ``max_bytes`` bytes waiting means the client cannot keep up;
  the queue is dropped and the connection closed with 4008 (SLOW_CONSUMER).  The client resumes with its
  last offsets, so nothing is lost for it, and the gateway's memory never grows without bound.
* Coalescing: the writer takes everything queued (up to ``coalesce_max_bytes``) and sends it as one text
  frame, events separated by ``\\n``.  The faster events arrive relative to the socket draining, the more
  share one frame and the cheaper each delivery becomes.
* Lazy writer: idle connections hold no task, which keeps per-connection memory low; the first event
  after a quiet period starts one, and it ends when the queue is empty.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable

log = logging.getLogger("storm.gateway.outbox")

SendFrame = Callable[[bytes], Awaitable[None]]


class Outbox:
    __slots__ = ("_bytes", "_coalesce", "_events", "_max_bytes", "_max_events", "_on_overflow", "_send",
                 "_writer", "closed", "frames_sent")

    def __init__(
        self,
        send: SendFrame,
        on_overflow: Callable[[], None],
        *,
        max_events: int,
        max_bytes: int,
        coalesce_max_bytes: int,
    ) -> None:
        self._send = send
        self._on_overflow = on_overflow
        self._max_events = max_events
        self._max_bytes = max_bytes
        self._coalesce = coalesce_max_bytes
        self._events: deque[bytes] = deque()
        self._bytes = 0
        self._writer: asyncio.Task[None] | None = None
        self.closed = False
        self.frames_sent = 0

    def __len__(self) -> int:
        return len(self._events)

    def push(self, data: bytes) -> bool:
        if self.closed:
            return False
        size = len(data)
        if len(self._events) >= self._max_events or self._bytes + size > self._max_bytes:
            self.closed = True
            self._events.clear()
            self._bytes = 0
            self._on_overflow()
            return False
        self._events.append(data)
        self._bytes += size
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._drain())
        return True

    def _take(self) -> bytes:
        events = self._events
        first = events.popleft()
        size = len(first)
        if not events or size >= self._coalesce:
            self._bytes -= size
            return first
        parts = [first]
        while events and size + 1 + len(events[0]) <= self._coalesce:
            nxt = events.popleft()
            parts.append(nxt)
            size += 1 + len(nxt)
        self._bytes -= size - (len(parts) - 1)
        return b"\n".join(parts)

    async def _drain(self) -> None:
        try:
            while self._events and not self.closed:
                frame = self._take()
                await self._send(frame)
                self.frames_sent += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the socket went away under us: the route's cleanup handles the rest
            log.debug("send failed: %r", exc)
            self.closed = True
            self._events.clear()
        finally:
            self._writer = None

    async def flush(self, timeout: float) -> None:
        """Wait (bounded) until what is queued has been handed to the socket."""
        writer = self._writer
        if writer is not None:
            try:
                await asyncio.wait_for(asyncio.shield(writer), timeout)
            except (TimeoutError, asyncio.CancelledError):
                pass

    def discard(self) -> None:
        self.closed = True
        self._events.clear()
        self._bytes = 0
        if self._writer is not None:
            self._writer.cancel()
