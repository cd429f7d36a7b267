"""Embedded broker: in-process channel logs with the semantics of the Broker port (storm/ports/broker.py).

* Per-channel log with dense offsets and retention by count and age.
* Broadcast subscriptions are called synchronously, in offset order, right after an offset is assigned.
* Work subscriptions behave like a Pulsar Key_Shared subscription keyed by channel: records of one channel
  go to one consumer at a time and in order; unacked records come back after the ack timeout; nacked ones
  after their delay; each redelivery increments ``delivery_count``.

It is not durable: a restart loses the logs.  So that offsets stay monotonic across restarts (the store
keeps ``UNIQUE(channel, offset)``), a channel log that is touched for the first time continues from
``initial_offset(workspace, channel)``, which the bootstrap wires to the store's last persisted offset.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from storm.adapters.flight import single_flight
from storm.domain import Plan
from storm.errors import OffsetTruncated
from storm.lifecycle import Lifecycle
from storm.ports.broker import BroadcastHandler, Delivery, Record
from storm.ports.clock import Clock

if TYPE_CHECKING:
    from storm.ports.broker import BroadcastSubscription, Broker, WorkBacklog, WorkSubscription

log = logging.getLogger("storm.broker.memory")

InitialOffset = Callable[[str, str], Awaitable[int]]


async def _zero(workspace: str, channel: str) -> int:
    return 0


class _Log:
    __slots__ = ("entries", "next_offset", "subscribers")

    def __init__(self, next_offset: int) -> None:
        self.entries: deque[Record] = deque()
        self.next_offset = next_offset
        self.subscribers: set[_BroadcastSubscription] = set()


class MemoryBroker:
    def __init__(
        self,
        clock: Clock,
        *,
        retention_messages: int = 10000,
        retention_s: float = 7 * 24 * 3600.0,
        ack_timeout_s: float = 30.0,
        initial_offset: InitialOffset = _zero,
    ) -> None:
        self._clock = clock
        self._retention_messages = retention_messages
        self._retention_s = retention_s
        self._ack_timeout_s = ack_timeout_s
        self._initial_offset = initial_offset
        self._logs: dict[tuple[str, str], _Log] = {}
        self._creating: dict[tuple[str, str], asyncio.Future[_Log]] = {}
        self._work: dict[str, _WorkQueue] = {}
        self._broadcast: set[_BroadcastSubscription] = set()
        self._workspaces: dict[str, Plan] = {}
        self._life = Lifecycle("broker")

    # -- lifecycle ----------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._life.begin_start()
        self._life.started()

    async def stop(self) -> None:
        self._life.begin_stop()
        for wq in self._work.values():  # receivers waiting for records see the broker stopped
            wq.wake()

    async def __aenter__(self) -> MemoryBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _check(self) -> None:
        self._life.check()

    # -- workspaces -----------------------------------------------------------------------------------
    async def ensure_workspace(self, workspace: str, plan: Plan) -> None:
        self._check()
        self._workspaces[workspace] = plan

    async def delete_workspace(self, workspace: str) -> None:
        self._check()
        self._workspaces.pop(workspace, None)
        for key in [k for k in self._logs if k[0] == workspace]:
            del self._logs[key]
        for wq in self._work.values():
            wq.drop_workspace(workspace)

    def workspace_plan(self, workspace: str) -> Plan | None:
        return self._workspaces.get(workspace)

    # -- logs -----------------------------------------------------------------------------------------
    async def _log(self, workspace: str, channel: str) -> _Log:
        key = (workspace, channel)
        existing = self._logs.get(key)
        if existing is not None:
            return existing

        async def create() -> _Log:
            start = await self._initial_offset(workspace, channel)
            return self._logs.setdefault(key, _Log(start + 1))

        return await single_flight(self._creating, key, create)

    async def publish(self, workspace: str, channel: str, payload: bytes) -> int:
        self._check()
        lg = await self._log(workspace, channel)
        offset = lg.next_offset
        lg.next_offset += 1
        record = Record(workspace, channel, offset, payload, self._clock.time())
        lg.entries.append(record)
        self._trim(lg)
        for sub in tuple(lg.subscribers):
            sub.deliver(record)
        for wq in self._work.values():
            wq.put(record)
        return offset

    async def publish_ephemeral(self, workspace: str, channel: str, payload: bytes) -> None:
        self._check()
        lg = self._logs.get((workspace, channel))
        if lg is None:
            return
        record = Record(workspace, channel, 0, payload, self._clock.time())
        for sub in tuple(lg.subscribers):
            sub.deliver(record)

    def _trim(self, lg: _Log) -> None:
        entries = lg.entries
        while len(entries) > self._retention_messages:
            entries.popleft()
        horizon = self._clock.time() - self._retention_s
        while entries and entries[0].publish_time < horizon:
            entries.popleft()

    async def read(self, workspace: str, channel: str, from_offset: int, limit: int, *,
                   head: int | None = None) -> list[Record]:
        self._check()
        lg = await self._log(workspace, channel)
        self._trim(lg)
        earliest = lg.entries[0].offset if lg.entries else lg.next_offset
        if from_offset < earliest:
            raise OffsetTruncated(f"offsets before {earliest} are no longer retained", earliest=earliest)
        start = from_offset - earliest
        return list(itertools.islice(lg.entries, start, start + max(0, limit)))

    async def head(self, workspace: str, channel: str) -> int:
        self._check()
        return (await self._log(workspace, channel)).next_offset - 1

    # -- subscriptions ------------------------------------------------------------------------------------
    async def subscribe_broadcast(self, handler: BroadcastHandler) -> _BroadcastSubscription:
        self._check()
        sub = _BroadcastSubscription(self, handler)
        self._broadcast.add(sub)
        return sub

    async def subscribe_work(self, name: str) -> _WorkConsumer:
        self._check()
        wq = self._work.get(name)
        if wq is None:
            wq = self._work[name] = _WorkQueue(name, self._clock, self._ack_timeout_s)
        return _WorkConsumer(wq, self)

    async def work_backlog(self, name: str) -> int:
        """Records of the work subscription ``name`` waiting to be handed out: pending and nacked (delayed)
        ones; those handed out and not yet acknowledged are not counted."""
        wq = self._work.get(name)
        return 0 if wq is None else wq.waiting()

    def dead_letters(self, name: str) -> list[tuple[Record, str]]:
        wq = self._work.get(name)
        return list(wq.dead) if wq else []


class _BroadcastSubscription:
    def __init__(self, broker: MemoryBroker, handler: BroadcastHandler) -> None:
        self._broker = broker
        self._handler = handler
        self._channels: set[tuple[str, str]] = set()

    def deliver(self, record: Record) -> None:
        try:
            self._handler(record)
        except Exception:  # a gateway bug must not break the publisher
            log.exception("broadcast handler failed workspace=%s channel=%s", record.workspace, record.channel)

    async def add(self, workspace: str, channel: str) -> None:
        self._broker._check()
        lg = await self._broker._log(workspace, channel)
        lg.subscribers.add(self)
        self._channels.add((workspace, channel))

    async def remove(self, workspace: str, channel: str) -> None:
        lg = self._broker._logs.get((workspace, channel))
        if lg is not None:
            lg.subscribers.discard(self)
        self._channels.discard((workspace, channel))

    async def close(self) -> None:
        for ws, ch in list(self._channels):
            await self.remove(ws, ch)
        self._broker._broadcast.discard(self)


@dataclass
class _Item:
    record: Record
    seq: int
    count: int = 0
    consumer: int | None = None
    deadline: float = 0.0
    key: str = field(init=False)

    def __post_init__(self) -> None:
        self.key = f"{self.record.workspace}/{self.record.channel}"


class _WorkQueue:
    """Key_Shared-like queue: per-channel order, one consumer per channel at a time."""

    def __init__(self, name: str, clock: Clock, ack_timeout_s: float) -> None:
        self.name = name
        self._clock = clock
        self._ack_timeout = ack_timeout_s
        self._pending: dict[str, deque[_Item]] = {}
        self._owner: dict[str, tuple[int, int]] = {}  # key -> (consumer, in-flight count)
        self._inflight: dict[int, _Item] = {}
        self._delayed: list[tuple[float, int, _Item]] = []
        self._blocked: dict[str, int] = {}  # key -> nacked items waiting out their delay
        self._seq = itertools.count(1)
        self._event = asyncio.Event()
        self.dead: deque[tuple[Record, str]] = deque(maxlen=10000)

    def wake(self) -> None:
        self._event.set()

    def waiting(self) -> int:
        return sum(len(items) for items in self._pending.values()) + len(self._delayed)

    def put(self, record: Record) -> None:
        item = _Item(record, next(self._seq))
        self._pending.setdefault(item.key, deque()).append(item)
        self._event.set()

    def drop_workspace(self, workspace: str) -> None:
        prefix = f"{workspace}/"
        for key in [k for k in self._pending if k.startswith(prefix)]:
            del self._pending[key]
        for token in [t for t, it in self._inflight.items() if it.key.startswith(prefix)]:
            del self._inflight[token]
        self._delayed = [d for d in self._delayed if not d[2].key.startswith(prefix)]
        heapq.heapify(self._delayed)
        for key in [k for k in self._blocked if k.startswith(prefix)]:
            del self._blocked[key]
        for key in [k for k in self._owner if k.startswith(prefix)]:
            del self._owner[key]

    def _requeue(self, item: _Item) -> None:
        """Put an item back at the head of its key, keeping offset order."""
        q = self._pending.setdefault(item.key, deque())
        q.appendleft(item)
        if len(q) > 1 and q[1].seq < item.seq:  # keep seq order if several come back at once
            self._pending[item.key] = deque(sorted(q, key=lambda i: i.seq))

    def _release(self, item: _Item) -> None:
        owner = self._owner.get(item.key)
        if owner is None:
            return
        consumer, n = owner
        if n <= 1:
            del self._owner[item.key]
        else:
            self._owner[item.key] = (consumer, n - 1)

    def _housekeeping(self) -> None:
        now = self._clock.monotonic()
        for token, item in list(self._inflight.items()):
            if item.deadline <= now:  # ack timeout: redeliver
                del self._inflight[token]
                self._release(item)
                self._requeue(item)
        while self._delayed and self._delayed[0][0] <= now:
            _, _, item = heapq.heappop(self._delayed)
            n = self._blocked.get(item.key, 0) - 1
            if n <= 0:
                self._blocked.pop(item.key, None)
            else:
                self._blocked[item.key] = n
            self._release(item)
            self._requeue(item)

    def take(self, consumer: int, max_records: int) -> list[Delivery]:
        self._housekeeping()
        out: list[Delivery] = []
        now = self._clock.monotonic()
        for key in list(self._pending):
            if key in self._blocked:  # an earlier record of this channel waits for redelivery
                continue
            owner = self._owner.get(key)
            if owner is not None and owner[0] != consumer:
                continue
            q = self._pending[key]
            taken = 0
            while q and len(out) < max_records:
                item = q.popleft()
                item.count += 1
                item.consumer = consumer
                item.deadline = now + self._ack_timeout
                self._inflight[item.seq] = item
                out.append(Delivery(item.record, item.count, item.seq))
                taken += 1
            if taken:
                self._owner[key] = (consumer, (owner[1] if owner else 0) + taken)
            if not q:
                del self._pending[key]
            if len(out) >= max_records:
                break
        if not out:
            self._event.clear()
        return out

    def next_due(self) -> float | None:
        times = [d[0] for d in self._delayed[:1]] + [i.deadline for i in self._inflight.values()]
        return min(times) if times else None

    async def wait(self, timeout: float) -> None:
        due = self.next_due()
        if due is not None:
            timeout = max(0.0, min(timeout, due - self._clock.monotonic()))
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except TimeoutError:
            pass

    def ack(self, token: int) -> None:
        item = self._inflight.pop(token, None)
        if item is not None:
            self._release(item)
            if item.key in self._pending:  # a consumer waiting for this channel may proceed
                self._event.set()

    def nack(self, token: int, delay: float) -> None:
        item = self._inflight.pop(token, None)
        if item is None:
            return
        # the key stays owned while the item waits, so later records of the channel cannot overtake it
        heapq.heappush(self._delayed, (self._clock.monotonic() + delay, item.seq, item))
        self._blocked[item.key] = self._blocked.get(item.key, 0) + 1
        self._event.set()


class _WorkConsumer:
    _ids = itertools.count(1)

    def __init__(self, queue: _WorkQueue, broker: MemoryBroker) -> None:
        self._queue = queue
        self._broker = broker
        self._id = next(self._ids)
        self._closed = False

    async def receive(self, max_records: int, timeout: float) -> list[Delivery]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._closed:
            self._broker._check()
            got = self._queue.take(self._id, max_records)
            if got:
                return got
            remaining = deadline - loop.time()
            if remaining <= 0:
                return []
            await self._queue.wait(remaining)
        return []

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        for d in deliveries:
            self._queue.ack(d.token)  # type: ignore[arg-type]

    async def nack(self, deliveries: Sequence[Delivery], delay: float) -> None:
        for d in deliveries:
            self._queue.nack(d.token, delay)  # type: ignore[arg-type]

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        self._queue.dead.append((delivery.record, reason))
        self._queue.ack(delivery.token)  # type: ignore[arg-type]

    async def close(self) -> None:
        """Unacked deliveries of a closed consumer go back to the queue at once."""
        self._closed = True
        for token, item in list(self._queue._inflight.items()):
            if item.consumer == self._id:
                del self._queue._inflight[token]
                self._queue._release(item)
                self._queue._requeue(item)
        self._queue.wake()


if TYPE_CHECKING:  # the type checker proves the port is satisfied (centrifuge's `var _ Broker = ...`)

    def _conforms(broker: MemoryBroker, broadcast: _BroadcastSubscription, work: _WorkConsumer) -> None:
        _broker: Broker = broker
        _backlog: WorkBacklog = broker
        _broadcast: BroadcastSubscription = broadcast
        _work: WorkSubscription = work
