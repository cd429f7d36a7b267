"""Pulsar broker adapter: the Broker port (storm/ports/broker.py) on Apache Pulsar.

Decisions and their limits are in docs/adr/0005-pulsar-broker.md; in short:

* Workspace slug = Pulsar tenant; channel logs are persistent topics ``{ws}/channels/{channel}``, ephemeral
  records go to non-persistent topics ``{ws}/ephemeral/{channel}`` (:mod:`storm.adapters.pulsar_admin`).
* Offset = Pulsar position ``(ledger_id << 20) | entry_id`` (:mod:`storm.adapters.pulsar_names`): strictly
  increasing per channel, not dense.  ``publish`` returns it from the broker's send receipt, i.e. once the
  entry is persisted; receipts reach the event loop in bursts, one wake-up each (``_LoopHandoff``).
* One producer per topic per process (LRU-bounded), batching off, named ``{gateway_id}-{channel}`` so that
  the broker's deduplication (enabled per namespace) drops a message the client resends after a reconnect.
* Broadcast: one non-durable reader per followed channel, created just after the channel's last entry (an
  explicit position, not *latest*: a reconnect after a broker restart resumes there), plus one reader
  per followed *workspace* on its ephemeral feed ``non-persistent://{ws}/ephemeral/workspace.feed`` (every
  ephemeral record of the workspace, keyed by channel, filtered here); the client's listener threads hand
  messages to the event loop in bursts, with the send receipts (``_LoopHandoff``).  At most
  ``max_channel_readers`` channels per process.  Why not fewer readers still:
  docs/adr/0013-following-channels.md.  With ``STORM_BROADCAST=relay`` a gateway instead reads one
  relay-fed broadcast topic per followed workspace (:mod:`storm.adapters.pulsar_relay`, ADR 0013 amendment).
* Work sharing: :mod:`storm.adapters.pulsar_work`.

Nothing connects in ``__init__``; ``start`` connects (and refuses a second call); ``stop`` is idempotent and
closes readers, consumers, producers, the client and the admin HTTP client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import _pulsar
import pulsar
import pulsar.asyncio as pulsar_async

from storm.adapters.flight import Shared, single_flight
from storm.adapters.pulsar_admin import PulsarAdmin
from storm.adapters.pulsar_names import (
    FIRST_REAL_OFFSET,
    channel_topic,
    check_channel,
    decode_offset,
    encode_offset,
)
from storm.adapters.pulsar_work import PulsarWorkSubscription, WorkOptions, WorkspaceDirectory
from storm.domain import Plan
from storm.errors import NotFound, OffsetTruncated, PublishNotSent, StormError, Unavailable
from storm.lifecycle import Lifecycle
from storm.ports.broker import BroadcastHandler, Record
from storm.ports.clock import Clock

if TYPE_CHECKING:
    from storm.ports.broker import (
        BroadcastSubscription,
        Broker,
        ChannelPreparer,
        WorkBacklog,
        WorkScope,
        WorkSubscription,
    )

log = logging.getLogger("storm.broker.pulsar")


FEED_TOPIC = "workspace.feed"  # the '.' keeps it apart from every channel id (CHANNEL_RE)


def ephemeral_feed_topic(workspace: str) -> str:
    """The workspace's one ephemeral topic: typing and presence of all its channels, keyed by channel."""
    return f"non-persistent://{workspace}/ephemeral/{FEED_TOPIC}"


class ChannelReadersExhausted(Unavailable):
    """This gateway already follows ``max_channel_readers`` channels; following one more is refused."""


PULSAR_CLIENT_LOG = "/dev/stderr"


class PublishOutcomeUnknown(Unavailable):
    """The broker answered a send as a duplicate: the record is stored, but its offset is not known here."""


def _pulsar_error(action: str, exc: BaseException) -> StormError:
    """A client error as a StormError: a missing namespace is NotFound (the workspace has no broker side:
    never ensured, or deleted), anything else Unavailable (retriable)."""
    if isinstance(exc, pulsar_async.PulsarException) and exc.error() == pulsar.Result.TopicNotFound:
        return NotFound(f"Pulsar {action}: the workspace has no broker side (not set up, or deleted): {exc}")
    return Unavailable(f"Pulsar {action} failed: {exc}")


