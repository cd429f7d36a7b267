"""Client message ids: one message per (author, channel, cmid), also when a publish's outcome is unknown.

The session claims a cmid in the cache before it publishes (docs/delivery.md, "Effectively once").  The
claim, under ``cmid:<user>:<channel>:<cmid>`` in the workspace, moves through these states:

    absent ──claim──▶ Pending(claimed_at, nonce) ──publish returned──▶ Done(message_id, offset) *here*
                         │  publish refused, nothing sent (BadRequest, NotFound, PublishNotSent) ──▶ absent
                         │  outcome unknown (timeout, broker error, gateway crash, cancellation) ──▶ stays Pending
                         ▼
    Pending older than ``in_doubt_s`` ──settle──▶ Done (the message was found) | Pending(new nonce) (it was not)

A successful publish does not write ``Done`` to the cache (that second round trip per publish was a
third of the cache's load): the claim stays ``Pending`` there, and ``Done`` is kept in this process only
(:meth:`CmidClaims.published`, at most ``LOCAL_DONE_MAX`` entries).  A retry on the same process finds
it there and gets the original ack (``duplicate: true``) without a cache call.  A retry elsewhere finds a
``Pending`` and looks the cmid up in the store at once and then every ``STORE_POLL_S`` while it waits:
a published message is stored by the persistence worker within moments, and the retry gets its ack from
the store.  A cache ``Done`` (written by a settle, below) is answered as before.  A retry that finds a
young ``Pending`` and no stored message waits (the first attempt may still succeed), which also keeps
the client's later messages behind it; only past ``max_wait_s`` does it get ``conflict``.  A ``Pending`` older than
``in_doubt_s`` — longer than any publish can take, because the broker's send times out before —
belongs to an attempt that can no longer finish, so one retry (chosen by a put-if-absent on a key naming
the claim's nonce) *settles* it: it looks the cmid up in the store, then reads the channel log past the
newest stored message (the persistence worker stores a channel's messages in log order, so an unstored
message of the channel lies after it).  Found: the retry is answered with that message's ack.  Not found:
the first attempt never reached the log, and the retry publishes under a fresh claim.

What is left: a send the broker persists *after* its own send timeout and after the settle read would be
published twice; the persistence worker would still store one row per offset and clients show a message
once per (channel, author, cmid).  See docs/delivery.md.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from dataclasses import dataclass

import msgspec

from storm.errors import BadRequest, Forbidden, NotFound, OffsetTruncated, PublishNotSent, StormError, Unavailable
from storm.ports.broker import Broker
from storm.ports.cache import Cache
from storm.ports.clock import Clock
from storm.ports.store import Store

POLL_S = 0.2  # how often a retry waiting on an earlier attempt's claim looks at it again
WAIT_MARGIN_S = 2.0  # a retry waits at most in_doubt_s + this for an earlier attempt before `conflict`
READ_PAGE = 500
SETTLE_SCAN_MAX = 20_000  # records read past the newest stored message before giving up (retry later)
STORE_POLL_S = 1.0  # how often a waiting retry looks for the earlier attempt's message in the store
LOCAL_DONE_MAX = 20_000  # publishes remembered in this process for same-process retries (then: the store)


class Pending(msgspec.Struct, tag="p", array_like=True):
    claimed_at: float  # wall clock (epoch seconds): claims are compared across gateways
    nonce: str


class Done(msgspec.Struct, tag="d", array_like=True):
    message_id: str
    offset: int


_decoder: msgspec.msgpack.Decoder[Pending | Done] = msgspec.msgpack.Decoder(Pending | Done)
_encoder = msgspec.msgpack.Encoder()


class _Probe(msgspec.Struct):
    """The fields of a channel record that identify a message (the rest of the event is ignored)."""

    type: str = ""
    id: str = ""
    author: str = ""
    cmid: str | None = None


_probe = msgspec.json.Decoder(_Probe)


# Errors after which the record is known not to be in the log: the claim is released at once.
NOT_SENT: tuple[type[StormError], ...] = (BadRequest, Forbidden, NotFound, PublishNotSent)


@dataclass(frozen=True, slots=True)
class Claimed:
    """Go ahead and publish; then :meth:`CmidClaims.confirm` or :meth:`CmidClaims.release`."""

    key: str


@dataclass(frozen=True, slots=True)
class Duplicate:
    message_id: str
    offset: int


@dataclass(frozen=True, slots=True)
class InFlight:
    """An earlier attempt may still succeed (or another retry is settling it): retry after a while."""

    retry_after_s: float


Outcome = Claimed | Duplicate | InFlight


@dataclass(frozen=True, slots=True)
class MessageRef:
    """Where to look for an earlier attempt: ids as the store and the log know them."""

    workspace: str  # slug: cache namespace and broker tenant
    workspace_id: uuid.UUID
    channel_id: uuid.UUID
    author_id: uuid.UUID
    cmid: str


class CmidClaims:
    def __init__(self, cache: Cache, store: Store, broker: Broker, clock: Clock, *, ttl_s: float,
                 in_doubt_s: float) -> None:
        self._cache = cache
        self._store = store
        self._broker = broker
        self._clock = clock
        self._ttl = ttl_s
        self.in_doubt_s = in_doubt_s
        self.max_wait_s = in_doubt_s + WAIT_MARGIN_S
        self._done: OrderedDict[str, tuple[float, Done]] = OrderedDict()  # key -> (expires, Done)

    @staticmethod
    def key(ref: MessageRef) -> str:
        return f"cmid:{ref.author_id.hex}:{ref.channel_id.hex}:{ref.cmid}"

    def _pending(self) -> bytes:
        return _encoder.encode(Pending(self._clock.time(), uuid.uuid4().hex))

    async def claim(self, ref: MessageRef) -> Outcome:
        """Claim the cmid; when an earlier attempt holds it, wait (polling every ``POLL_S``) until it is
        done, released, or in doubt and settled here.  The wait is what keeps a sender's order: a session
        handles its frames one at a time, so the client's later publishes queue behind this one instead
        of overtaking it (a ``conflict`` let them through, and the settled message landed after them).
        After ``max_wait_s`` without an answer (another gateway still settling it, say): ``InFlight``."""
        key = self.key(ref)
        local = self._local(key)
        if local is not None:
            return Duplicate(local.message_id, local.offset)
        prior = await self._cache.put_if_absent(ref.workspace, key, self._pending(), self._ttl)
        if prior is None:
            return Claimed(key)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.max_wait_s
        next_store_look = loop.time()
        while True:
            state = _decode(prior)
            if isinstance(state, Done):
                return Duplicate(state.message_id, state.offset)
            local = self._local(key)  # published by this process while we waited
            if local is not None:
                return Duplicate(local.message_id, local.offset)
            if loop.time() >= next_store_look:  # published elsewhere: stored within moments
                next_store_look = loop.time() + STORE_POLL_S
                stored = await self._stored(ref)
                if stored is not None:
                    return Duplicate(stored.message_id, stored.offset)
            age = self._clock.time() - state.claimed_at
            if age >= self.in_doubt_s:
                outcome = await self._settle(ref, key, state)
                if not isinstance(outcome, InFlight):
                    return outcome
            if loop.time() >= give_up:
                return InFlight(max(0.1, self.in_doubt_s - age))
            await asyncio.sleep(POLL_S)
            prior = await self._cache.get(ref.workspace, key)
            if prior is None:  # released (nothing was sent) or expired: claim it afresh
                prior = await self._cache.put_if_absent(ref.workspace, key, self._pending(), self._ttl)
                if prior is None:
                    return Claimed(key)

    def published(self, key: str, message_id: str, offset: int) -> None:
        """The claimed publish reached the log: remember ``Done`` in this process (no cache call; a retry
        on another process finds the message in the store, see the module's docstring)."""
        self._done[key] = (self._clock.monotonic() + self._ttl, Done(message_id, offset))
        self._done.move_to_end(key)
        while len(self._done) > LOCAL_DONE_MAX:
            self._done.popitem(last=False)

    def _local(self, key: str) -> Done | None:
        entry = self._done.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock.monotonic():
            del self._done[key]
            return None
        return entry[1]

    async def _stored(self, ref: MessageRef) -> Done | None:
        async with self._store.unit_of_work() as uow:
            stored = await uow.messages.find_by_cmid(ref.workspace_id, ref.channel_id, ref.author_id, ref.cmid)
        return None if stored is None else Done(str(stored.id), stored.offset)

    async def confirm(self, ref: MessageRef, key: str, message_id: str, offset: int) -> None:
        """``Done`` in the cache, for every process: what a settle found."""
        await self._cache.set(ref.workspace, key, _encoder.encode(Done(message_id, offset)), self._ttl)

    async def release(self, ref: MessageRef, key: str) -> None:
        self._done.pop(key, None)
        await self._cache.delete(ref.workspace, key)

    async def _settle(self, ref: MessageRef, key: str, state: Pending) -> Outcome:
        settler = f"{key}:settle:{state.nonce}"
        if await self._cache.put_if_absent(ref.workspace, settler, b"", self.in_doubt_s) is not None:
            return InFlight(1.0)  # another retry is settling this very claim
        found = await self.find_published(ref)
        if found is not None:
            await self.confirm(ref, key, found.message_id, found.offset)
            return Duplicate(found.message_id, found.offset)
        await self._cache.set(ref.workspace, key, self._pending(), self._ttl)
        return Claimed(key)

    async def find_published(self, ref: MessageRef) -> Done | None:
        """The author's message with this cmid in the store, else in the log past the newest stored one."""
        async with self._store.unit_of_work() as uow:  # one snapshot for both reads
            newest = await uow.messages.page(ref.workspace_id, ref.channel_id, before=None, limit=1)
            stored = await uow.messages.find_by_cmid(ref.workspace_id, ref.channel_id, ref.author_id, ref.cmid)
        if stored is not None:
            return Done(str(stored.id), stored.offset)
        channel, author = str(ref.channel_id), str(ref.author_id)
        offset, scanned = (newest[0].offset + 1 if newest else 1), 0
        while scanned < SETTLE_SCAN_MAX:
            try:
                records = await self._broker.read(ref.workspace, channel, offset, READ_PAGE)
            except OffsetTruncated as exc:  # the log no longer holds what is stored: start where it starts
                offset = max(exc.earliest, offset + 1)
                continue
            if not records:
                return None
            for record in records:
                try:
                    probe = _probe.decode(record.payload)
                except msgspec.DecodeError:
                    continue
                if probe.type == "message" and probe.cmid == ref.cmid and probe.author == author:
                    return Done(probe.id, record.offset)
            scanned += len(records)
            offset = records[-1].offset + 1
        raise Unavailable("an earlier publish with this cmid cannot be settled yet (persistence is far behind); "
                          "retry later", field="cmid")


def _decode(value: bytes) -> Pending | Done:
    try:
        return _decoder.decode(value)
    except msgspec.DecodeError:  # unreadable (another version): treat as an attempt that is long over
        return Pending(0.0, "")
