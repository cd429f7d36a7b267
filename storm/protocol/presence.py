"""Presence kept beside the sessions, never in front of their frames (docs/protocol.md, "Presence";
ADR 0010).

:class:`PresenceKeeper` — one per gateway process.  Once per ``STORM_PRESENCE_TTL_S`` / 3 it

* renews the gateway's presence lease (``Cache.presence_lease``): every presence entry of its sessions
  lives by that one key, so keeping them all costs one cache call per interval whatever their number
  (ADR 0010, amendment "the per-gateway presence lease"; before it, one Hazelcast ``setTtl`` per entry per
  pass, ≈ 14 % of a gateway holding 17 000 connections).  The call also reaps what dead gateways left.
  Without a lease (a keeper outside a gateway), the entries are refreshed one by one with
  ``Cache.presence_refresh_many``, chunks of ``PRESENCE_BATCH_MAX``;
* re-checks access, the backstop for a revocation whose control event was lost (storm/revocation.py): the
  revocation list once per token, in one cache call per workspace (``Cache.revoked_among``, ``TOKEN_BATCH``
  tokens; two Hazelcast calls per token were ≈ 0.08 of a core for 50 000 held connections), and the role once
  per (workspace, user); one slice of the users per pass (``RECHECK_SLICES``), so each user once per presence
  TTL, spread evenly. With the store given (the gateway gives it), the roles of a slice are read straight from
  the store, one ``memberships.get_many`` per workspace and ``ROLE_BATCH`` users. This is the backstop for an
  invalidation the tenants API lost, so it reads the store, never the directory's cache (whose role entries
  live 10 min since the reconnect work: docs/cache.md, "Entry lifetimes"); when the entries lived 30 s the
  directory look-ups missed anyway and cost one SQL transaction per user, more than half of a held
  connection's gateway CPU on the real services (py-spy, 5 000 users, 2 gateways, issue 11). Without the
  store, one directory look-up per user. A session whose access is gone is closed 4010; a changed role reaches
  it.

So a ``ping`` costs its ``pong`` and nothing else: a slow cache or database delays the keeper's pass,
never a heartbeat (tests/service/test_heartbeat.py).  Before the keeper, a frame arriving a third of the TTL
after the last refresh first awaited the refresh and the role look-up; under load the pong queued behind
the database pool and healthy clients were closed 4002 (issue 11).

:class:`PresenceAnnouncer` — one per gateway process too: the join and leave announcements of presence at
scale.  A channel's joins and leaves are gathered for ``STORM_PRESENCE_COALESCE_S`` and published as one
``presence.join`` and one ``presence.leave`` listing the users, and only while the channel has at most
``STORM_PRESENCE_BROADCAST_MAX`` live presence entries; above it nothing is announced and clients page
through the ``presence`` query instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Protocol

from storm import revocation
from storm.directory import Directory, Principal
from storm.domain import Role
from storm.errors import StormError
from storm.ports.broker import Broker
from storm.ports.cache import PRESENCE_BATCH_MAX, Cache, PresenceEntry, PresenceKey
from storm.ports.clock import Clock
from storm.ports.store import Store
from storm.protocol import events as e

log = logging.getLogger("storm.presence")

RECHECK_CONCURRENCY = 4  # access look-ups in flight per gateway (the store pool serves commands first)
RECHECK_SLICES = 3  # each pass re-checks a third of the users: each user once per presence TTL (60 s)
ROLE_BATCH = 500  # users whose roles one store read re-checks
TOKEN_BATCH = 5000  # tokens whose revocation one cache call re-checks (the list is read once per call)
SIZE_FRESH_S = 5.0  # how long a channel's presence count is trusted for the announcement threshold


class Kept(Protocol):
    """What the keeper needs of a session (storm/protocol/session.py implements it)."""

    id: str

    @property
    def kept(self) -> Principal | None:
        """The principal of an open session; None while authenticating or once closed."""
        ...

    def presence_channels(self) -> list[str]:
        """The channels (``_workspace`` included) where the session has a presence entry."""
        ...

    def revoked(self, reason: str) -> None: ...

    def role_rechecked(self, role: Role) -> None: ...


class PresenceKeeper:
    def __init__(self, cache: Cache, directory: Directory, ttl_s: float,
                 sessions: Callable[[], Iterable[Kept]], *, store: Store | None = None,
                 lease: str | None = None) -> None:
        self._cache = cache
        self.lease = lease  # the gateway's presence lease; its sessions add their entries under it
        self.renewals = 0  # presence_lease calls that succeeded
        self._directory = directory
        self._store = store  # roles re-checked in batches straight from it (else one directory look-up each)
        self.role_reads = 0  # store reads (batched) or directory look-ups made for roles, in all
        self._ttl = ttl_s
        self._sessions = sessions
        self._task: asyncio.Task[None] | None = None
        self.passes = 0
        self.refreshed = 0  # entries handed to the cache, in all
        self.rechecks = 0  # access look-ups (tokens + users), in all

    @property
    def interval_s(self) -> float:
        return self._ttl / 3

    def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("PresenceKeeper.start() called twice")
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Idempotent."""
        if self._task is not None:
            task, self._task = self._task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.run_once()
            except Exception:  # our bug: logged, the next pass tries again
                log.exception("presence keeper pass failed")

    async def renew(self) -> None:
        """Renew the lease now (the gateway's start, then every pass).  Never raises for the cache being
        unavailable: the lease lives a whole TTL, and the next pass tries again."""
        if self.lease is None:
            return
        try:
            alive = await self._cache.presence_lease(self.lease, self._ttl)
        except StormError as exc:
            log.warning("presence lease %s not renewed: %s", self.lease, exc.message)
            return
        if not alive and self.renewals:  # cut off from the cache for a TTL: its users were reported gone
            log.warning("presence lease %s had lapsed: the entries of this gateway's sessions are gone until they "
                        "subscribe again or reconnect", self.lease)
        self.renewals += 1

    async def run_once(self) -> None:
        """One pass: renew the lease (or refresh every open session's entries), then re-check access.  Never
        raises for the cache or the store being unavailable (the next pass tries again)."""
        kept = [(s, p) for s in list(self._sessions()) if (p := s.kept) is not None]
        self.passes += 1
        if self.lease is not None:
            await self.renew()
            keys: list[PresenceKey] = []
        else:
            keys = [PresenceKey(p.workspace.slug, ch, s.id) for s, p in kept for ch in s.presence_channels()]
        for i in range(0, len(keys), PRESENCE_BATCH_MAX):
            chunk = keys[i:i + PRESENCE_BATCH_MAX]
            try:
                await self._cache.presence_refresh_many(chunk, self._ttl)
                self.refreshed += len(chunk)
            except StormError as exc:
                log.warning("presence refresh failed for %d entries: %s", len(chunk), exc.message)
        part = self.passes % RECHECK_SLICES
        await self._recheck([(s, p) for s, p in kept if p.user.id.int % RECHECK_SLICES == part])

    async def _recheck(self, kept: list[tuple[Kept, Principal]]) -> None:
        by_token: dict[tuple[str, str, str], list[Kept]] = {}
        by_user: dict[tuple[str, str], list[Kept]] = {}
        principals: dict[tuple[str, str], Principal] = {}
        claims_of: dict[tuple[str, str, str], Principal] = {}
        for s, p in kept:
            tk = (p.workspace.slug, p.claims.subject, p.claims.token_id)
            by_token.setdefault(tk, []).append(s)
            claims_of.setdefault(tk, p)
            uk = (p.workspace.slug, p.user.id.hex)
            by_user.setdefault(uk, []).append(s)
            principals.setdefault(uk, p)
        gate = asyncio.Semaphore(RECHECK_CONCURRENCY)
        revoked: set[str] = set()

        async def check_tokens(ws: str, tokens: list[tuple[str, str, str]]) -> None:
            try:
                listed = await revocation.check_many(self._cache, ws, [claims_of[tk].claims for tk in tokens])
            except StormError as exc:
                log.warning("revocation re-check failed ws=%s: %s", ws, exc.message)
                return
            for i, reason in listed.items():
                for s in by_token[tokens[i]]:
                    revoked.add(s.id)
                    s.revoked(reason)

        async def check_user(uk: tuple[str, str]) -> None:
            p = principals[uk]
            async with gate:
                try:
                    role = await self._directory.role(p.workspace, p.user.id)
                except StormError as exc:
                    log.warning("role re-check failed ws=%s: %s", p.workspace.slug, exc.message)
                    return
            apply(uk, role)

        def apply(uk: tuple[str, str], role: Role | None) -> None:
            for s in by_user[uk]:
                if s.id in revoked:
                    continue
                if role is None:
                    s.revoked("removed")
                else:
                    s.role_rechecked(role)

        async def check_batch(ws: str, keys: list[tuple[str, str]]) -> None:
            assert self._store is not None
            workspace = principals[keys[0]].workspace
            try:
                async with self._store.unit_of_work() as uow:
                    members = await uow.memberships.get_many(workspace.id, [principals[k].user.id for k in keys])
            except StormError as exc:
                log.warning("role re-check failed ws=%s: %s", ws, exc.message)
                return
            roles = {m.user_id.hex: m.role for m in members}
            for uk in keys:
                apply(uk, roles.get(uk[1]))

        self.rechecks += len(by_token) + len(by_user)
        tokens_by_workspace: dict[str, list[tuple[str, str, str]]] = {}
        for tk in by_token:
            tokens_by_workspace.setdefault(tk[0], []).append(tk)
        for ws, tokens in tokens_by_workspace.items():  # one cache call per workspace, whatever its sessions
            for i in range(0, len(tokens), TOKEN_BATCH):
                await check_tokens(ws, tokens[i:i + TOKEN_BATCH])
        if self._store is None:
            self.role_reads += len(by_user)
            await asyncio.gather(*(check_user(uk) for uk in by_user))
            return
        by_workspace: dict[str, list[tuple[str, str]]] = {}
        for uk in by_user:
            by_workspace.setdefault(uk[0], []).append(uk)
        for ws, keys in by_workspace.items():  # one read at a time: the sessions' commands keep the pool
            for i in range(0, len(keys), ROLE_BATCH):
                self.role_reads += 1
                await check_batch(ws, keys[i:i + ROLE_BATCH])


