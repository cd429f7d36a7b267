"""The hub: this gateway's local connections, grouped by channel (centrifuge's hub, never touching Redis).

One broadcast subscription per gateway process.  When a record arrives for a channel, the hub encodes
the client frame once (splicing the offset into the stored payload) and hands the same ``bytes`` object
to every local session subscribed to it.  The broker subscription for a channel is added when its first
local subscriber joins and removed when the last one leaves.

Heads: the hub knows the head of every channel it follows without asking the broker, once it has seen one
(the last record its feed delivered, or a head the broker answered since the follow).  The feed is in
offset order and a subscriber joins the group before it reads the head, so every record above that head
reaches it live: a subscribe (or a resume whose ``since`` is already the head, most of a reconnect storm)
then costs no broker round trip; on Pulsar each was an admin REST call.  A resume whose ``since`` is above
the hub's head (the client saw more on another gateway than this one's feed has delivered yet) asks the
broker, so the feed's late records are not sent to it a second time (storm/protocol/subscriptions.py).
Until the head is known, the first subscribes of a channel share one broker request (``fetch_head``): a
connect ramp sends hundreds of them to the channels a gateway has just begun to follow.

A sweeper checks session deadlines (authentication and idle timeouts, token expiry) in one task instead
of one timer per connection: every tick (0.5 s) the sessions opened in the last ``young_s`` that are still
waiting for their authentication (those that may miss its deadline), and a slice of all the others, so that
each is looked at once every ``OPEN_SWEEP_S``.  Visiting all of them every tick cost O(connections) twice a
second whether or not anything was due: ≈ 18 µs of gateway CPU per heartbeat ping at 2 000 connections
(py-spy, issue 11).  Each open session is looked at every 5 s (not 2: at 17 000 held connections the sweep
was ≈ 40 % of what holding cost the gateway), and an open session with nothing due answers after two
comparisons.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from storm.ports.broker import BroadcastSubscription, Broker, Record
from storm.ports.cache import PresenceEntry
from storm.ports.clock import Clock
from storm.protocol.events import PresenceLeave, UserRef, encode, with_offset

if TYPE_CHECKING:
    from collections.abc import Callable

    from storm.protocol.session import Session

log = logging.getLogger("storm.gateway.hub")

OPEN_SWEEP_S = 5.0  # an open session's idle timeout and token expiry are seen at most this late


class Hub:
    def __init__(self, broker: Broker, clock: Clock, *, sweep_interval_s: float = 0.5) -> None:
        self._broker = broker
        self._clock = clock
        self._sweep_interval = sweep_interval_s
        self._groups: dict[tuple[str, str], set[Session]] = {}
        # followed channel -> the highest offset this gateway knows is written: the last record its feed
        # delivered, or a head the broker answered since the follow (module docstring, "Heads")
        self._heads: dict[tuple[str, str], int] = {}
        self._locks = KeyedLocks()  # serialises the broker's add/remove of one channel
        self._fetching: dict[tuple[str, str], tuple[set[Session] | None, asyncio.Task[int]]] = {}  # fetch_head
        self._sessions: set[Session] = set()
        self._young: deque[Session] = deque()  # registered within young_s: checked every tick
        self.young_s = 6.0  # > STORM_AUTH_TIMEOUT_S (set by the gateway, runtime.py)
        self._sub: BroadcastSubscription | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.records = 0
        self.deliveries = 0
        self.on_delivered: Callable[[float], None] | None = None  # sampled broker times (storm.delivery.latency)
        self._sample_after = 1.0  # the next record appended after this (epoch s) is sampled: at most 20 a second
        self.presence_broadcast_max = 100  # STORM_PRESENCE_BROADCAST_MAX, set by the gateway (runtime.py)
        self.presence_coalesce_s = 1.0  # STORM_PRESENCE_COALESCE_S, likewise
        self._expired: dict[tuple[str, str], dict[str, PresenceEntry]] = {}
        self._expiry_flush: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        if self._sub is not None:
            raise RuntimeError("Hub.start() called twice")
        self._sub = await self._broker.subscribe_broadcast(self._on_record)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def stop(self) -> None:
        if self._expiry_flush is not None:
            self._expiry_flush.cancel()
            self._expiry_flush = None
        if self._sweeper is not None:
            sweeper, self._sweeper = self._sweeper, None
            sweeper.cancel()
            await asyncio.wait([sweeper])  # not `suppress(CancelledError)`: that would swallow our caller's
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(Exception):
                await sub.close()
        self._groups.clear()

    # -- sessions ---------------------------------------------------------------------------------------
    def register(self, session: Session) -> None:
        self._sessions.add(session)
        self._young.append(session)

    def unregister(self, session: Session) -> None:
        self._sessions.discard(session)

    @property
    def sessions(self) -> set[Session]:
        return self._sessions

    async def join(self, session: Session, workspace: str, channel: str) -> None:
        key = (workspace, channel)
        group = self._groups.get(key)
        if group is not None:
            group.add(session)
            return
        async with self._locks.hold(key):
            group = self._groups.get(key)
            if group is None:
                assert self._sub is not None, "hub not started"
                await self._sub.add(workspace, channel)
                group = self._groups[key] = set()
            group.add(session)

    async def leave(self, session: Session, workspace: str, channel: str) -> None:
        key = (workspace, channel)
        group = self._groups.get(key)
        if group is None:
            return
        group.discard(session)
        if group:
            return
        async with self._locks.hold(key):
            group = self._groups.get(key)
            if group is not None and not group:
                del self._groups[key]
                self._heads.pop(key, None)
                if self._sub is not None:
                    await self._sub.remove(workspace, channel)

    # -- heads ------------------------------------------------------------------------------------------
    def head(self, workspace: str, channel: str) -> int | None:
        """The head of a channel this gateway follows, known without asking the broker; None when unknown
        (not followed, or nothing written or looked up since the follow)."""
        return self._heads.get((workspace, channel))

    def saw_head(self, workspace: str, channel: str, head: int) -> None:
        """A head the broker answered for a followed channel (kept if above what the feed delivered)."""
        key = (workspace, channel)
        if key in self._groups and head > self._heads.get(key, -1):  # 0 too: an empty channel is known empty
            self._heads[key] = head

    async def fetch_head(self, workspace: str, channel: str) -> int:
        """The broker's head of a followed channel, at most one request in flight per channel, combined
        with what the feed delivered meanwhile (what :meth:`head` then answers).

        A connect ramp sends hundreds of first subscribes to a channel this gateway has just begun to
        follow, each of which used to ask the broker (on Pulsar an admin REST call, 10 % of a gateway
        during storm day).  Any broker answer ``h`` read after the follow began is a valid head for every
        subscriber once combined with the feed: a record above ``h`` either reached the feed before the
        subscriber joined (so the feed's head covers it) or reaches the subscriber live.  A request is
        shared only within one follow (a channel left by everyone and followed again asks afresh)."""
        key = (workspace, channel)
        group = self._groups.get(key)
        pending = self._fetching.get(key)
        if pending is None or pending[0] is not group:
            task = asyncio.get_running_loop().create_task(self._broker.head(workspace, channel))
            mine = pending = (group, task)
            self._fetching[key] = mine

            def done(t: asyncio.Task[int], k: tuple[str, str] = key) -> None:
                if self._fetching.get(k) is mine:
                    del self._fetching[k]
                if not t.cancelled():
                    t.exception()  # retrieved here: every waiter may have gone

            task.add_done_callback(done)
        head = await asyncio.shield(pending[1])  # a subscriber that gives up does not cancel the others'
        self.saw_head(workspace, channel, head)  # kept if above what the feed delivered meanwhile
        return self._heads.get(key, head)  # the larger of the two while followed

    # -- fan-out ----------------------------------------------------------------------------------------
    def _on_record(self, record: Record) -> None:
        key = (record.workspace, record.channel)
        group = self._groups.get(key)
        if group is None:
            return
        if record.offset > self._heads.get(key, 0):  # ephemeral records (offset 0) leave it as it is
            self._heads[key] = record.offset
        if not group:
            return
        data = with_offset(record.payload, record.offset)  # encoded once for every recipient
        channel, offset = record.channel, record.offset
        self.records += 1
        self.deliveries += len(group)
        for session in tuple(group) if len(group) < 64 else list(group):
            session.on_channel_event(channel, offset, data)
        if record.publish_time >= self._sample_after and self.on_delivered is not None:
            self._sample_after = record.publish_time + 0.05
            self.on_delivered(record.publish_time)

    # -- presence expiry (Cache.watch_presence_expiry) ---------------------------------------------------
    def wants(self, workspace: str, channel: str) -> bool:
        """Whether this gateway has subscribers in the channel (the expiries worth reporting here)."""
        return (workspace, channel) in self._groups

    def presence_expired(self, workspace: str, channel: str, entry: PresenceEntry) -> None:
        """A user's last presence entry in the channel expired (their gateway died, say): tell the local
        subscribers with ``presence.leave``.  Each gateway tells its own; nothing goes through the broker.
        Coalesced like the announced leaves (a dead gateway's users expire together: one event per channel
        per ``presence_coalesce_s``), and only where the channel is small enough for announcements
        (``presence_broadcast_max``; more local subscribers than that means a larger channel)."""
        group = self._groups.get((workspace, channel))
        if not group or len(group) > self.presence_broadcast_max:
            return
        gone = self._expired.setdefault((workspace, channel), {})
        gone[entry.user_id] = entry
        if self._expiry_flush is None:
            self._expiry_flush = asyncio.get_running_loop().call_later(self.presence_coalesce_s,
                                                                       self._flush_expired)

    def _flush_expired(self) -> None:
        self._expiry_flush = None
        pending, self._expired = self._expired, {}
        for (workspace, channel), gone in pending.items():
            group = self._groups.get((workspace, channel))
            if not group:
                continue
            data = encode(PresenceLeave(channel=channel, users=[UserRef(id=u.user_id, name=u.name)
                                                                for u in gone.values()]))
            for session in list(group):
                session.on_channel_event(channel, 0, data)

    # -- deadlines --------------------------------------------------------------------------------------
    async def _sweep(self) -> None:
        ring: list[Session] = []
        pos = 0
        while True:
            await asyncio.sleep(self._sweep_interval)
            now, wall = self._clock.monotonic(), self._clock.time()  # one clock read per tick, not per session
            # only those still waiting for their authentication, in order of opening: during a connect ramp
            # nearly all young sessions are authenticated, and checking each every tick was a third of a
            # `storm bench connect --subscribe 1` gateway's loop at 18 000 connections (py-spy, 2026-12-07)
            young = self._young = deque(s for s in self._young
                                        if s.awaiting_auth and now - s.opened_at <= self.young_s)
            if pos >= len(ring):  # a new round over every session registered now
                ring, pos = list(self._sessions), 0
            step = max(1, math.ceil(len(ring) * self._sweep_interval / OPEN_SWEEP_S))
            due = ring[pos:pos + step]
            pos += step
            for session in (*young, *due):
                try:
                    session.check_deadlines(now, wall)
                except Exception:
                    log.exception("deadline check failed for %r", session)


class KeyedLocks:
    """One :class:`asyncio.Lock` per key, kept only while a coroutine holds it or waits for it: a count of
    users per key, not the lock's private waiter list."""

    __slots__ = ("_entries",)

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], _Entry] = {}

    def __len__(self) -> int:
        """Keys held or waited for now."""
        return len(self._entries)

    @contextlib.asynccontextmanager
    async def hold(self, key: tuple[str, str]) -> AsyncIterator[None]:
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if not entry.users:
                del self._entries[key]


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0
