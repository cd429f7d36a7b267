"""Work sharing on Pulsar: the WorkSubscription of the Pulsar broker adapter (docs/adr/0005-pulsar-broker.md).

A work subscription named ``name`` is a Key_Shared subscription ``name`` on every channel topic of every
workspace: one pattern consumer per workspace (``persistent://{ws}/channels/[^.]+``, initial position
Earliest so nothing published before the consumer found a topic is lost).  Messages are keyed by channel,
so Pulsar hands all of a channel to one consumer at a time, in order.

On top of Pulsar this module keeps, per channel, the port's ordering promise across redeliveries: once a
delivery of a channel is handed back (``nack`` or ack timeout), later records of that channel are held
locally until the handed-back one has come again, so a redelivered record is never overtaken.

* Ack timeout: tracked here (Pulsar's own ack timeout cannot go below 10 s); an expired delivery is
  negatively acknowledged at once.
* ``nack(deliveries, delay)``: the negative acknowledgement is sent after ``delay`` minus the consumer's
  fixed 100 ms negative-ack delay.
* Dead letters: ``dead_letter`` produces the record to ``persistent://{ws}/channels/{name}.dlq`` with the
  reason, origin and offset as properties, then acknowledges it.  Only the worker decides: the consumers
  have no client-side dead-letter policy.  They used to (after ``STORM_CONSUMER_MAX_REDELIVERIES``), and
  during a 30 s PostgreSQL outage the worker's retries used those redeliveries up: the client moved the
  records to the dead-letter topic without handing them out again, so their channels, held locally until
  the handed-back record came back (below), never moved again (3 520 of 3 600 acked messages never stored,
  chaos ``postgres-restart``, docs/delivery.md).
* ``delivery_count`` = Pulsar's redelivery count + 1.
* Workspaces are found by listing tenants every ``discovery_period_s`` and right after an in-process
  ``ensure_workspace``.

Throughput (docs/consumers.md, "Throughput"): messages arrive through each consumer's listener, which runs
on the client's listener thread and only appends to a deque; it wakes the event loop only when a
``receive()`` is waiting, and a busy worker takes what accumulated at its next ``receive()`` (an awaited
``receive()`` per message cost a future and a cross-thread wake-up each: with the awaited ack, 60 % of the
loop's time).  Flow control pauses the listeners above ``high_water`` buffered records.  Acks are
handed to the client with a callback that runs on its thread; nothing awaits them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import _pulsar
import pulsar
import pulsar.asyncio as pulsar_async

from storm.adapters.pulsar_names import channels_pattern, dead_letter_topic, encode_offset, split_topic
from storm.errors import Unavailable
from storm.ports.broker import Delivery, Record

log = logging.getLogger("storm.broker.pulsar.work")

NACK_FLOOR_S = 0.1  # the consumers' fixed negative-ack redelivery delay
ATTACH_CONCURRENCY = 16  # workspaces subscribed to at once when a work subscription starts
TOPIC_KEYS_MAX = 100_000  # parsed topic names kept (one per channel seen); past it the cache starts over


@dataclass(frozen=True, slots=True)
class WorkOptions:
    ack_timeout_s: float
    discovery_period_s: float = 30.0
    pattern_discovery_s: int = 5
    receiver_queue: int = 1000
    high_water: int = 5000  # records buffered locally before the pump pauses


class WorkspaceDirectory(Protocol):
    async def workspaces(self) -> list[str]: ...


@dataclass(eq=False, slots=True)
class _Token:
    consumer: _WsConsumer
    msg: Any  # _pulsar.Message
    key: tuple[str, str]
    offset: int
    deadline: float = 0.0
    settled: bool = False


class _WsConsumer:
    """One workspace's pattern consumer.  Its messages arrive through a listener (see the module's
    "Throughput" note); ``raw`` is set once the subscription exists."""

    __slots__ = ("closed", "consumer", "raw", "workspace")

    def __init__(self, workspace: str) -> None:
        self.workspace = workspace
        self.consumer: pulsar_async.Consumer | None = None
        self.raw: Any = None  # _pulsar.Consumer
        self.closed = False

    async def close(self) -> None:
        self.closed = True
        if self.consumer is not None:
            with contextlib.suppress(Exception):
                await self.consumer.close()


def _ack_done(result: Any) -> None:  # on a client thread
    if result != pulsar.Result.Ok:  # the record comes again; the worker's writes are idempotent
        log.warning("ack failed: %s", result)


class PulsarWorkSubscription:
    def __init__(self, client: pulsar_async.Client, name: str, options: WorkOptions, directory: WorkspaceDirectory,
                 on_closed: Callable[[PulsarWorkSubscription], None]) -> None:
        self._client = client
        self._name = name
        self._opt = options
        self._directory = directory
        self._on_closed = on_closed
        self._loop = asyncio.get_running_loop()
        self._consumers: dict[str, _WsConsumer] = {}
        self._attaching: dict[str, asyncio.Task[None]] = {}
        self._ready: deque[Delivery] = deque()
        self._held: dict[tuple[str, str], list[Delivery]] = {}
        self._awaited: dict[tuple[str, str], set[int]] = {}  # key -> offsets handed back, not yet returned
        self._inflight: dict[int, _Token] = {}  # id(token) -> token
        self._timers: set[asyncio.TimerHandle] = set()
        self._dlq: dict[str, pulsar_async.Producer] = {}
        self._event = asyncio.Event()
        self._inbox: deque[tuple[_WsConsumer, Any]] = deque()  # appended by the client's listener thread
        self._topic_keys: dict[str, tuple[str, str]] = {}  # topic name -> (workspace, channel), parsed once
        self._wake_pending = False
        self._waiting = False  # a receive() is waiting for records: the listener must wake the loop
        self._paused = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Attach to every known workspace, ``ATTACH_CONCURRENCY`` at a time (one after another took ~0.5 s
        each: a consumer process on a cluster with 60 tenants needed 30 s before it persisted anything)."""
        gate = asyncio.Semaphore(ATTACH_CONCURRENCY)

        async def attach(ws: str) -> None:
            async with gate:
                await self._attach(ws)

        await asyncio.gather(*(attach(ws) for ws in await self._directory.workspaces()))
        self._spawn(self._discover_forever())
        self._spawn(self._tick_forever())

    def _spawn(self, coro: Any) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._event.set()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for task in list(self._tasks) + list(self._attaching.values()):
            task.cancel()
        for task in list(self._tasks) + list(self._attaching.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for c in list(self._consumers.values()):
            await c.close()  # unacked records go back to the subscription's other consumers
        self._consumers.clear()
        for producer in self._dlq.values():
            with contextlib.suppress(Exception):
                await producer.close()
        self._dlq.clear()
        self._on_closed(self)

    # -- workspaces -----------------------------------------------------------------------------------
    def workspace_added(self, workspace: str) -> None:
        if self._closed or workspace in self._consumers or workspace in self._attaching:
            return
        task = self._loop.create_task(self._attach(workspace))
        self._attaching[workspace] = task
        task.add_done_callback(lambda _t: self._attaching.pop(workspace, None))

    async def workspace_removed(self, workspace: str) -> None:
        task = self._attaching.pop(workspace, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        c = self._consumers.pop(workspace, None)
        if c is not None:
            await c.close()
        self._ready = deque(d for d in self._ready if d.record.workspace != workspace)
        for key in [k for k in self._held if k[0] == workspace]:
            del self._held[key]
        for key in [k for k in self._awaited if k[0] == workspace]:
            del self._awaited[key]
        for tid in [t for t, tok in self._inflight.items() if tok.key[0] == workspace]:
            del self._inflight[tid]
        producer = self._dlq.pop(workspace, None)
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.close()

    async def _discover_forever(self) -> None:
        while not self._closed:
            await asyncio.sleep(self._opt.discovery_period_s)
            try:
                found = set(await self._directory.workspaces())
            except Exception as exc:
                log.warning("subscription=%s: listing workspaces failed: %s", self._name, exc)
                continue
            for ws in found - set(self._consumers):
                self.workspace_added(ws)
            for ws in set(self._consumers) - found:
                await self.workspace_removed(ws)

    async def _attach(self, workspace: str) -> None:
        if workspace in self._consumers or self._closed:
            return
        conf = _pulsar.ConsumerConfiguration()
        conf.consumer_type(pulsar.ConsumerType.KeyShared)
        conf.key_shared_policy(pulsar.ConsumerKeySharedPolicy().policy())
        conf.subscription_initial_position(pulsar.InitialPosition.Earliest)
        conf.pattern_auto_discovery_period(self._opt.pattern_discovery_s)
        conf.regex_subscription_mode(pulsar.RegexSubscriptionMode.PersistentOnly)
        conf.negative_ack_redelivery_delay_ms(int(NACK_FLOOR_S * 1000))
        conf.receiver_queue_size(self._opt.receiver_queue)
        conf.consumer_name(f"{self._name}-{uuid.uuid4().hex[:8]}")
        conf.schema(pulsar.schema.BytesSchema().schema_info())
        c = _WsConsumer(workspace)
        conf.message_listener(self._listener(c))
        fut: asyncio.Future[Any] = self._loop.create_future()

        def done(value: Any) -> None:  # on a client thread
            def settle() -> None:
                if fut.done():
                    if not isinstance(value, _pulsar.Error):
                        value.close_async(lambda _r: None)
                elif isinstance(value, _pulsar.Error):
                    fut.set_exception(pulsar_async.PulsarException(value.error, value.message))
                else:
                    fut.set_result(value)

            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(settle)

        self._client._client.subscribe_async_v2(_pulsar.TopicRegex(channels_pattern(workspace)), self._name, conf,
                                                done)
        try:
            raw = await fut
        except pulsar_async.PulsarException as exc:
            log.warning("subscription=%s ws=%s: cannot attach (%s); retrying at the next discovery", self._name,
                        workspace, exc)
            return
        c.raw, c.consumer = raw, pulsar_async.Consumer(raw, pulsar.schema.BytesSchema())
        if self._closed or workspace in self._consumers:  # closed meanwhile, or a concurrent attach won
            await c.close()
            return
        if self._paused:
            raw.pause_message_listener()
        self._consumers[workspace] = c

    # -- arrival: the listener thread queues, the loop takes the queue in one go ------------------------
    def _listener(self, c: _WsConsumer) -> Callable[[Any, Any], None]:
        inbox, loop = self._inbox, self._loop

        def on_message(_consumer: Any, msg: Any) -> None:  # on the client's listener thread
            inbox.append((c, msg))
            # Wake the loop only when a receive() waits for records, once: a busy worker takes everything
            # that accumulated meanwhile at its next receive(), with no cross-thread wake-up at all.
            if self._waiting and not self._wake_pending:
                self._wake_pending = True
                with contextlib.suppress(RuntimeError):  # the loop is closed: we are shutting down
                    loop.call_soon_threadsafe(self._take_inbox)

        return on_message

    def _take_inbox(self) -> None:
        self._wake_pending = False  # before draining: a message appended from now on wakes us again
        inbox = self._inbox
        while inbox:
            c, msg = inbox.popleft()
            if not (c.closed or self._closed):
                self._arrived(c, msg)
        buffered = len(self._ready) + (sum(len(h) for h in self._held.values()) if self._held else 0)
        if buffered >= self._opt.high_water and not self._paused:
            self._set_paused(True)
        if self._ready:
            self._event.set()

    def _set_paused(self, paused: bool) -> None:
        """Flow control: the listeners stop (and Pulsar stops sending past the receiver queue) while the
        local buffer is above ``high_water``, and go on below half of it."""
        self._paused = paused
        for c in self._consumers.values():
            if c.raw is not None and not c.closed:
                with contextlib.suppress(Exception):
                    if paused:
                        c.raw.pause_message_listener()
                    else:
                        c.raw.resume_message_listener()

    # -- local ordering -------------------------------------------------------------------------------------
    def _arrived(self, c: _WsConsumer, msg: Any) -> None:
        try:
            topic = msg.topic_name()
            key = self._topic_keys.get(topic)
            if key is None:
                if len(self._topic_keys) >= TOPIC_KEYS_MAX:
                    self._topic_keys.clear()
                key = self._topic_keys[topic] = split_topic(topic)
            workspace, channel = key
            mid = msg.message_id()
            offset = encode_offset(mid.ledger_id(), mid.entry_id())
        except Exception:
            log.exception("subscription=%s: unreadable message on %s; dead-lettering", self._name, c.workspace)
            return
        record = Record(workspace, channel, offset, msg.data(), msg.publish_timestamp() / 1000.0)
        token = _Token(c, msg, key, offset)
        delivery = Delivery(record, msg.redelivery_count() + 1, token)
        awaited = self._awaited.get(token.key)
        if awaited is not None:
            awaited.discard(offset)
            self._held.setdefault(token.key, []).append(delivery)
            if not awaited:
                self._release(token.key)
        else:
            self._ready.append(delivery)
        self._event.set()

    def _release(self, key: tuple[str, str]) -> None:
        self._awaited.pop(key, None)
        held = self._held.pop(key, [])
        seen: set[int] = set()
        for d in sorted(held, key=lambda d: (d.record.offset, -d.delivery_count)):
            if d.record.offset not in seen:  # a record that came twice (reconnect) is handed out once
                seen.add(d.record.offset)
                self._ready.append(d)

    def _hand_back(self, token: _Token, delay: float) -> None:
        """Block the token's channel until the record comes again; send the negative ack after ``delay``."""
        token.settled = True
        self._inflight.pop(id(token), None)
        self._awaited.setdefault(token.key, set()).add(token.offset)
        keep: deque[Delivery] = deque()
        for d in self._ready:  # later records of the channel wait behind the handed-back one
            if (d.record.workspace, d.record.channel) == token.key:
                self._held.setdefault(token.key, []).append(d)
            else:
                keep.append(d)
        self._ready = keep

        def send_nack() -> None:
            self._timers.discard(handle)
            if not token.consumer.closed and token.consumer.raw is not None:
                try:
                    token.consumer.raw.negative_acknowledge(token.msg)
                except Exception:
                    log.warning("negative ack failed ws=%s channel=%s offset=%d", *token.key, token.offset,
                                exc_info=True)

        handle = self._loop.call_later(max(0.0, delay - NACK_FLOOR_S), send_nack)
        self._timers.add(handle)

    def _expire(self) -> None:
        now = self._loop.time()
        for token in [t for t in self._inflight.values() if t.deadline <= now]:
            log.info("subscription=%s ws=%s channel=%s offset=%d: ack timeout, redelivering", self._name,
                     *token.key, token.offset)
            self._hand_back(token, 0.0)

    async def _tick_forever(self) -> None:
        period = min(1.0, max(0.05, self._opt.ack_timeout_s / 4))
        while not self._closed:
            await asyncio.sleep(period)
            self._expire()

    # -- the port -------------------------------------------------------------------------------------------
    async def receive(self, max_records: int, timeout: float) -> list[Delivery]:
        deadline = self._loop.time() + timeout
        while not self._closed:
            self._expire()
            if self._inbox:
                self._take_inbox()
            if self._ready:
                out: list[Delivery] = []
                now = self._loop.time()
                while self._ready and len(out) < max_records:
                    d = self._ready.popleft()
                    token: _Token = d.token  # type: ignore[assignment]
                    if token.consumer.closed:
                        continue  # its workspace went away; Pulsar redelivers it elsewhere if it still exists
                    token.deadline = now + self._opt.ack_timeout_s
                    self._inflight[id(token)] = token
                    out.append(d)
                if self._paused and len(self._ready) < self._opt.high_water // 2:
                    self._set_paused(False)
                if out:
                    return out
                continue
            self._event.clear()
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                return []
            self._waiting = True
            try:
                if self._inbox:  # appended before the listener could see _waiting: take it now
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._event.wait(), remaining)
            finally:
                self._waiting = False
        return []

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        """Hand the acks to the client without waiting for each: it groups them (100 ms) and sends them
        in the background.  A lost ack only means the record comes again, and the writes are idempotent."""
        for d in deliveries:
            token: _Token = d.token  # type: ignore[assignment]
            if token.settled:
                continue
            token.settled = True
            self._inflight.pop(id(token), None)
            raw = token.consumer.raw
            if raw is None or token.consumer.closed:
                continue  # its consumer is gone: Pulsar redelivers the record to another
            try:
                raw.acknowledge_async(token.msg, _ack_done)
            except Exception as exc:
                log.warning("ack failed ws=%s channel=%s offset=%d: %s", *token.key, token.offset, exc)

    async def nack(self, deliveries: Sequence[Delivery], delay: float) -> None:
        for d in deliveries:
            token: _Token = d.token  # type: ignore[assignment]
            if not token.settled:
                self._hand_back(token, delay)

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        r = delivery.record
        producer = self._dlq.get(r.workspace)
        try:
            if producer is None:
                producer = await self._client.create_producer(dead_letter_topic(r.workspace, self._name),
                                                              batching_enabled=False)
                self._dlq[r.workspace] = producer
            await producer.send(r.payload, properties={
                "reason": reason[:1000], "channel": r.channel, "offset": str(r.offset),
                "subscription": self._name, "delivery_count": str(delivery.delivery_count),
            })
        except pulsar_async.PulsarException as exc:
            raise Unavailable(f"dead-lettering ws={r.workspace} channel={r.channel} offset={r.offset} failed: "
                              f"{exc}") from exc
        await self.ack([delivery])
