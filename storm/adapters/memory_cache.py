"""Embedded cache: dictionaries with TTLs, with the semantics of the Cache port (storm/ports/cache.py).

Expiry is lazy (checked on access).  Presence entries also sit in a per-channel heap of expiry times, so
the expired ones are swept in O(log n) each and no presence call walks every entry of a channel: the
``_workspace`` pseudo-channel holds every connection of the workspace, and the fan-out benchmark showed a
linear scan there as a hot spot.  Everything is keyed by workspace first, so ``drop_workspace`` is one
dictionary pop.  Leased entries (``presence_add(lease=...)``) never expire on their own: they sit at an
infinite expiry and are discarded, and reported, all at once when their lease lapses (leases are few: one
per gateway, checked on every presence access and by the sweep).  Guarantees: docs/cache.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from storm.errors import QuotaExceeded
from storm.lifecycle import Lifecycle
from storm.ports.cache import (
    PresenceEntry,
    PresenceExpired,
    PresenceKey,
    PresenceWanted,
    Unwatch,
    check_bucket,
    check_presence_batch,
    check_ttl,
)
from storm.ports.clock import Clock

log = logging.getLogger("storm.cache.memory")

PRESENCE_SWEEP_S = 1.0  # how often expired presence entries are looked for while someone watches


class _Channel:
    """Live presence of one channel: entries by connection, connections by user, and an expiry heap.

    The heap may hold stale (expires_at, conn_id) pairs left by refreshes; a pair counts only while it
    matches the connection's current expiry.  Stale pairs leave the heap when their time passes, and the
    heap is rebuilt from the live entries when it grows past four pairs per connection."""

    __slots__ = ("by_user", "conns", "heap", "leased")

    def __init__(self) -> None:
        self.conns: dict[str, tuple[PresenceEntry, float]] = {}
        self.by_user: dict[str, set[str]] = {}
        self.heap: list[tuple[float, str]] = []
        self.leased: dict[str, str] = {}  # conn_id -> lease, for the entries that live by one

    def sweep(self, now: float) -> list[PresenceEntry]:
        """Drop the expired entries; returns the users whose last entry that was."""
        heap, conns = self.heap, self.conns
        gone: list[PresenceEntry] = []
        while heap and heap[0][0] <= now:
            expires, cid = heapq.heappop(heap)
            current = conns.get(cid)
            if current is not None and current[1] == expires:
                left = self.discard(cid)
                if left is not None:
                    gone.append(left)
        return gone

    def put(self, conn_id: str, entry: PresenceEntry, expires: float) -> None:
        old = self.conns.get(conn_id)
        if old is not None and old[0].user_id != entry.user_id:
            self.discard(conn_id)
        self.conns[conn_id] = (entry, expires)
        self.by_user.setdefault(entry.user_id, set()).add(conn_id)
        heapq.heappush(self.heap, (expires, conn_id))
        if len(self.heap) > 4 * len(self.conns) + 64:  # mostly stale pairs: rebuild (amortised O(1))
            self.heap = [(exp, cid) for cid, (_, exp) in self.conns.items()]
            heapq.heapify(self.heap)

    def discard(self, conn_id: str) -> PresenceEntry | None:
        """Drop the connection's entry; returns the user when it was their last one."""
        gone = self.conns.pop(conn_id, None)
        if gone is None:
            return None
        self.leased.pop(conn_id, None)
        entry = gone[0]
        cids = self.by_user.get(entry.user_id)
        if cids is not None:
            cids.discard(conn_id)
            if cids:
                return None
            del self.by_user[entry.user_id]
        return entry


class _Lease:
    """A gateway's lease: alive until ``until`` (monotonic), with the entries that live by it."""

    __slots__ = ("members", "until")

    def __init__(self, until: float) -> None:
        self.until = until
        self.members: set[tuple[str, str, str]] = set()  # (workspace, channel, conn_id)