class _LoopHandoff:
    """Calls from the Pulsar client's threads to the event loop, one loop wake-up per burst.

    ``loop.call_soon_threadsafe`` per send receipt or per received message is a write to the loop's
    self-pipe and a wake-up each (and, at 1 000 messages/s, a gateway's loop woken twice per message).
    Here a call is queued, and only the first call of a burst schedules the drain, which runs every queued
    call in one loop callback, in arrival order: a reader's messages, handed over one after another by its
    listener, keep their order.  One per broker and loop: receipts and broadcast messages share the burst.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._queue: list[tuple[Callable[[Any], None], Any]] = []
        self._scheduled = False

    def put(self, fn: Callable[[Any], None], arg: Any) -> None:
        """Run ``fn(arg)`` on the loop, after every call put before it.  Safe from any thread."""
        with self._lock:
            self._queue.append((fn, arg))
            if self._scheduled:
                return
            self._scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits or listens any more
            self.loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            queue, self._queue, self._scheduled = self._queue, [], False
        for fn, arg in queue:
            try:
                fn(arg)
            except Exception:  # one failing call must not drop the rest of the burst
                log.exception("a Pulsar callback failed on the loop")


class _SendCompletions:
    """Send receipts from the Pulsar client's threads to the event loop through a :class:`_LoopHandoff`.

    ``pulsar.asyncio.Producer.send`` schedules one ``call_soon_threadsafe`` per receipt; here the receipts
    of a burst complete their futures in one loop callback (in receipt order).  The receipt's position is
    read on the client thread, so the loop builds no ``pulsar.MessageId``.
    """

    def __init__(self, handoff: _LoopHandoff) -> None:
        self._handoff = handoff

    def callback(self, fut: asyncio.Future[tuple[int, int]]) -> Callable[[Any, Any], None]:
        put = self._handoff.put

        def done(result: Any, msg_id: Any) -> None:  # on a Pulsar client thread
            ok = result == _pulsar.Result.Ok
            put(_settle_send, (fut, result, msg_id.ledger_id() if ok else -1, msg_id.entry_id() if ok else -1))

        return done


def _settle_send(item: tuple[asyncio.Future[tuple[int, int]], Any, int, int]) -> None:
    fut, result, ledger_id, entry_id = item
    if fut.done():  # the sender was cancelled
        return
    if result == _pulsar.Result.Ok:
        fut.set_result((ledger_id, entry_id))
    else:
        fut.set_exception(pulsar_async.PulsarException(result))


class _Producers:
    """Producers by topic, created once (concurrent callers share the creation), LRU-bounded.

    An evicted producer is flushed and closed in the background; creating a producer for the same topic
    again waits for that close.  A named producer gets ``{name}-{8 hex digits}``, new at every creation
    attempt: a creation the client gave up on (operation timeout) goes on in the broker, which then holds a
    producer of that name, and a retry under the same name was refused ProducerBusy until the broker had
    finished and closed it (storm day, 100 000 users: 670 refusals for 1 009 producers created).  A producer
    keeps its name across reconnects, so the broker's deduplication still drops the client's own resends.
    """

    def __init__(self, client: pulsar_async.Client, max_size: int, send_timeout_ms: int) -> None:
        self._client = client
        self._max = max_size
        self._send_timeout_ms = send_timeout_ms
        self._open: OrderedDict[str, pulsar_async.Producer] = OrderedDict()
        self._creating: dict[str, asyncio.Future[pulsar_async.Producer]] = {}
        self._closing: dict[str, asyncio.Task[None]] = {}

    def __len__(self) -> int:
        return len(self._open)

    async def get(self, topic: str, name: str | None) -> pulsar_async.Producer:
        producer = self._open.get(topic)
        if producer is not None:
            self._open.move_to_end(topic)
            return producer

        async def create() -> pulsar_async.Producer:
            closing = self._closing.get(topic)
            if closing is not None:
                await asyncio.shield(closing)
            created = await self._client.create_producer(
                topic, producer_name=None if name is None else f"{name}-{uuid.uuid4().hex[:8]}",
                batching_enabled=False, block_if_queue_full=True,
                send_timeout_millis=self._send_timeout_ms,
            )
            self._open[topic] = created
            return created

        producer = await single_flight(self._creating, topic, create)
        while len(self._open) > self._max:
            old_topic, old = self._open.popitem(last=False)
            self._closing[old_topic] = asyncio.get_running_loop().create_task(self._close(old_topic, old))
        return producer

    def drop(self, topic: str) -> None:
        """Forget a producer that failed (e.g. its topic was deleted); it is closed in the background."""
        producer = self._open.pop(topic, None)
        if producer is not None:
            self._closing[topic] = asyncio.get_running_loop().create_task(self._close(topic, producer))

    async def _close(self, topic: str, producer: pulsar_async.Producer) -> None:
        try:
            with contextlib.suppress(Exception):
                await producer.flush()
            with contextlib.suppress(Exception):
                await producer.close()
        finally:
            self._closing.pop(topic, None)

    async def close_all(self) -> None:
        for topic, producer in list(self._open.items()):
            self._closing[topic] = asyncio.get_running_loop().create_task(self._close(topic, producer))
        self._open.clear()
        if self._closing:
            await asyncio.gather(*self._closing.values(), return_exceptions=True)


@dataclass(frozen=True, slots=True)
class PulsarSettings:
    """What the adapter takes from the configuration; :func:`storm.bootstrap.pulsar_settings` builds it
    from ``STORM_PULSAR_*`` and the consumer settings (docs/configuration.md)."""

    service_url: str  # STORM_PULSAR_URL
    admin_url: str  # STORM_PULSAR_ADMIN_URL
    cluster: str  # STORM_PULSAR_CLUSTER: the cluster a workspace tenant is allowed on
    gateway_id: str  # STORM_GATEWAY_ID: prefix of producer names (broker deduplication); random when empty
    max_channel_readers: int  # STORM_MAX_CHANNEL_READERS
    ack_timeout_s: float  # STORM_ACK_TIMEOUT_S
    max_redeliveries: int  # STORM_CONSUMER_MAX_REDELIVERIES: the worker's bound; not given to Pulsar (pulsar_work.py)
    send_timeout_s: float  # STORM_PUBLISH_TIMEOUT_S
    broadcast: str = "readers"  # STORM_BROADCAST: readers (a reader per followed channel) or relay (pulsar_relay.py)
    work_attach_chunk: int = 100  # STORM_WORK_ATTACH_CHUNK: channel topics per work consumer (pulsar_work.py)


def _relay_needs_its_class() -> ValueError:
    return ValueError("STORM_BROADCAST=relay needs storm.adapters.pulsar_relay.RelayPulsarBroker "
                       "(storm.adapters.pulsar_relay.pulsar_broker picks the class from the settings)")


class PulsarBroker:
    def __init__(
        self,
        settings: PulsarSettings,
        clock: Clock,
        *,
        workspace_filter: Callable[[str], bool] | None = None,
        max_producers: int = 1024,
        read_timeout_s: float = 5.0,
        discovery_period_s: float = 30.0,
        pattern_discovery_s: int = 5,
    ) -> None:
        """``workspace_filter`` limits which tenants work subscriptions discover (tests give each test its
        own); ``discovery_period_s`` is how often tenants are listed, ``pattern_discovery_s`` how often a
        work subscription lists a workspace's channel topics to attach new ones."""
        self._settings = settings
        self._clock = clock
        self._gateway_id = settings.gateway_id or f"gw-{uuid.uuid4().hex[:12]}"
        self._max_readers = settings.max_channel_readers
        self._max_producers = max_producers
        self._send_timeout_ms = int(settings.send_timeout_s * 1000)
        self._read_timeout_s = read_timeout_s
        self._work_options = WorkOptions(
            ack_timeout_s=settings.ack_timeout_s,
            discovery_period_s=discovery_period_s,
            pattern_discovery_s=pattern_discovery_s,
            attach_chunk=settings.work_attach_chunk,
        )
        self._workspace_filter = workspace_filter or (lambda _ws: True)
        self.admin = PulsarAdmin(settings.admin_url, settings.cluster)
        self._client: pulsar_async.Client | None = None
        self._producers: _Producers | None = None
        self._handoff: _LoopHandoff | None = None
        self._completions: _SendCompletions | None = None
        self._broadcasts: set[PulsarBroadcastSubscription] = set()
        self._work: set[PulsarWorkSubscription] = set()
        self._readers = 0  # channels followed by all broadcast subscriptions of this process
        self._relay: Any = None  # storm.adapters.pulsar_relay.PulsarRelay, made by the first relay() call
        self._life = Lifecycle("broker")

    @property
    def gateway_id(self) -> str:
        return self._gateway_id

    def limit_work_to(self, workspace_filter: Callable[[str], bool]) -> None:
        """Let work subscriptions opened from now on cover only the tenants ``workspace_filter`` accepts
        (benches and tests on a shared cluster; see the constructor)."""
        self._workspace_filter = workspace_filter

    # -- lifecycle ----------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._life.begin_start()
        await self.admin.start()  # no I/O: the HTTP client connects on its first call
        # Neither does the Pulsar client: it connects on the first producer, reader or consumer.
        self._client = pulsar_async.Client(
            self._settings.service_url, operation_timeout_seconds=10, connection_timeout_ms=5000,
            # The client's native logger, warnings and errors only, to stderr (its ConsoleLogger writes to
            # stdout, where the benches print JSON).  A Python logging.Logger here makes the C++ client
            # call into Python for every log statement of every level, DEBUG included, each under the GIL:
            # measured ~110 us per consumed message, 43 000 -> 9 400 msgs/s (docs/consumers.md, "Throughput").
            # Nothing secret goes through the client (no auth tokens), so these lines need no redaction.
            logger=pulsar.FileLogger(pulsar.LoggerLevel.Warn, PULSAR_CLIENT_LOG),
        )
        self._producers = _Producers(self._client, self._max_producers, self._send_timeout_ms)
        self._handoff = _LoopHandoff(asyncio.get_running_loop())
        self._completions = _SendCompletions(self._handoff)
        self._life.started()

    async def stop(self) -> None:
        if not self._life.begin_stop():
            return
        for sub in list(self._broadcasts):
            with contextlib.suppress(Exception):
                await sub.close()
        for work in list(self._work):
            with contextlib.suppress(Exception):
                await work.close()
        if self._producers is not None:
            await self._producers.close_all()
        if self._relay is not None:
            await self._relay.close()
        if self._client is not None:
            client, self._client = self._client, None
            try:
                await client.close()
            except Exception:
                log.exception("closing the Pulsar client failed")
        await self.admin.close()

    async def __aenter__(self) -> PulsarBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __del__(self) -> None:
        if self._life.running:
            warnings.warn(f"PulsarBroker {self._gateway_id} was started and never stopped", ResourceWarning,
                          source=self, stacklevel=1)

    def _handoff_for(self, loop: asyncio.AbstractEventLoop) -> _LoopHandoff:
        """The broker's hand-off to ``loop`` (the one it started on), else a new one for that loop."""
        if self._handoff is not None and self._handoff.loop is loop:
            return self._handoff
        return _LoopHandoff(loop)

    def _running(self) -> pulsar_async.Client:
        self._life.check()
        if self._client is None:
            raise Unavailable("broker is not running")
        return self._client

    # -- workspaces -----------------------------------------------------------------------------------
    async def ensure_workspace(self, workspace: str, plan: Plan) -> None:
        """Tenant, namespaces and plan policies; what this call created is deleted again if a later step
        fails, and :class:`~storm.errors.Unavailable` (retriable) is raised."""
        self._running()
        created_tenant = False
        try:
            created_tenant = await self.admin.ensure_tenant(workspace)
            await self.admin.ensure_namespace(workspace, "channels")
            await self.admin.ensure_namespace(workspace, "ephemeral")
            await self.admin.set_channel_policies(workspace, plan)
            await self.admin.set_ephemeral_policies(workspace, plan)
        except Exception as exc:
            if created_tenant:
                try:
                    await self.admin.delete_tenant(workspace)
                except Exception:
                    log.exception("ws=%s compensation failed: tenant left half-created; retry the call", workspace)
            raise Unavailable(f"broker side of workspace {workspace!r} could not be set up "
                              f"({'rolled back' if created_tenant else 'policies may be partly updated'}): "
                              f"{exc}") from exc
        for work in list(self._work):
            work.workspace_added(workspace)

    async def delete_workspace(self, workspace: str) -> None:
        self._running()
        for work in list(self._work):
            await work.workspace_removed(workspace)
        for sub in list(self._broadcasts):
            await sub.drop_workspace(workspace)
        assert self._producers is not None
        for topic in [t for t in list(self._producers._open) if t.split("://", 1)[1].startswith(f"{workspace}/")]:
            self._producers.drop(topic)
        if self._relay is not None:
            await self._relay.drop(workspace)
        try:
            await self.admin.delete_tenant(workspace)
        except StormError as exc:
            raise Unavailable(f"broker side of workspace {workspace!r} could not be deleted: {exc}") from exc

    async def workspaces(self) -> list[str]:
        """Tenants that work subscriptions should cover."""
        return [t for t in await self.admin.tenants() if self._workspace_filter(t)]

    async def work_backlog(self, name: str) -> int:
        """Records waiting on the work subscription ``name``, from the admin API's topic stats."""
        self._running()
        return await self.admin.work_backlog(name)

    async def ensure_channel(self, workspace: str, channel: str) -> None:
        """Create a channel's topic ahead of its first record, so that work consumers already attached to
        the workspace see it at their next topic discovery rather than after the first publish."""
        self._running()
        channel_topic(workspace, channel)  # validates the id
        await self.admin.create_topic(workspace, channel)

    # -- logs -----------------------------------------------------------------------------------------
    async def publish(self, workspace: str, channel: str, payload: bytes) -> int:
        self._running()
        topic = channel_topic(workspace, channel)
        assert self._producers is not None
        try:
            producer = await self._producers.get(topic, f"{self._gateway_id}-{channel}")
        except pulsar_async.PulsarException as exc:  # nothing was sent: a retry cannot duplicate
            self._producers.drop(topic)
            error = _pulsar_error(f"publish ws={workspace} channel={channel}", exc)
            if type(error) is Unavailable:
                raise PublishNotSent(error.message) from exc
            raise error from exc
        assert self._completions is not None
        builder = _pulsar.MessageBuilder()
        builder.content(payload)
        builder.ordering_key(channel)
        fut: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        try:
            # what producer.send does, minus one loop wake-up per receipt (_SendCompletions)
            producer._producer.send_async(builder.build(), self._completions.callback(fut))
            ledger_id, entry_id = await fut
        except pulsar_async.PulsarException as exc:  # outcome unknown: the entry may be persisted
            self._producers.drop(topic)
            raise _pulsar_error(f"publish ws={workspace} channel={channel}", exc) from exc
        if ledger_id < 0:
            raise PublishOutcomeUnknown(
                f"ws={workspace} channel={channel}: the broker reports a duplicate send; the record is stored "
                "but its offset is unknown"
            )
        return encode_offset(ledger_id, entry_id)

    async def publish_ephemeral(self, workspace: str, channel: str, payload: bytes) -> None:
        self._running()
        check_channel(channel)
        topic = ephemeral_feed_topic(workspace)  # one per workspace, keyed by channel (ADR 0013)
        assert self._producers is not None
        try:
            producer = await self._producers.get(topic, None)
            await producer.send(payload, partition_key=channel)
        except pulsar_async.PulsarException as exc:  # best effort: typing and presence may be lost
            self._producers.drop(topic)
            log.warning("ephemeral publish failed ws=%s channel=%s: %s", workspace, channel, exc)

    async def head(self, workspace: str, channel: str) -> int:
        self._running()
        channel_topic(workspace, channel)
        pos = await self.admin.last_position(workspace, channel)
        if pos is None or pos.ledger_id < 0:
            return 0
        if pos.entry_id >= 0:
            return encode_offset(pos.ledger_id, pos.entry_id)
        # the current ledger is empty (just rolled over): the last entry is in an earlier ledger
        stats = await self.admin.ledgers(workspace, channel)
        if stats is None:
            return 0
        for lg in reversed(stats[0]):
            if lg.entries > 0 and lg.ledger_id < pos.ledger_id:
                return encode_offset(lg.ledger_id, lg.entries - 1)
        return 0

    async def earliest(self, workspace: str, channel: str) -> int | None:
        """Offset of the oldest retained record; None when the log retains nothing."""
        stats = await self.admin.ledgers(workspace, channel)
        if stats is None:
            return None
        ledgers, last = stats
        for lg in ledgers:
            current = last is not None and lg.ledger_id == last.ledger_id and last.entry_id >= 0
            if lg.entries > 0 or current:
                return encode_offset(lg.ledger_id, 0)
        return None

    async def read(self, workspace: str, channel: str, from_offset: int, limit: int, *,
                   head: int | None = None) -> list[Record]:
        client = self._running()
        topic = channel_topic(workspace, channel)
        if head is None:
            head = await self.head(workspace, channel)
        if limit <= 0 or head == 0 or from_offset > head:
            return []
        ledger, entry = decode_offset(max(from_offset, 0))
        try:
            reader = await client.create_reader(
                topic, pulsar.MessageId(-1, ledger, entry, -1), start_message_id_inclusive=True,
                receiver_queue_size=min(max(limit, 1), 1000),
            )
        except pulsar_async.PulsarException as exc:
            raise _pulsar_error(f"read ws={workspace} channel={channel}", exc) from exc
        records: list[Record] = []
        stalled = False
        try:
            while len(records) < limit:
                msg = await asyncio.wait_for(reader.read_next(), self._read_timeout_s)
                record = _record(workspace, channel, msg)
                if record.offset < from_offset:
                    continue
                records.append(record)
                if record.offset >= head:
                    break
        except TimeoutError:
            stalled = True
            log.warning("read ws=%s channel=%s from=%d: nothing more within %.1fs (head %d, %d read)", workspace,
                        channel, from_offset, self._read_timeout_s, head, len(records))
        except pulsar_async.PulsarException as exc:
            raise _pulsar_error(f"read ws={workspace} channel={channel}", exc) from exc
        finally:
            with contextlib.suppress(Exception):
                await reader.close()
        if from_offset >= FIRST_REAL_OFFSET and (not records or records[0].offset > from_offset):
            # a jump: either the ledger boundary (normal, offsets are not dense) or retention removed the
            # start of the log.  Retention deletes whole ledgers from the front, so it is the latter exactly
            # when from_offset lies before the first retained entry.  An offset in ledger 0 was never handed
            # out: such a read means "from the start of what is retained" and is never truncated (whether
            # older ledgers existed cannot be told).
            earliest = await self.earliest(workspace, channel)
            if earliest is None:
                earliest = head + 1
            if from_offset < earliest:
                raise OffsetTruncated(f"offsets before {earliest} are no longer retained", earliest=earliest)
        if stalled:
            # the log holds every record up to `head`: a reader that stopped short was held up (a broker
            # restarting, overloaded), and a short answer would be a silent hole in a resume's replay
            last = records[-1].offset if records else None
            raise Unavailable(f"read ws={workspace} channel={channel}: the broker sent {len(records)} records "
                              f"(up to {last}) of those up to {head} within {self._read_timeout_s:g} s")
        return records

    # -- subscriptions ------------------------------------------------------------------------------------
    async def subscribe_broadcast(self, handler: BroadcastHandler) -> PulsarBroadcastSubscription:
        self._running()
        sub = self._new_broadcast(handler)
        self._broadcasts.add(sub)
        return sub

    def _new_broadcast(self, handler: BroadcastHandler) -> PulsarBroadcastSubscription:
        """A reader per followed channel; ``RelayPulsarBroker`` (pulsar_relay.py) overrides it."""
        if self._settings.broadcast == "relay":
            raise _relay_needs_its_class()
        return PulsarBroadcastSubscription(self, handler)

    def _new_relay(self) -> Any:
        raise _relay_needs_its_class()

    async def subscribe_work(self, name: str) -> PulsarWorkSubscription:
        client = self._running()
        work = PulsarWorkSubscription(client, name, self._work_options, _Directory(self), self._on_work_closed)
        self._work.add(work)
        try:
            await work.start()
        except BaseException:
            self._work.discard(work)
            raise
        return work

    async def relay(self, records: Sequence[Record]) -> None:
        """Republish channel-log records to their workspaces' broadcast topics (the relay worker,
        consumers/relay.py; :mod:`storm.adapters.pulsar_relay`); returns once all are persisted."""
        client = self._running()
        if self._relay is None:
            assert self._completions is not None and client is not None
            self._relay = self._new_relay()
        await self._relay.send(records)

    def _on_work_closed(self, work: PulsarWorkSubscription) -> None:
        self._work.discard(work)

    # broadcast bookkeeping: one reader budget per process
    def _take_reader(self) -> None:
        if self._readers >= self._max_readers:
            raise ChannelReadersExhausted(
                f"this gateway already follows {self._max_readers} channels (STORM_MAX_CHANNEL_READERS); "
                "retry later or connect to another gateway"
            )
        self._readers += 1

    def _give_reader(self) -> None:
        self._readers = max(0, self._readers - 1)