class _Batch:
    __slots__ = ("joined", "left")

    def __init__(self) -> None:
        self.joined: dict[str, PresenceEntry] = {}
        self.left: dict[str, PresenceEntry] = {}


class PresenceAnnouncer:
    """Joins and leaves of one gateway's sessions, coalesced per channel and announced only in channels of
    at most ``max_size`` live presence entries (connections).  Ephemeral: best effort like typing."""

    def __init__(self, cache: Cache, broker: Broker, clock: Clock, *, max_size: int, coalesce_s: float) -> None:
        self._cache = cache
        self._broker = broker
        self._clock = clock
        self.max_size = max_size
        self.coalesce_s = coalesce_s
        self._pending: dict[tuple[str, str], _Batch] = {}
        self._sizes: dict[tuple[str, str], tuple[int, float]] = {}  # (ws, ch) -> (entries, when counted)
        self._flushing: asyncio.Task[None] | None = None
        self.announced = 0  # presence.join/leave events published (each listing one or more users)
        self.suppressed = 0  # user joins/leaves not announced: the channel was above max_size

    def broadcasts(self, workspace: str, channel: str) -> bool:
        """Whether the channel is small enough for announcements, as last counted (unknown: yes).  The
        subscribe path uses it to skip the first-entry look-up in large channels."""
        known = self._sizes.get((workspace, channel))
        return known is None or known[0] <= self.max_size

    def joined(self, workspace: str, channel: str, entry: PresenceEntry) -> None:
        batch = self._batch(workspace, channel)
        if batch.left.pop(entry.user_id, None) is None:  # left and came back within the window: no news
            batch.joined[entry.user_id] = entry

    def left(self, workspace: str, channel: str, entry: PresenceEntry) -> None:
        batch = self._batch(workspace, channel)
        if batch.joined.pop(entry.user_id, None) is None:
            batch.left[entry.user_id] = entry

    def _batch(self, workspace: str, channel: str) -> _Batch:
        key = (workspace, channel)
        batch = self._pending.get(key)
        if batch is None:
            batch = self._pending[key] = _Batch()
        if self._flushing is None:
            self._flushing = asyncio.get_running_loop().create_task(self._flush_later())
        return batch

    async def _flush_later(self) -> None:
        try:
            await asyncio.sleep(self.coalesce_s)
        finally:
            self._flushing = None
        await self.flush()

    async def flush(self) -> None:
        """Announce what is pending: per channel, one presence.join and one presence.leave listing users."""
        pending, self._pending = self._pending, {}
        for (ws, channel), batch in pending.items():
            if not batch.joined and not batch.left:
                continue
            if not await self._small(ws, channel):
                self.suppressed += len(batch.joined) + len(batch.left)
                continue
            for users, kind in ((batch.joined, e.PresenceJoin), (batch.left, e.PresenceLeave)):
                if not users:
                    continue
                event = kind(channel=channel, users=[e.UserRef(id=u.user_id, name=u.name) for u in users.values()])
                try:
                    await self._broker.publish_ephemeral(ws, channel, e.encode(event))
                    self.announced += 1
                except StormError:  # ephemeral: best effort by contract
                    log.warning("presence announcement failed ws=%s channel=%s", ws, channel)

    async def announces(self, workspace: str, channel: str) -> bool:
        """Whether joins and leaves are announced in the channel now (its count, at most SIZE_FRESH_S old)."""
        return await self._small(workspace, channel)

    async def _small(self, ws: str, channel: str) -> bool:
        key = (ws, channel)
        now = self._clock.monotonic()
        known = self._sizes.get(key)
        if known is None or now - known[1] >= SIZE_FRESH_S:
            try:
                size = await self._cache.presence_count(ws, channel)
            except StormError as exc:
                log.warning("presence count failed ws=%s channel=%s: %s", ws, channel, exc.message)
                return known is not None and known[0] <= self.max_size
            if len(self._sizes) > 10_000:  # bounded: counts of channels nobody joined lately go
                self._sizes.clear()
            known = self._sizes[key] = (size, now)
        return known[0] <= self.max_size

    async def aclose(self) -> None:
        """Announce what is pending now (a drain), then stop.  Idempotent."""
        if self._flushing is not None:
            task, self._flushing = self._flushing, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.flush()
