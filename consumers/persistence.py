"""Persistence worker: channel events from the broker's work-sharing subscription into the store.

Split as zulip's workers are: :func:`handle` is pure (records in, a write plan out, no I/O) and
:class:`PersistenceWorker` is the runner that receives, writes a plan in one transaction, and
acknowledges only after the commit.  docs/consumers.md states the failure policy:

* Idempotent: a batch's messages, across all its workspaces, go in one multi-row INSERT … ON CONFLICT DO
  NOTHING (:func:`apply_all`), skipping any whose id or (channel, offset) exists, so a redelivered record
  never makes a second row; edits, deletes and reactions are idempotent by nature.  Offsets are compared,
  never subtracted: they increase per channel but are not dense (ADR 0005).
* Poison records (not decodable as a channel event) go straight to the dead-letter log.
* A failed batch is retried record by record so one bad record cannot hold the others back; a failing
  record is negatively acknowledged (redelivered after ``nack_delay_s``) and dead-lettered once it has been
  delivered ``max_redeliveries`` times.
* Records of a deleted workspace are acknowledged and dropped.
* The store or cache being down (``Unavailable``) is nobody's record's fault: the whole batch is handed
  back, the worker backs off (``nack_delay_s`` doubled per failed batch in a row, up to
  ``consumers.work.OUTAGE_BACKOFF_CAP_S``) and no record is dead-lettered for it, however long the outage.  Counting
  those failures dead-lettered every record of a 30 s PostgreSQL outage (chaos ``postgres-restart``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec

from consumers.work import WorkWorker, outage_pause
from storm.bootstrap import Services
from storm.domain import Message, Reaction
from storm.errors import NotFound, Unavailable
from storm.ports.broker import Delivery
from storm.ports.store import UnitOfWork
from storm.protocol import events as e
from storm.webhooks import MEMBERS_LOG

log = logging.getLogger("storm.consumers.persistence")

SUBSCRIPTION = "persistence"
# How often the storm.consumer.backlog gauge asks the broker.  On Pulsar it is one document with the stats of
# every topic the broker serves (6.3 MB at 2 000 channels and seven gateways: ≈ 60-120 ms of broker CPU to
# serve it gzipped, ≈ 260 ms here to gunzip and decode it on the busy machine), which the broker itself
# refreshes only once a minute (statsUpdateFrequencyInSecs, 60 s).  Read at every one-second flush of a
# 100 000-user storm day, admin HTTP requests were 47 % of the consumers' samples (py-spy, 2026-12-08), this
# document by far the largest of them.  Between reads the gauge repeats its last value.
BACKLOG_POLL_S = 30.0


@dataclass
class Plan:
    """What one batch writes, per workspace, in log order."""

    messages: list[Message] = field(default_factory=list)
    edits: list[tuple[uuid.UUID, str, datetime]] = field(default_factory=list)
    deletes: list[tuple[uuid.UUID, datetime]] = field(default_factory=list)
    reactions: list[tuple[Reaction, bool]] = field(default_factory=list)  # (reaction, remove)

    def __len__(self) -> int:
        return len(self.messages) + len(self.edits) + len(self.deletes) + len(self.reactions)


@dataclass
class Handled:
    plans: dict[str, Plan]  # workspace slug -> plan
    poison: list[tuple[Delivery, str]]


def _ts(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


class _StoredMessage(msgspec.Struct, tag_field="type", tag="message"):
    """The ``message`` record as :func:`handle` needs it, its ids decoded by msgspec (C) instead of
    ``uuid.UUID(str)`` (≈ 1.8 µs each, two per message).  Same fields and types as
    :class:`storm.protocol.events.MessageEvent` except that the ids must be UUIDs; a record this refuses
    (another event type, an id in a form only ``uuid.UUID`` reads, an empty ``thread``) takes the general
    path, so what is stored, skipped or dead-lettered does not depend on which path decoded it."""

    channel: str
    id: uuid.UUID
    author: uuid.UUID
    author_name: str
    text: str
    ts: float
    cmid: str | None = None
    thread: uuid.UUID | None = None


_decode_stored_message = msgspec.json.Decoder(_StoredMessage).decode


def handle(deliveries: Sequence[Delivery], workspace_ids: dict[str, uuid.UUID]) -> Handled:
    """Pure: decode records into per-workspace write plans.  Unknown workspaces are skipped."""
    plans: dict[str, Plan] = {}
    poison: list[tuple[Delivery, str]] = []
    channel_ids: dict[str, uuid.UUID] = {}  # a batch holds few channels: parse each id once
    for d in deliveries:
        r = d.record
        ws_id = workspace_ids.get(r.workspace)
        if ws_id is None or r.channel == MEMBERS_LOG:  # the membership log is for webhooks, not history
            continue
        ev: object
        try:
            ev = _decode_stored_message(r.payload)  # the common case, fast; anything else below
        except (msgspec.DecodeError, msgspec.ValidationError):
            ev = None
        try:
            if ev is None:
                ev = e.decode_record(r.payload)
            channel_id = channel_ids.get(r.channel) or channel_ids.setdefault(r.channel, uuid.UUID(r.channel))
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            poison.append((d, f"undecodable record: {exc}"[:200]))
            continue
        plan = plans.setdefault(r.workspace, Plan())
        try:
            if isinstance(ev, _StoredMessage):
                plan.messages.append(Message(
                    id=ev.id, workspace_id=ws_id, channel_id=channel_id, author_id=ev.author, body=ev.text,
                    offset=r.offset, created_at=_ts(ev.ts), client_msg_id=ev.cmid, thread_id=ev.thread,
                ))
            elif isinstance(ev, e.MessageEvent):
                plan.messages.append(Message(
                    id=uuid.UUID(ev.id), workspace_id=ws_id, channel_id=channel_id, author_id=uuid.UUID(ev.author),
                    body=ev.text, offset=r.offset, created_at=_ts(ev.ts), client_msg_id=ev.cmid,
                    thread_id=uuid.UUID(ev.thread) if ev.thread else None,
                ))
            elif isinstance(ev, e.EditEvent):
                plan.edits.append((uuid.UUID(ev.id), ev.text, _ts(ev.ts)))
            elif isinstance(ev, e.DeleteEvent):
                plan.deletes.append((uuid.UUID(ev.id), _ts(ev.ts)))
            elif isinstance(ev, e.ReactionEvent) and ev.count is None:
                # a reaction with a count was stored by the command itself (storm/protocol/chat.py, react);
                # applying it again here could undo a later change logged earlier by another gateway
                plan.reactions.append((Reaction(ws_id, uuid.UUID(ev.message_id), uuid.UUID(ev.user), ev.emoji),
                                       ev.remove))
            # ephemeral events never reach the work subscription; ignore anything else
        except ValueError as exc:
            poison.append((d, f"invalid ids in record: {exc}"[:200]))
    return Handled(plans, poison)


async def apply(uow: UnitOfWork, workspace_id: uuid.UUID, plan: Plan, *, messages: bool = True) -> int:
    """Write one workspace's plan inside a unit of work; returns the number of new message rows.  With
    ``messages=False`` the caller has inserted the plan's messages already (see :func:`apply_all`)."""
    inserted = await uow.messages.add_many(plan.messages) if plan.messages and messages else 0
    for message_id, body, at in plan.edits:
        await uow.messages.edit(workspace_id, message_id, body, at)
    for message_id, at in plan.deletes:
        await uow.messages.delete(workspace_id, message_id, at)
    for reaction, remove in plan.reactions:
        if remove:
            await uow.reactions.remove(reaction)
        else:
            await uow.reactions.add(reaction)
    return inserted


