"""Work sharing on Pulsar: the WorkSubscription of the Pulsar broker adapter (docs/adr/0005-pulsar-broker.md).

A work subscription named ``name`` is a Key_Shared subscription ``name`` on every channel topic of every
workspace (``persistent://{ws}/channels/[^.]+``, initial position Earliest so nothing published before a
consumer found its topic is lost).  Messages are keyed by channel, so Pulsar hands all of a channel to one
consumer at a time, in order.

Attaching (docs/consumers.md, "Attaching to a workspace"; ADR 0005, "Amendment: attaching in chunks"): each
workspace has a task that lists its channel topics (admin API) every ``pattern_discovery_s`` and subscribes
the ones not attached yet in chunks of at most ``attach_chunk`` topics, one multi-topic consumer per chunk,
``ATTACH_CONCURRENCY`` chunk subscribes at a time per subscription.  A chunk attaches whole or not at all
(the client's multi-topic subscribe), but chunks are independent: the ones that attached stay, and only the
missing topics are tried again, after a backoff, in chunks half as large.  One pattern consumer over all of
a workspace's topics (until 2026-12-07) was all-or-nothing over hundreds of topics and, on the slow broker
of storm day, timed out every time: the consumers never attached (docs/storm-day.md).  Each topic is in one
chunk consumer of a subscription at a time, so per-channel order is Pulsar's Key_Shared order as before.

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
import random
import re
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
# Chunk subscribes in flight per work subscription, over all its workspaces (a chunk is up to attach_chunk
# topics, fewer after failures).  Attaching workspace after workspace took ~0.5 s each: a consumer process on
# a cluster with 60 tenants needed 30 s before it persisted anything.
ATTACH_CONCURRENCY = 8
TOPIC_KEYS_MAX = 100_000  # parsed topic names kept (one per channel seen); past it the cache starts over
_BYTES = pulsar.schema.BytesSchema()


@dataclass(frozen=True, slots=True)
class WorkOptions:
    ack_timeout_s: float
    discovery_period_s: float = 30.0  # how often tenants are listed
    pattern_discovery_s: float = 5  # how often each workspace's channel topics are listed
    receiver_queue: int = 1000
    high_water: int = 5000  # records buffered locally before the pump pauses
    attach_chunk: int = 100  # topics per consumer (STORM_WORK_ATTACH_CHUNK)
    attach_backoff_s: float = 1.0  # pause after a round with failures; doubled per failed round in a row
    attach_backoff_cap_s: float = 30.0


class WorkspaceDirectory(Protocol):
    async def workspaces(self) -> list[str]: ...

    async def channel_topics(self, workspace: str) -> list[str]:
        """The full names of the workspace's topics in its channels namespace (filtered here)."""
        ...


def chunked(topics: Sequence[str], size: int) -> list[list[str]]:
    """``topics`` in order, cut into lists of at most ``size``."""
    size = max(1, size)
    return [list(topics[i:i + size]) for i in range(0, len(topics), size)]


@dataclass(eq=False, slots=True)
class _Token:
    consumer: _ChunkConsumer
    msg: Any  # _pulsar.Message
    key: tuple[str, str]
    offset: int
    deadline: float = 0.0
    settled: bool = False


class _ChunkConsumer:
    """One multi-topic consumer over a chunk of a workspace's channel topics.  Its messages arrive through a
    listener (see the module's "Throughput" note); ``raw`` is set once the subscription exists."""

    __slots__ = ("closed", "raw", "topics", "workspace")

    def __init__(self, workspace: str, topics: tuple[str, ...]) -> None:
        self.workspace = workspace
        self.topics = topics
        self.raw: Any = None  # _pulsar.Consumer
        self.closed = False

    async def close(self) -> None:
        self.closed = True
        if self.raw is not None:
            with contextlib.suppress(Exception):
                await pulsar_async.Consumer(self.raw, _BYTES).close()


class _Workspace:
    """What a subscription holds of one workspace: its chunk consumers, the topics they cover, and the task
    that keeps them attached."""

    __slots__ = ("attached", "chunks", "first_round", "name", "removed", "task")

    def __init__(self, name: str) -> None:
        self.name = name
        self.chunks: list[_ChunkConsumer] = []
        self.attached: set[str] = set()
        self.first_round = asyncio.Event()  # set once the first listing and its subscribes are done
        self.task: asyncio.Task[None] | None = None
        self.removed = False


