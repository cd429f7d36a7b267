"""The plan's connection quota across gateways, and how it heals after a gateway dies.

The fast path is one cache counter per workspace (``CONNECTIONS_KEY``): +1 when a session opens, -1 when it
ends.  A gateway that dies (SIGKILL, OOM, lost host) never gives its -1s back, so the counter alone would
drift up with every crash until the workspace is locked out with 4029.  Only when the counter says the
plan is full does a gateway **recount**: the live entries of the workspace's ``_workspace`` presence
pseudo-channel are its connections (each session adds one after ``hello`` and refreshes it on heartbeats;
a dead gateway's expire after ``STORM_PRESENCE_TTL_S``).  What the counter holds beyond that count is a
leftover of dead gateways, and is taken off the counter.

A recount costs one indexed query (Hazelcast: an aggregation over the members), so each gateway recounts a
workspace at most once every ``RECOUNT_EVERY_S``.  The quota is soft by a few connections: sessions
admitted on other gateways a moment ago may not have their presence entry yet, and are then taken off too.
docs/security.md, "Abuse limits".
"""

from __future__ import annotations

import logging

from storm.ports.cache import Cache
from storm.ports.clock import Clock

log = logging.getLogger("storm.quota")

CONNECTIONS_KEY = "quota:connections"  # cache counter of the workspace's open sessions
WORKSPACE_PRESENCE = "_workspace"  # presence pseudo-channel holding every connection of the workspace
RECOUNT_EVERY_S = 5.0
RECOUNTS_TRACKED = 10_000  # workspaces whose last recount time this gateway remembers


class ConnectionQuota:
    def __init__(self, cache: Cache, clock: Clock) -> None:
        self._cache = cache
        self._clock = clock
        self._recounted: dict[str, float] = {}  # workspace -> monotonic time of this gateway's last recount

    async def take(self, workspace: str, limit: int) -> bool:
        """Count one more connection.  False when the plan is full (the connection is counted anyway:
        :meth:`give_back` it)."""
        count = await self._cache.incr(workspace, CONNECTIONS_KEY, 1)
        if count <= limit:
            return True
        return await self._recount(workspace, count) <= limit

    async def give_back(self, workspace: str) -> None:
        await self._cache.incr(workspace, CONNECTIONS_KEY, -1)

    async def _recount(self, workspace: str, counted: int) -> int:
        now = self._clock.monotonic()
        last = self._recounted.get(workspace)
        if last is not None and now - last < RECOUNT_EVERY_S:
            return counted
        if len(self._recounted) >= RECOUNTS_TRACKED:
            self._recounted.clear()
        self._recounted[workspace] = now
        live = await self._cache.presence_count(workspace, WORKSPACE_PRESENCE) + 1  # + the one asking
        leftover = counted - live
        if leftover <= 0:
            return counted
        log.warning("workspace=%s connection counter held %d connections no gateway has (dead gateways); "
                    "taking them off", workspace, leftover)
        return await self._cache.incr(workspace, CONNECTIONS_KEY, -leftover)