async def apply_all(uow: UnitOfWork, plans: dict[str, Plan], workspace_ids: dict[str, uuid.UUID]) -> int:
    """Write a whole batch inside one unit of work: the messages of every workspace in **one** idempotent
    multi-row insert (``messages.add_many``: ``INSERT … ON CONFLICT DO NOTHING``), then each workspace's
    edits, deletes and reactions in log order.  Messages first keeps the rule of :func:`apply` (an edit in
    the same batch finds its message).  Returns the number of new message rows."""
    every = [msg for plan in plans.values() for msg in plan.messages]
    inserted = await uow.messages.add_many(every) if every else 0
    for slug, plan in plans.items():
        await apply(uow, workspace_ids[slug], plan, messages=False)
    return inserted


class PersistenceWorker(WorkWorker):
    def __init__(self, services: Services, *, name: str = SUBSCRIPTION) -> None:
        cfg = services.config
        super().__init__("persistence worker", lambda n: services.broker.subscribe_work(n), name,
                         loop_wait_s=cfg.drain_timeout_s, retry_s=cfg.nack_delay_s)
        self._services = services
        self._batch = cfg.consumer_batch
        self._max_wait = cfg.consumer_max_wait_s
        self._linger = cfg.consumer_linger_s
        self._max_redeliveries = cfg.consumer_max_redeliveries
        self._nack_delay = cfg.nack_delay_s
        self.stats = {"batches": 0, "records": 0, "inserted": 0, "retried": 0, "dead_lettered": 0}
        self.stats["redelivered"] = 0  # records received with delivery_count > 1
        metrics = services.metrics  # docs/observability.md: counted here, flushed by the metrics timer
        self._batch_size = metrics.sample("storm.consumer.batch_size")
        self._batch_latency = metrics.sample("storm.consumer.batch_latency")
        metrics.count_of("storm.consumer.redelivered", lambda: self.stats["redelivered"])
        metrics.count_of("storm.consumer.dead_lettered", lambda: self.stats["dead_lettered"])
        metrics.gauge_polled("storm.consumer.backlog", services.work_backlog(name), every_s=BACKLOG_POLL_S)

    async def _run(self) -> None:
        assert self._sub is not None
        failures = 0  # batches failed in a row: the backoff while the store or cache is down
        while not self._stopping:
            deliveries = await self.receive(self._batch, min(self._max_wait, 0.25))
            if not deliveries:
                continue
            if len(deliveries) < self._batch and self._linger > 0:
                deliveries = await self._gather_more(list(deliveries))
            started = time.monotonic()
            try:
                await self.process(deliveries)
                self._batch_latency.add_since(started)
                failures = 0
            except Exception as exc:  # e.g. the store or cache is down: the worker must outlive it
                failures += 1
                pause = outage_pause(self._nack_delay, failures)
                workspaces = ",".join(sorted({d.record.workspace for d in deliveries}))
                if isinstance(exc, Unavailable):  # an outage: one line per batch, no traceback
                    log.warning("batch of %d failed ws=%s (%s); handing it back, next attempt in %.1f s",
                                len(deliveries), workspaces, exc, pause)
                else:
                    log.exception("batch of %d failed ws=%s; handing it back for redelivery", len(deliveries),
                                  workspaces)
                with contextlib.suppress(Exception):
                    await self._sub.nack(deliveries, pause)
                await asyncio.sleep(pause)

    async def _gather_more(self, deliveries: list[Delivery]) -> list[Delivery]:
        """Linger (Kafka's linger.ms): after the first record, take what arrives within
        ``STORM_CONSUMER_LINGER_S``, up to a full batch.  A transaction costs ~0.8 ms of client CPU however
        small: at a few hundred messages per second, written one by one, that was 40 % of a core."""
        assert self._sub is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._linger
        while len(deliveries) < self._batch:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                more = await self._sub.receive(self._batch - len(deliveries), remaining)
            except Exception:  # write what we have; the run loop deals with a failing subscription
                break
            if not more:
                break
            deliveries.extend(more)
        return deliveries

    async def _workspace_ids(self, deliveries: Sequence[Delivery]) -> dict[str, uuid.UUID]:
        ids: dict[str, uuid.UUID] = {}
        for slug in {d.record.workspace for d in deliveries}:
            try:
                ids[slug] = (await self._services.directory.workspace(slug)).id
            except NotFound:
                log.info("dropping records of deleted workspace ws=%s", slug)
        return ids

    async def process(self, deliveries: Sequence[Delivery]) -> None:
        """Write a batch and acknowledge it; on failure fall back to one record at a time."""
        sub = self._sub
        assert sub is not None
        self.stats["batches"] += 1
        self.stats["records"] += len(deliveries)
        self.stats["redelivered"] += sum(1 for d in deliveries if d.delivery_count > 1)
        self._batch_size.add(len(deliveries))
        ids = await self._workspace_ids(deliveries)
        handled = handle(deliveries, ids)
        for d, reason in handled.poison:
            await self._dead_letter(d, reason)
        poisoned = {id(d) for d, _ in handled.poison}
        good = [d for d in deliveries if id(d) not in poisoned]
        try:
            self.stats["inserted"] += await self._write(handled.plans, ids)
        except Unavailable:
            raise  # the store is down, not a bad record: the run loop hands the batch back and backs off
        except Exception as exc:
            if len(good) == 1:
                await self._retry_or_dead_letter(good[0], exc)
                return
            workspaces = ",".join(sorted({d.record.workspace for d in good}))
            log.warning("batch of %d failed ws=%s (%r); retrying record by record", len(good), workspaces, exc)
            failed_channels: set[tuple[str, str]] = set()
            for d in good:
                key = (d.record.workspace, d.record.channel)
                if key in failed_channels:
                    # an earlier record of this channel failed: keep channel order, hand this one back too
                    await sub.nack([d], self._nack_delay)
                    continue
                if not await self.process_one(d):
                    failed_channels.add(key)
            return
        await sub.ack(good)

    async def process_one(self, d: Delivery) -> bool:
        """Write one record; False when it was handed back for a retry."""
        assert self._sub is not None
        ids = await self._workspace_ids([d])
        handled = handle([d], ids)
        if handled.poison:
            await self._dead_letter(d, handled.poison[0][1])
            return True
        try:
            self.stats["inserted"] += await self._write(handled.plans, ids)
        except Exception as exc:
            await self._retry_or_dead_letter(d, exc)
            return False
        await self._sub.ack([d])
        return True

    async def _write(self, plans: dict[str, Plan], ids: dict[str, uuid.UUID]) -> int:
        if not plans:
            return 0

        async def write_all(uow: UnitOfWork) -> int:
            return await apply_all(uow, plans, ids)

        return await self._services.store.run(write_all)

    async def _retry_or_dead_letter(self, d: Delivery, exc: BaseException) -> None:
        assert self._sub is not None
        r = d.record
        if d.delivery_count >= self._max_redeliveries and not isinstance(exc, Unavailable):
            await self._dead_letter(d, f"failed {d.delivery_count} times: {exc!r}"[:200])
            return
        log.warning("write failed ws=%s channel=%s offset=%d attempt=%d: %r; will retry",
                    r.workspace, r.channel, r.offset, d.delivery_count, exc)
        self.stats["retried"] += 1
        await self._sub.nack([d], self._nack_delay)

    async def _dead_letter(self, d: Delivery, reason: str) -> None:
        assert self._sub is not None
        r = d.record
        log.error("dead-lettering ws=%s channel=%s offset=%d: %s", r.workspace, r.channel, r.offset, reason)
        self.stats["dead_lettered"] += 1
        await self._sub.dead_letter(d, reason)
