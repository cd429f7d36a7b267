"""Relay-fed broadcast on Pulsar (``STORM_BROADCAST=relay``): one broadcast topic per workspace.

docs/adr/0013-following-channels.md, "Amendment: the relay" states why and what it costs; in short:

* A relay worker (consumers/relay.py) takes every channel log's records from a Key_Shared work subscription
  (``relay``, keyed by channel, so a channel's records reach one relay at a time, in offset order, also
  across redeliveries) and republishes each to ``persistent://{ws}/channels/workspace.broadcast``
  (:func:`broadcast_topic`; the ``.`` keeps it out of the channel pattern, so no work subscription reads it)
  through :class:`PulsarRelay`: one **batching** producer per workspace, the channel and the offset as
  properties, the original publish time too.  A relay acknowledges a batch only once every record of it is
  persisted on the broadcast topic; a relay that dies in between sends the batch again (duplicates).
* A gateway's :class:`RelayBroadcastSubscription` opens **one reader per followed workspace** on that topic
  (plus the workspace's ephemeral feed reader, unchanged) instead of one reader per followed channel, keeps
  the records of the channels it follows and drops, per channel, every record whose offset is not above the
  last one it delivered: duplicates (a relay resending) and records older than the channel's head when it
  was added.

Why the port's guarantee holds (``add`` racing the relay): ``add`` reads the channel's head ``H`` and
positions the workspace's reader (an explicit position: the broadcast topic's last entry, read before the
reader is created) before it returns.  A record committed after ``add`` returned has an offset above ``H``,
and the relay republishes it only after it was committed, so after the reader's start position: it is read,
and the channel is followed by then.  Per channel, the broadcast topic holds the records in offset order
with at most repeats of earlier ones: every relay sends what it received in order on one producer per
workspace (a failed send fails the sends queued after it), it sends a batch only after the previous one
succeeded, and the work subscription never hands out a later record of a channel before a handed-back
earlier one.  So dropping "offset not above the last delivered" drops duplicates only.
Resume (``Broker.read``) still reads the channel log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import _pulsar
import pulsar.asyncio as pulsar_async

from storm.adapters.flight import Shared, single_flight
from storm.adapters.pulsar_admin import CHANNELS_NS, PulsarAdmin
from storm.adapters.pulsar_broker import (
    PulsarBroadcastSubscription,
    PulsarBroker,
    PulsarSettings,
    _after,
    _close_reader,
    _pulsar_error,
    _SendCompletions,
)
from storm.errors import Unavailable
from storm.ports.broker import BroadcastHandler, Record
from storm.ports.clock import Clock

log = logging.getLogger("storm.broker.pulsar.relay")

BROADCAST_TOPIC = "workspace.broadcast"  # in {ws}/channels; the '.' keeps it apart from every channel id
CHANNEL_PROP = "ch"
OFFSET_PROP = "off"
PUBLISH_TIME_PROP = "pt"  # the channel log's publish time, epoch milliseconds
BATCH_DELAY_MS = 5  # the relay's producers wait at most this long to fill a batch
MAX_PRODUCERS = 4096  # workspaces with an open relay producer per process (LRU)
READER_QUEUE = 2000  # a gateway's receiver queue per followed workspace


def broadcast_topic(workspace: str) -> str:
    return f"persistent://{workspace}/{CHANNELS_NS}/{BROADCAST_TOPIC}"


class PulsarRelay:
    """The relay's sending side: records of channel logs onto their workspaces' broadcast topics."""

    def __init__(self, client: pulsar_async.Client, admin: PulsarAdmin, completions: _SendCompletions,
                 send_timeout_ms: int) -> None:
        self._client = client
        self._admin = admin
        self._completions = completions
        self._send_timeout_ms = send_timeout_ms
        self._producers: dict[str, Any] = {}  # workspace -> pulsar_async.Producer (insertion = LRU order)
        self._creating: dict[str, asyncio.Future[Any]] = {}

    async def _producer(self, workspace: str) -> Any:
        producer = self._producers.pop(workspace, None)
        if producer is not None:
            self._producers[workspace] = producer  # most recently used last
            return producer

        async def create() -> Any:
            created = await self._client.create_producer(
                broadcast_topic(workspace), batching_enabled=True, batching_max_publish_delay_ms=BATCH_DELAY_MS,
                batching_max_messages=1000, block_if_queue_full=True, max_pending_messages=10_000,
                send_timeout_millis=self._send_timeout_ms,
            )
            await self._unthrottle(workspace)
            self._producers[workspace] = created
            return created

        producer = await single_flight(self._creating, workspace, create)
        while len(self._producers) > MAX_PRODUCERS:
            old = next(iter(self._producers))
            await self.drop(old)
        return producer

    async def _unthrottle(self, workspace: str) -> None:
        """No publish rate on the broadcast topic (a topic policy over the namespace's per-topic rate, the
        plan's messages per second): it carries the whole workspace, whose records were admitted already
        (each channel topic is still throttled).  Throttled at the plan's 1 000/s, a relay at 1 000 msg/s
        waited ~0.4 s per batch and fell seconds behind.  Best effort: a refusal is logged, not raised."""
        path = f"/admin/v2/persistent/{workspace}/{CHANNELS_NS}/{BROADCAST_TOPIC}/publishRate"
        try:
            await self._admin._call("POST", path, json={"publishThrottlingRateInMsg": -1,
                                                        "publishThrottlingRateInByte": -1})
        except Exception as exc:
            log.warning("ws=%s: could not lift the broadcast topic's publish rate: %s", workspace, exc)

    async def send(self, records: Sequence[Record]) -> None:
        """Republish ``records`` (several channels and workspaces, each channel's in offset order) and
        return once every one is persisted.  Raises :class:`~storm.errors.Unavailable` when any send failed:
        the caller hands the whole batch back (the gateways drop what arrives twice)."""
        loop = asyncio.get_running_loop()
        futs: list[asyncio.Future[tuple[int, int]]] = []
        failed: set[str] = set()
        try:
            for r in records:
                producer = await self._producer(r.workspace)
                builder = _pulsar.MessageBuilder()
                builder.content(r.payload)
                builder.partition_key(r.channel)
                builder.property(CHANNEL_PROP, r.channel)
                builder.property(OFFSET_PROP, str(r.offset))
                builder.property(PUBLISH_TIME_PROP, str(int(r.publish_time * 1000)))
                fut: asyncio.Future[tuple[int, int]] = loop.create_future()
                producer._producer.send_async(builder.build(), self._completions.callback(fut))
                futs.append(fut)
        except pulsar_async.PulsarException as exc:
            await asyncio.gather(*futs, return_exceptions=True)
            raise _pulsar_error("relay (producer)", exc) from exc
        results = await asyncio.gather(*futs, return_exceptions=True)
        for r, res in zip(records, results, strict=False):
            if isinstance(res, BaseException):
                failed.add(r.workspace)
        if failed:
            for ws in failed:  # a fresh producer next time: the failed one's queue is in an unknown state
                await self.drop(ws)
            raise Unavailable(f"relay: {sum(isinstance(x, BaseException) for x in results)} of {len(records)} "
                              f"sends failed (workspaces {sorted(failed)[:5]})")

    async def drop(self, workspace: str) -> None:
        producer = self._producers.pop(workspace, None)
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.close()

    async def close(self) -> None:
        for ws in list(self._producers):
            await self.drop(ws)


class RelayBroadcastSubscription(PulsarBroadcastSubscription):
    """One gateway's live feed from the relay: a reader per followed workspace on its broadcast topic,
    filtered by followed channel, deduplicated by per-channel offset (module docstring).  ``self._readers``
    maps each followed channel to the last offset delivered (its head when added, at first); the inherited
    ephemeral feed (one reader per followed workspace) keeps working on it unchanged."""

    #: one topic carries the whole workspace, and 100 messages (the per-channel readers' queue) is a
    #: flow-control round trip per 50 messages
    reader_queue = READER_QUEUE

    def __init__(self, broker: PulsarBroker, handler: BroadcastHandler) -> None:
        super().__init__(broker, handler)
        self._last: dict[tuple[str, str], int] = self._readers  # key -> last delivered offset
        # workspace -> its broadcast topic reader, opened by its first followed channel, closed by its last
        self._topics: Shared[str, Any] = Shared(self._open_topic, _close_reader)
        self.dropped = 0  # records read and dropped as duplicates or older than the follow

    @property
    def workspace_readers(self) -> int:
        return len(self._topics)

    def _deliver_relayed(self, workspace: str, msg: Any) -> None:
        props = msg.properties()
        channel = props.get(CHANNEL_PROP)
        key = (workspace, channel)
        last = self._last.get(key)
        if last is None:  # a channel this gateway does not follow
            return
        offset = int(props[OFFSET_PROP])
        if offset <= last:  # sent twice by a relay, or committed before the channel was added
            self.dropped += 1
            return
        self._last[key] = offset
        try:
            self._handler(Record(workspace, channel, offset, msg.data(), int(props.get(PUBLISH_TIME_PROP, 0)) / 1000))
        except Exception:  # a gateway bug must not stop the feed
            log.exception("broadcast handler failed ws=%s channel=%s", workspace, channel)

    async def _open_topic(self, workspace: str) -> Any:
        """The broadcast topic's reader, from just after its last entry when it is opened (an explicit
        position, not *latest*: see ``PulsarBroadcastSubscription._log_start``)."""
        start = _after(await self._broker.admin.last_position(workspace, BROADCAST_TOPIC))
        return await self._reader(broadcast_topic(workspace), lambda msg: self._deliver_relayed(workspace, msg), start)

    async def add(self, workspace: str, channel: str) -> None:
        key = (workspace, channel)
        if self._closed:
            raise Unavailable("broadcast subscription is closed")
        if key in self._last:
            return
        pending = self._adding.get(key)
        if pending is not None:
            await asyncio.shield(pending)
            return
        self._broker._take_reader()  # STORM_MAX_CHANNEL_READERS still bounds the channels followed
        fut: asyncio.Future[None] = self._loop.create_future()
        self._adding[key] = fut
        topic = fed = False
        try:
            head = await self._broker.head(workspace, channel)
            await self._topics.acquire(workspace)
            topic = True
            await self._feeds.acquire(workspace)
            fed = True
            self._last[key] = head
            fut.set_result(None)
        except BaseException as exc:
            self._broker._give_reader()
            if fed:
                await self._feeds.release(workspace)
            if topic:
                await self._topics.release(workspace)
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
        if self._last.pop((workspace, channel), None) is None:
            return
        self._broker._give_reader()
        await self._feeds.release(workspace)
        await self._topics.release(workspace)


if TYPE_CHECKING:  # the type checker proves the capability is there

    from storm.ports.broker import BroadcastSubscription
    from storm.ports.relay import BroadcastRelay

    def _conforms(broker: PulsarBroker, sub: RelayBroadcastSubscription) -> None:
        _relay: BroadcastRelay = broker
        _broadcast: BroadcastSubscription = sub


class RelayPulsarBroker(PulsarBroker):
    """The Pulsar broker of ``STORM_BROADCAST=relay``: broadcast subscriptions read one relay-fed topic per followed
    workspace, and :meth:`relay` (the relay worker's side) republishes channel records onto those topics.  A
    subclass, so that pulsar_broker.py needs nothing from this module (no import cycle)."""

    def _new_broadcast(self, handler: BroadcastHandler) -> PulsarBroadcastSubscription:
        return RelayBroadcastSubscription(self, handler)

    def _new_relay(self) -> PulsarRelay:
        assert self._client is not None and self._completions is not None
        return PulsarRelay(self._client, self.admin, self._completions, self._send_timeout_ms)


def pulsar_broker(settings: PulsarSettings, clock: Clock, **options: Any) -> PulsarBroker:
    """The broker class the settings ask for (``broadcast``: readers or relay), built with ``options``."""
    cls = RelayPulsarBroker if settings.broadcast == "relay" else PulsarBroker
    return cls(settings, clock, **options)