class _Directory(WorkspaceDirectory):
    def __init__(self, broker: PulsarBroker) -> None:
        self._broker = broker

    async def workspaces(self) -> list[str]:
        return await self._broker.workspaces()

    async def channel_topics(self, workspace: str) -> list[str]:
        return await self._broker.admin.channel_topics(workspace)


def _after(pos: Any) -> Any:
    """A reader's start just after ``pos`` (a topic's last entry, from the admin API), exclusive; the topic's
    beginning when it has no entry yet (everything in it is new)."""
    if pos is None or pos.ledger_id < 0:
        return pulsar.MessageId.earliest
    return _pulsar.MessageId(-1, pos.ledger_id, pos.entry_id, -1)


def _record(workspace: str, channel: str, msg: Any, *, ephemeral: bool = False) -> Record:
    """A Record from a pulsar.Message or a _pulsar.Message (listener threads hand us the latter)."""
    mid = msg.message_id()
    offset = 0 if ephemeral else encode_offset(mid.ledger_id(), mid.entry_id())
    return Record(workspace, channel, offset, msg.data(), msg.publish_timestamp() / 1000.0)


class PulsarBroadcastSubscription:
    """One gateway's live feed: a reader per followed channel on its log topic, from just after its last entry
    when ``add`` began (``_log_start``), so it receives every record published after ``add`` returned, also
    across a broker restart; and one reader per workspace with a followed
    channel on the workspace's ephemeral feed, whose records are kept only for followed channels (a reader
    per channel's ephemeral topic doubled the readers: docs/adr/0013-following-channels.md)."""

    reader_queue = 100  # each reader's receiver queue (messages)

    def __init__(self, broker: PulsarBroker, handler: BroadcastHandler) -> None:
        self._broker = broker
        self._handler = handler
        self._loop = asyncio.get_running_loop()
        self._readers: dict[tuple[str, str], Any] = {}
        self._adding: dict[tuple[str, str], asyncio.Future[None]] = {}
        # workspace -> its ephemeral feed reader, opened by its first followed (or being added) channel
        self._feeds: Shared[str, Any] = Shared(self._open_feed, _close_reader)
        self._closed = False

    def __len__(self) -> int:
        return len(self._readers)

    @property
    def feeds(self) -> int:
        """Ephemeral feed readers open: one per workspace with a followed channel."""
        return len(self._feeds)

    def _deliver(self, key: tuple[str, str], msg: Any) -> None:
        if key not in self._readers:  # removed while the message was on its way
            return
        try:
            self._handler(_record(key[0], key[1], msg))
        except Exception:  # a gateway bug must not stop the feed
            log.exception("broadcast handler failed ws=%s channel=%s", *key)

    def _deliver_feed(self, workspace: str, msg: Any) -> None:
        channel = msg.partition_key()
        if (workspace, channel) not in self._readers:  # a channel this gateway does not follow
            return
        try:
            self._handler(_record(workspace, channel, msg, ephemeral=True))
        except Exception:
            log.exception("broadcast handler failed ws=%s channel=%s", workspace, channel)

    def _listener(self, deliver: Callable[[Any], None]) -> Callable[[Any, Any], None]:
        put = self._broker._handoff_for(self._loop).put  # one loop wake-up per burst, not per message

        def on_message(_reader: Any, msg: Any) -> None:  # runs on a Pulsar client thread
            put(deliver, msg)

        return on_message

    async def _reader(self, topic: str, deliver: Callable[[Any], None], start: Any = None) -> Any:
        client = self._broker._running()
        conf = _pulsar.ReaderConfiguration()
        conf.reader_listener(self._listener(deliver))
        conf.receiver_queue_size(self.reader_queue)
        conf.schema(pulsar.schema.BytesSchema().schema_info())
        fut: asyncio.Future[Any] = self._loop.create_future()
        client._client.create_reader_async_v2(topic, pulsar.MessageId.latest if start is None else start, conf,
                                              lambda value: _complete(fut, value))
        return await fut

    async def _log_start(self, workspace: str, channel: str) -> Any:
        """Where a channel log's reader starts: just after the last entry written when it is added, an
        explicit position rather than ``MessageId.latest``.  The client resubscribes a reader that has
        received nothing yet at its start position when it reconnects: with *latest*, a reader added before
        a broker restart skipped what was published between the broker's return and its reconnect (chaos
        ``pulsar-restart``: the channels' first messages after the restart never reached their members;
        tests/integration/test_pulsar_restart_readers.py).  One admin call per followed channel."""
        return _after(await self._broker.admin.last_position(workspace, channel))

    def _open_feed(self, workspace: str) -> Awaitable[Any]:
        return self._reader(ephemeral_feed_topic(workspace), lambda msg: self._deliver_feed(workspace, msg))

    async def add(self, workspace: str, channel: str) -> None:
        key = (workspace, channel)
        if self._closed:
            raise Unavailable("broadcast subscription is closed")
        if key in self._readers:
            return
        pending = self._adding.get(key)
        if pending is not None:
            await asyncio.shield(pending)
            return
        log_topic = channel_topic(workspace, channel)
        self._broker._take_reader()
        fut: asyncio.Future[None] = self._loop.create_future()
        self._adding[key] = fut
        reader: Any = None
        fed = False
        try:
            reader = await self._reader(log_topic, lambda msg: self._deliver(key, msg),
                                        await self._log_start(workspace, channel))
            await self._feeds.acquire(workspace)
            fed = True
            self._readers[key] = reader
            fut.set_result(None)
        except BaseException as exc:
            self._broker._give_reader()
            if reader is not None:
                await _close_reader(reader)
            if fed:
                await self._feeds.release(workspace)
            err = _pulsar_error(f"follow ws={workspace} channel={channel}", exc) if isinstance(
                exc, pulsar_async.PulsarException) else exc
            fut.set_exception(err)
            fut.exception()
            if err is exc:
                raise
            raise err from exc
        finally:
            del self._adding[key]

    async def remove(self, workspace: str, channel: str) -> None:
        pending = self._adding.get((workspace, channel))
        if pending is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(pending)
        reader = self._readers.pop((workspace, channel), None)
        if reader is None:
            return
        self._broker._give_reader()
        await _close_reader(reader)
        await self._feeds.release(workspace)

    async def drop_workspace(self, workspace: str) -> None:
        for ws, ch in [k for k in self._readers if k[0] == workspace]:
            await self.remove(ws, ch)

    async def close(self) -> None:
        self._closed = True
        for ws, ch in list(self._readers):
            await self.remove(ws, ch)
        self._broker._broadcasts.discard(self)