class _Space:
    __slots__ = ("buckets", "counters", "kv", "presence", "revoked")

    def __init__(self) -> None:
        self.kv: dict[str, tuple[bytes, float]] = {}
        self.counters: dict[str, int] = {}
        self.presence: dict[str, _Channel] = {}
        # key -> (tokens, updated_at, full_at): a bucket past full_at is full again and may be forgotten
        self.buckets: dict[str, tuple[float, float, float]] = {}
        self.revoked: dict[str, float] = {}  # subject -> expires_at


class MemoryCache:
    def __init__(self, clock: Clock, *, max_keys_per_workspace: int = 1_000_000) -> None:
        self._clock = clock
        self._spaces: dict[str, _Space] = {}
        self._max_keys = max_keys_per_workspace
        self._life = Lifecycle("cache")
        self._watchers: dict[int, tuple[PresenceWanted, PresenceExpired]] = {}
        self._watch_ids = 0
        self._sweeper: asyncio.Task[None] | None = None
        self._leases: dict[str, _Lease] = {}

    async def start(self) -> None:
        self._life.begin_start()
        self._life.started()

    async def stop(self) -> None:
        self._life.begin_stop()
        self._watchers.clear()
        await self._stop_sweeper()
        self._spaces.clear()

    async def __aenter__(self) -> MemoryCache:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _stop_sweeper(self) -> None:
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper

    def _space(self, workspace: str) -> _Space:
        self._life.check()
        space = self._spaces.get(workspace)
        if space is None:
            space = self._spaces[workspace] = _Space()
        return space

    # -- key/value --------------------------------------------------------------------------------------
    async def get(self, workspace: str, key: str) -> bytes | None:
        kv = self._space(workspace).kv
        hit = kv.get(key)
        if hit is None:
            return None
        if hit[1] <= self._clock.monotonic():
            del kv[key]
            return None
        return hit[0]

    async def set(self, workspace: str, key: str, value: bytes, ttl: float) -> None:
        ttl = check_ttl(ttl)
        kv = self._space(workspace).kv
        if len(kv) >= self._max_keys and key not in kv:
            self._evict_expired(kv)
            if len(kv) >= self._max_keys:  # bounded: drop the oldest insertion
                kv.pop(next(iter(kv)))
        kv[key] = (value, self._clock.monotonic() + ttl)

    def _evict_expired(self, kv: dict[str, tuple[bytes, float]]) -> None:
        now = self._clock.monotonic()
        for k in [k for k, (_, exp) in kv.items() if exp <= now]:
            del kv[k]

    async def delete(self, workspace: str, key: str) -> None:
        self._space(workspace).kv.pop(key, None)

    async def put_if_absent(self, workspace: str, key: str, value: bytes, ttl: float) -> bytes | None:
        check_ttl(ttl)
        existing = await self.get(workspace, key)
        if existing is not None:
            return existing
        await self.set(workspace, key, value, ttl)
        return None

    async def incr(self, workspace: str, key: str, delta: int = 1) -> int:
        counters = self._space(workspace).counters
        counters[key] = counters.get(key, 0) + delta
        return counters[key]

    # -- rate buckets and revocations -------------------------------------------------------------------
    async def rate_take(self, workspace: str, key: str, rate: float, burst: int, cost: int = 1) -> float:
        check_bucket(rate, burst, cost)
        buckets = self._space(workspace).buckets
        now = self._clock.monotonic()
        state = buckets.get(key)
        if state is None:
            tokens, updated = float(burst), now
        else:
            tokens, updated, _ = state
            tokens = min(float(burst), tokens + max(0.0, now - updated) * rate)
            updated = max(updated, now)
        if tokens < cost:
            buckets[key] = (tokens, updated, updated + (burst - tokens) / rate)
            return (cost - tokens) / rate
        tokens -= cost
        if state is None and len(buckets) >= self._max_keys:
            self._evict_full_buckets(buckets, now)
        buckets[key] = (tokens, updated, updated + (burst - tokens) / rate)
        return 0.0

    def _evict_full_buckets(self, buckets: dict[str, tuple[float, float, float]], now: float) -> None:
        """A bucket past its refill time is full, exactly like an absent one: forgetting it changes nothing.
        If none is, the oldest insertion goes (it may have been drained: a bounded leniency)."""
        for k in [k for k, (_, _, full_at) in buckets.items() if full_at <= now]:
            del buckets[k]
        if len(buckets) >= self._max_keys:
            buckets.pop(next(iter(buckets)))

    async def revoke(self, workspace: str, subject: str, ttl: float) -> None:
        ttl = check_ttl(ttl)
        revoked = self._space(workspace).revoked
        now = self._clock.monotonic()
        if len(revoked) >= self._max_keys and subject not in revoked:
            for s in [s for s, exp in revoked.items() if exp <= now]:
                del revoked[s]
            if len(revoked) >= self._max_keys:  # never forget a live revocation silently
                raise QuotaExceeded("revocation list is full", field="subject")
        revoked[subject] = max(revoked.get(subject, 0.0), now + ttl)

    async def revoked_among(self, workspace: str, subjects: Sequence[str]) -> frozenset[str]:
        revoked = self._space(workspace).revoked
        now = self._clock.monotonic()
        return frozenset(s for s in subjects if revoked.get(s, 0.0) > now)

    async def is_revoked(self, workspace: str, subject: str) -> bool:
        revoked = self._space(workspace).revoked
        expires = revoked.get(subject)
        if expires is None:
            return False
        if expires <= self._clock.monotonic():
            del revoked[subject]
            return False
        return True

    # -- presence ---------------------------------------------------------------------------------------
    def _channel(self, workspace: str, channel: str) -> _Channel | None:
        space = self._space(workspace)
        if self._leases:
            self._lapse(self._clock.monotonic())
        ch = space.presence.get(channel)
        if ch is not None:
            self._sweep(workspace, channel, ch)
        return ch

    def _lapse(self, now: float) -> None:
        """Discard (and report) the entries of every lease that has lapsed, then forget the lease."""
        for name in [n for n, lease in self._leases.items() if lease.until <= now]:
            lease = self._leases.pop(name)
            gone: dict[tuple[str, str], list[PresenceEntry]] = {}
            for workspace, channel, conn_id in lease.members:
                space = self._spaces.get(workspace)
                ch = space.presence.get(channel) if space is not None else None
                if ch is None or ch.leased.get(conn_id) != name:
                    continue
                left = ch.discard(conn_id)
                if left is not None:
                    gone.setdefault((workspace, channel), []).append(left)
                if not ch.conns:
                    self._spaces[workspace].presence.pop(channel, None)
            for (workspace, channel), users in gone.items():
                self._report(workspace, channel, users)

    def _sweep(self, workspace: str, channel: str, ch: _Channel) -> None:
        self._report(workspace, channel, ch.sweep(self._clock.monotonic()))

    def _report(self, workspace: str, channel: str, gone: list[PresenceEntry]) -> None:
        if not gone or not self._watchers:
            return
        for wanted, listener in list(self._watchers.values()):
            try:
                if not wanted(workspace, channel):
                    continue
                for entry in gone:
                    listener(workspace, channel, entry)
            except Exception:
                log.exception("presence expiry listener failed ws=%s channel=%s", workspace, channel)

    async def presence_count(self, workspace: str, channel: str) -> int:
        ch = self._channel(workspace, channel)
        return len(ch.conns) if ch is not None else 0

    async def watch_presence_expiry(self, wanted: PresenceWanted, listener: PresenceExpired) -> Unwatch:
        self._life.check()
        self._watch_ids += 1
        wid = self._watch_ids
        self._watchers[wid] = (wanted, listener)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

        async def unwatch() -> None:
            self._watchers.pop(wid, None)
            if not self._watchers:
                await self._stop_sweeper()

        return unwatch

    async def _sweep_forever(self) -> None:
        """Entries expire lazily (on access); while someone watches, every channel is swept each second so
        an expiry is reported even in a channel nobody reads."""
        while True:
            await asyncio.sleep(PRESENCE_SWEEP_S)
            self._lapse(self._clock.monotonic())
            for workspace, space in list(self._spaces.items()):
                for channel, ch in list(space.presence.items()):
                    self._sweep(workspace, channel, ch)
                    self._drop_if_empty(workspace, channel, ch)

    def _drop_if_empty(self, workspace: str, channel: str, ch: _Channel) -> None:
        if not ch.conns:
            self._space(workspace).presence.pop(channel, None)

    async def presence_add(
        self, workspace: str, channel: str, conn_id: str, entry: PresenceEntry, ttl: float, *, first: bool = True,
        lease: str | None = None,
    ) -> bool:
        ttl = check_ttl(ttl)
        ch = self._channel(workspace, channel) or self._space(workspace).presence.setdefault(channel, _Channel())
        holder = None
        if lease is not None:
            holder = self._leases.get(lease)  # the lapsed ones were dropped by _channel
            if holder is None:  # not alive: the entry would never be seen
                self._drop_if_empty(workspace, channel, ch)
                return False
        others = ch.by_user.get(entry.user_id, ())
        already = len(others) > 1 or (len(others) == 1 and conn_id not in others)  # O(1), not a walk
        if lease is None:
            ch.put(conn_id, entry, self._clock.monotonic() + ttl)
            ch.leased.pop(conn_id, None)
        else:
            assert holder is not None
            ch.put(conn_id, entry, math.inf)
            ch.leased[conn_id] = lease
            holder.members.add((workspace, channel, conn_id))
        return first and not already

    async def presence_lease(self, lease: str, ttl: float) -> bool:
        ttl = check_ttl(ttl)
        self._life.check()
        now = self._clock.monotonic()
        self._lapse(now)  # a lapsed lease is dropped with its entries (reported); reaping is immediate here
        holder = self._leases.get(lease)
        if holder is None:
            self._leases[lease] = _Lease(now + ttl)
            return False
        holder.until = now + ttl
        return True

    async def presence_remove(self, workspace: str, channel: str, conn_id: str, *,
                              last: bool = True) -> PresenceEntry | None:
        ch = self._channel(workspace, channel)
        if ch is None:
            return None
        lease = ch.leased.get(conn_id)
        if lease is not None and (holder := self._leases.get(lease)) is not None:
            holder.members.discard((workspace, channel, conn_id))
        left = ch.discard(conn_id)
        self._drop_if_empty(workspace, channel, ch)
        return left if last else None

    async def presence_refresh(self, workspace: str, channels: list[str], conn_id: str, ttl: float) -> None:
        ttl = check_ttl(ttl)
        presence = self._space(workspace).presence
        expires = self._clock.monotonic() + ttl
        for channel in channels:
            ch = presence.get(channel)
            if ch is None:
                continue
            self._sweep(workspace, channel, ch)
            current = ch.conns.get(conn_id)
            if current is not None and conn_id not in ch.leased:  # a leased entry lives by its lease
                ch.put(conn_id, current[0], expires)
            self._drop_if_empty(workspace, channel, ch)

    async def presence_refresh_many(self, keys: Sequence[PresenceKey], ttl: float) -> None:
        self._life.check()
        ttl = check_ttl(ttl)
        check_presence_batch(keys)
        now = self._clock.monotonic()
        expires = now + ttl
        for key in keys:
            space = self._spaces.get(key.workspace)
            ch = space.presence.get(key.channel) if space is not None else None
            if ch is None:
                continue
            current = ch.conns.get(key.conn_id)
            if current is not None and current[1] > now and key.conn_id not in ch.leased:  # a dead entry stays dead
                ch.put(key.conn_id, current[0], expires)

    async def presence_list(self, workspace: str, channel: str) -> list[PresenceEntry]:
        ch = self._channel(workspace, channel)
        if ch is None:
            return []
        self._drop_if_empty(workspace, channel, ch)
        conns = ch.conns
        users = [conns[next(iter(cids))][0] for cids in ch.by_user.values()]
        return sorted(users, key=lambda e: (e.name, e.user_id))

    async def drop_workspace(self, workspace: str) -> None:
        self._life.check()
        self._spaces.pop(workspace, None)


if TYPE_CHECKING:  # the type checker proves the port is satisfied (centrifuge's `var _ Broker = ...`)
    from storm.ports.cache import Cache

    def _conforms(cache: MemoryCache) -> None:
        _cache: Cache = cache
