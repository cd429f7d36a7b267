"""Optimistic local echo and the offline outbox (docs/sdk.md#outbox-and-local-echo).

``StormClient.publish`` returns a :class:`PendingMessage` at once: the app shows it, marked as sending.
It stays in the :class:`Outbox` until the server acknowledges it; it is (re)sent, in order, with the
**same cmid** on every connection until then, so the gateway's cmid dedup makes the retries harmless.
The outbox is bounded: when full, ``publish`` raises :class:`OutboxFull` rather than growing without end.
No I/O here.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field

from storm_sdk.errors import OutboxFull, StormSdkError


class SendState(enum.StrEnum):
    QUEUED = "queued"  # not sent on the current connection (offline, or waiting for a retry)
    SENT = "sent"  # sent on the current connection, no ack yet
    ACKED = "acked"  # durable: message_id and offset are set
    FAILED = "failed"  # refused for good (error_code); removed from the outbox


@dataclass(eq=False)
class PendingMessage:
    """A message of ours, from ``publish`` until its ack: the local echo to show."""

    cmid: str
    channel: str
    text: str
    thread: str | None = None
    created_at: float = field(default_factory=time.time)
    state: SendState = SendState.QUEUED
    attempts: int = 0  # frames sent for it, over all connections
    message_id: str | None = None
    offset: int | None = None
    duplicate: bool = False  # the ack said the server had it already (a retry of a delivered message)
    error_code: str | None = None
    error: str | None = None
    # sender bookkeeping
    sent_gen: int = -1  # the connection generation it was last sent on
    retry_at: float = 0.0  # monotonic time before which it is not resent (after a retriable error)
    _done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _exc: BaseException | None = field(default=None, repr=False)

    @property
    def acked(self) -> bool:
        return self.state is SendState.ACKED

    async def wait(self, timeout: float | None = None) -> PendingMessage:
        """Wait for the ack and return self (``message_id``, ``offset`` set); raise if it failed."""
        async with asyncio.timeout(timeout):
            await self._done.wait()
        if self._exc is not None:
            raise self._exc
        return self

    def _resolve(self, message_id: str | None, offset: int | None, duplicate: bool) -> None:
        self.state = SendState.ACKED
        self.message_id = message_id
        self.offset = offset
        self.duplicate = duplicate
        self._exc = None
        self._done.set()

    def _fail(self, code: str, detail: str, exc: StormSdkError) -> None:
        self.state = SendState.FAILED
        self.error_code = code
        self.error = detail
        self._exc = exc
        self._done.set()

    def _abort(self, exc: StormSdkError) -> None:
        """Wake waiters without changing the state: the client stopped with the message unacked."""
        self._exc = exc
        self._done.set()


class Outbox:
    """Unacknowledged messages in publish order, at most ``limit``."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("outbox limit must be >= 1")
        self.limit = limit
        self._items: OrderedDict[str, PendingMessage] = OrderedDict()

    def add(self, msg: PendingMessage) -> None:
        if msg.cmid in self._items:
            raise ValueError(f"cmid {msg.cmid!r} is already in the outbox")
        if len(self._items) >= self.limit:
            raise OutboxFull(self.limit)
        self._items[msg.cmid] = msg

    def get(self, cmid: str | None) -> PendingMessage | None:
        return self._items.get(cmid) if cmid else None

    def pop(self, cmid: str) -> PendingMessage | None:
        return self._items.pop(cmid, None)

    def next_to_send(self, gen: int) -> PendingMessage | None:
        """The oldest message not sent on connection ``gen`` whose channel has no older message still waiting
        for its ack: one message in flight per channel, so a refused or lost publish is retried before anything
        the same sender wrote after it reaches the channel (a pipelined later message could be stored first).
        Head-of-line: a message waiting for its retry time is returned anyway (the caller waits)."""
        in_flight: set[str] = set()
        for msg in self._items.values():
            if msg.channel in in_flight:
                continue
            if msg.sent_gen != gen:
                return msg
            in_flight.add(msg.channel)
        return None

    def requeue_all(self) -> None:
        """The connection is gone: everything unacked is to be sent again."""
        for msg in self._items.values():
            msg.state = SendState.QUEUED

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[PendingMessage]:
        return iter(list(self._items.values()))