def _complete(fut: asyncio.Future[Any], value: Any) -> None:
    """Callback of the client's *_async_v2 calls (on a client thread): resolve ``fut`` on its loop."""

    def settle() -> None:
        if fut.done():
            if not isinstance(value, _pulsar.Error):  # created after the caller gave up: close it
                with contextlib.suppress(Exception):
                    value.close_async(lambda _res: None)
            return
        if isinstance(value, _pulsar.Error):
            fut.set_exception(pulsar_async.PulsarException(value.error, value.message))
        else:
            fut.set_result(value)

    with contextlib.suppress(RuntimeError):
        fut.get_loop().call_soon_threadsafe(settle)


async def _close_reader(reader: Any) -> None:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def done(result: Any) -> None:
        def settle() -> None:
            if not fut.done():
                fut.set_result(None)

        with contextlib.suppress(RuntimeError):
            fut.get_loop().call_soon_threadsafe(settle)

    try:
        reader.close_async(done)
        await asyncio.wait_for(fut, 10.0)
    except Exception:
        log.warning("closing a Pulsar reader failed", exc_info=True)


if TYPE_CHECKING:  # the type checker proves the port is satisfied (centrifuge's `var _ Broker = ...`)

    def _conforms(broker: PulsarBroker, broadcast: PulsarBroadcastSubscription, work: PulsarWorkSubscription) -> None:
        _broker: Broker = broker
        _prepares: ChannelPreparer = broker
        _scoped: WorkScope = broker
        _backlog: WorkBacklog = broker
        _broadcast: BroadcastSubscription = broadcast
        _work: WorkSubscription = work