@dataclass(slots=True)
class _Round:
    """What one attach round of a workspace did."""

    listed: int = 0  # channel topics listed
    failed: int = 0  # of those, topics still not attached: in chunks whose subscribe failed
    chunks_failed: int = 0
    error: BaseException | None = None  # the first failure: the listing's or a subscribe's
    listing_failed: bool = False


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
        self._workspaces: dict[str, _Workspace] = {}
        self._gate = asyncio.Semaphore(ATTACH_CONCURRENCY)
        self._ready: deque[Delivery] = deque()
        self._held: dict[tuple[str, str], list[Delivery]] = {}
        self._awaited: dict[tuple[str, str], set[int]] = {}  # key -> offsets handed back, not yet returned
        self._inflight: dict[int, _Token] = {}  # id(token) -> token
        self._timers: set[asyncio.TimerHandle] = set()
        self._dlq: dict[str, pulsar_async.Producer] = {}
        self._event = asyncio.Event()
        self._inbox: deque[tuple[_ChunkConsumer, Any]] = deque()  # appended by the client's listener thread
        self._topic_keys: dict[str, tuple[str, str]] = {}  # topic name -> (workspace, channel), parsed once
        self._wake_pending = False
        self._waiting = False  # a receive() is waiting for records: the listener must wake the loop
        self._paused = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Attach to every known workspace; return once each has had its first round (listing and chunk
        subscribes, whatever their outcome: what failed is retried in the background)."""
        for ws in await self._directory.workspaces():
            self.workspace_added(ws)
        await asyncio.gather(*(w.first_round.wait() for w in list(self._workspaces.values())))
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
        workspaces = list(self._workspaces.values())
        tasks = list(self._tasks) + [w.task for w in workspaces if w.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for w in workspaces:  # after their tasks: no chunk attaches any more
            w.first_round.set()
            for c in w.chunks:
                await c.close()  # unacked records go back to the subscription's other consumers
        self._workspaces.clear()
        for producer in self._dlq.values():
            with contextlib.suppress(Exception):
                await producer.close()
        self._dlq.clear()
        self._on_closed(self)

    # -- introspection (tests, benches) ----------------------------------------------------------------
    def attached_topics(self, workspace: str) -> int:
        """Channel topics of ``workspace`` this subscription has a consumer on."""
        w = self._workspaces.get(workspace)
        return len(w.attached) if w is not None else 0

    def consumer_count(self, workspace: str) -> int:
        w = self._workspaces.get(workspace)
        return len(w.chunks) if w is not None else 0

    # -- workspaces -----------------------------------------------------------------------------------
    def workspace_added(self, workspace: str) -> None:
        if self._closed or workspace in self._workspaces:
            return
        w = self._workspaces[workspace] = _Workspace(workspace)
        w.task = self._loop.create_task(self._tend(w))

    async def workspace_removed(self, workspace: str) -> None:
        w = self._workspaces.pop(workspace, None)
        if w is not None:
            w.removed = True
            w.first_round.set()
            if w.task is not None:
                w.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await w.task
            for c in w.chunks:
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
            for ws in found - set(self._workspaces):
                self.workspace_added(ws)
            for ws in set(self._workspaces) - found:
                await self.workspace_removed(ws)

    # -- attaching: chunks of topics, retried until every topic has a consumer ---------------------------
    async def _tend(self, w: _Workspace) -> None:
        """Keep every channel topic of ``w`` attached: list the topics, subscribe the missing ones in chunks;
        again every ``pattern_discovery_s`` (new channels), or after a growing pause, with chunks half as
        large, when something failed."""
        size, pause, failed_rounds = self._opt.attach_chunk, self._opt.attach_backoff_s, 0
        while not (self._closed or w.removed):
            try:
                r = await self._attach_round(w, size)
            finally:
                w.first_round.set()
            if not (r.listing_failed or r.failed):
                if failed_rounds:
                    log.info("subscription=%s ws=%s: all %d channel topics attached, after %d failed rounds",
                             self._name, w.name, r.listed, failed_rounds)
                size, pause, failed_rounds = self._opt.attach_chunk, self._opt.attach_backoff_s, 0
                await asyncio.sleep(self._opt.pattern_discovery_s)
                continue
            failed_rounds += 1
            delay = pause * random.uniform(0.5, 1.0)  # jitter: the processes of a fleet do not retry together
            if r.listing_failed:
                log.warning("subscription=%s ws=%s: listing channel topics failed (%s); retrying in %.1f s",
                            self._name, w.name, r.error, delay)
            else:
                next_size = max(1, size // 2)
                log.warning("subscription=%s ws=%s: %d of %d channel topics attached; %d chunks of up to %d failed "
                            "(%s); retrying the %d missing in %.1f s, %d per chunk", self._name, w.name,
                            r.listed - r.failed, r.listed, r.chunks_failed, size, r.error, r.failed, delay, next_size)
                size = next_size
            await asyncio.sleep(delay)
            pause = min(pause * 2, self._opt.attach_backoff_cap_s)

    async def _attach_round(self, w: _Workspace, size: int) -> _Round:
        r = _Round()
        try:
            listed = await self._directory.channel_topics(w.name)
        except Exception as exc:
            r.error, r.listing_failed = exc, True
            return r
        pattern = re.compile(channels_pattern(w.name))
        topics = sorted({t for t in listed if pattern.fullmatch(t)})
        r.listed = len(topics)
        chunks = chunked([t for t in topics if t not in w.attached], size)
        errors = await asyncio.gather(*(self._attach_chunk(w, chunk) for chunk in chunks))
        for chunk, error in zip(chunks, errors, strict=True):
            if error is not None:
                r.failed += len(chunk)
                r.chunks_failed += 1
                r.error = r.error or error
        return r

    async def _attach_chunk(self, w: _Workspace, topics: list[str]) -> BaseException | None:
        """Subscribe one chunk: ``None`` once it is attached (or no longer wanted), else the failure."""
        async with self._gate:
            if self._closed or w.removed:
                return None
            c = _ChunkConsumer(w.name, tuple(topics))
            try:
                await self._open(w, c)
            except Exception as exc:  # PulsarException mostly (Timeout on a slow broker); retried all the same
                c.closed = True
                return exc
        return None

    async def _open(self, w: _Workspace, c: _ChunkConsumer) -> None:
        conf = _pulsar.ConsumerConfiguration()
        conf.consumer_type(pulsar.ConsumerType.KeyShared)
        conf.key_shared_policy(pulsar.ConsumerKeySharedPolicy().policy())
        conf.subscription_initial_position(pulsar.InitialPosition.Earliest)
        conf.negative_ack_redelivery_delay_ms(int(NACK_FLOOR_S * 1000))
        conf.receiver_queue_size(self._opt.receiver_queue)
        conf.consumer_name(f"{self._name}-{uuid.uuid4().hex[:8]}")
        conf.schema(_BYTES.schema_info())
        conf.message_listener(self._listener(c))
        fut: asyncio.Future[None] = self._loop.create_future()

        def done(value: Any) -> None:  # on a client thread: the consumer, or a PulsarException
            def settle() -> None:
                if fut.done():  # cancelled meanwhile (workspace removed, subscription closed): not wanted
                    c.closed = True
                    if not isinstance(value, BaseException):
                        value.close_async(lambda _r: None)
                elif isinstance(value, BaseException):
                    c.closed = True  # anything its listener queued is dropped: Pulsar sends it again
                    fut.set_exception(value)
                else:
                    # Registered here, in the same loop step as the result: the listener already runs, and a
                    # record it queued must find c.raw for its ack and _set_paused must find the consumer.
                    c.raw = value
                    if self._paused:
                        value.pause_message_listener()
                    w.chunks.append(c)
                    w.attached.update(c.topics)
                    fut.set_result(None)

            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(settle)

        self._subscribe(list(c.topics), conf, done)
        await fut

    def _subscribe(self, topics: list[str], conf: Any, done: Callable[[Any], None]) -> None:
        """Subscribe ``topics`` as one multi-topic consumer: all of them or none (the client closes the ones
        that attached when one fails).  ``done`` gets the consumer or a ``PulsarException``, on a client
        thread.  Tests replace this to inject failures."""
        def on_result(value: Any) -> None:
            if isinstance(value, _pulsar.Error):
                done(pulsar_async.PulsarException(value.error, value.message))
            else:
                done(value)

        self._client._client.subscribe_async_v2(topics, self._name, conf, on_result)

    # -- arrival: the listener thread queues, the loop takes the queue in one go ------------------------
    def _listener(self, c: _ChunkConsumer) -> Callable[[Any, Any], None]:
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
        for c in (c for w in self._workspaces.values() for c in w.chunks):
            if c.raw is not None and not c.closed:
                with contextlib.suppress(Exception):
                    if paused:
                        c.raw.pause_message_listener()
                    else:
                        c.raw.resume_message_listener()

    # -- local ordering -------------------------------------------------------------------------------------
    def _arrived(self, c: _ChunkConsumer, msg: Any) -> None:
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
