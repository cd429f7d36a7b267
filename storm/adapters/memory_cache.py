"""Embedded cache: dictionaries with TTLs, with the semantics of the Cache port (storm/ports/cache.py).

Expiry is lazy (checked on access) plus a sweep on every presence write, so memory stays bounded by the
live entries.  Everything is keyed by workspace first, so ``drop_workspace`` is one dictionary pop.
"""

from __future__ import annotations

from storm.errors import Unavailable
from storm.ports.cache import PresenceEntry
from storm.ports.clock import Clock


class _Space:
    __slots__ = ("counters", "kv", "presence")

    def __init__(self) -> None:
        self.kv: dict[str, tuple[bytes, float]] = {}
        self.counters: dict[str, int] = {}
        # channel -> conn_id -> (entry, expires_at)
        self.presence: dict[str, dict[str, tuple[PresenceEntry, float]]] = {}


class MemoryCache:
    def __init__(self, clock: Clock, *, max_keys_per_workspace: int = 1_000_000) -> None:
        self._clock = clock
        self._spaces: dict[str, _Space] = {}
        self._max_keys = max_keys_per_workspace
        self._state = "new"

    async def start(self) -> None:
        if self._state != "new":
            raise RuntimeError("MemoryCache.start() called twice")
        self._state = "running"

    async def stop(self) -> None:
        self._state = "stopped"
        self._spaces.clear()

    def _space(self, workspace: str) -> _Space:
        if self._state != "running":
            raise Unavailable("cache is not running")
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
        existing = await self.get(workspace, key)
        if existing is not None:
            return existing
        await self.set(workspace, key, value, ttl)
        return None

    async def incr(self, workspace: str, key: str, delta: int = 1) -> int:
        counters = self._space(workspace).counters
        counters[key] = counters.get(key, 0) + delta
        return counters[key]

    # -- presence ---------------------------------------------------------------------------------------
    def _live(self, conns: dict[str, tuple[PresenceEntry, float]]) -> None:
        now = self._clock.monotonic()
        for cid in [c for c, (_, exp) in conns.items() if exp <= now]:
            del conns[cid]

    async def presence_add(
        self, workspace: str, channel: str, conn_id: str, entry: PresenceEntry, ttl: float
    ) -> bool:
        conns = self._space(workspace).presence.setdefault(channel, {})
        self._live(conns)
        already = any(e.user_id == entry.user_id for cid, (e, _) in conns.items() if cid != conn_id)
        conns[conn_id] = (entry, self._clock.monotonic() + ttl)
        return not already

    async def presence_remove(self, workspace: str, channel: str, conn_id: str) -> PresenceEntry | None:
        space = self._space(workspace)
        conns = space.presence.get(channel)
        if not conns:
            return None
        self._live(conns)
        gone = conns.pop(conn_id, None)
        if not conns:
            space.presence.pop(channel, None)
        if gone is None:
            return None
        entry = gone[0]
        if any(e.user_id == entry.user_id for e, _ in conns.values()):
            return None
        return entry

    async def presence_refresh(self, workspace: str, channels: list[str], conn_id: str, ttl: float) -> None:
        presence = self._space(workspace).presence
        expires = self._clock.monotonic() + ttl
        for ch in channels:
            conns = presence.get(ch)
            if conns and conn_id in conns:
                conns[conn_id] = (conns[conn_id][0], expires)

    async def presence_list(self, workspace: str, channel: str) -> list[PresenceEntry]:
        conns = self._space(workspace).presence.get(channel)
        if not conns:
            return []
        self._live(conns)
        seen: dict[str, PresenceEntry] = {}
        for entry, _ in conns.values():
            seen.setdefault(entry.user_id, entry)
        return sorted(seen.values(), key=lambda e: (e.name, e.user_id))

    async def drop_workspace(self, workspace: str) -> None:
        if self._state != "running":
            raise Unavailable("cache is not running")
        self._spaces.pop(workspace, None)
