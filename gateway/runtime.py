"""The gateway component: hub, session context and background tasks of one gateway process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Coroutine, Iterable
from typing import Any

from gateway.hub import Hub
from gateway.outbox import Flusher
from storm.bootstrap import Services
from storm.metrics import GatewayMeters
from storm.ports.cache import Unwatch
from storm.protocol.codes import CloseCode
from storm.protocol.presence import PresenceKeeper
from storm.protocol.session import SessionContext

log = logging.getLogger("storm.gateway")

ACK_SHARE_OF_DRAIN = 0.6  # of STORM_DRAIN_TIMEOUT_S for in-flight frames; the rest for the closes


class Gateway:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.config = services.config
        self.hub = Hub(services.broker, services.clock)
        self.hub.presence_broadcast_max = services.config.presence_broadcast_max
        self.hub.presence_coalesce_s = services.config.presence_coalesce_s
        self.hub.young_s = services.config.auth_timeout_s + 1.0  # swept every tick until authenticated
        self.flusher = Flusher(services.config.write_delay_s,  # writes every connection's outbox (adaptive)
                               max_delay_s=services.config.write_delay_max_s)
        self.session_context = SessionContext(
            config=services.config, clock=services.clock, broker=services.broker, cache=services.cache,
            store=services.store, identity=services.identity, directory=services.directory, hub=self.hub,
        )
        self.meters = self.session_context.meters = GatewayMeters(services.metrics)  # docs/observability.md
        self.meters.after_pass = self.flusher.after_pass  # ack and delivery latencies end at the write
        self.hub.on_delivered = self.meters.delivered  # sampled records: storm.delivery.latency
        services.metrics.gauge_of("storm.gateway.connections", lambda: self.connections)
        services.metrics.count_of("storm.fanout.deliveries", lambda: self.hub.deliveries)
        services.metrics.count_of("storm.outbox.overflows", lambda: self.flusher.overflows)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.connections = 0
        self.accepting = False
        self._draining: asyncio.Task[None] | None = None
        self._unwatch: Unwatch | None = None
        # presence refreshed and access re-checked for every session at once, beside their frames
        self.presence = PresenceKeeper(services.cache, services.directory, services.config.presence_ttl_s,
                                       lambda: self.hub.sessions, store=services.store,
                                       lease=f"gw-{secrets.token_hex(8)}")
        self.session_context.presence_lease = self.presence.lease  # one lease for all its sessions' entries

    async def start(self) -> None:
        await self.hub.start()
        await self.presence.renew()  # the lease exists before the first session's entry names it
        # presence.leave for users whose gateway died (their entries expire instead of being removed)
        self._unwatch = await self.services.cache.watch_presence_expiry(self.hub.wants, self.hub.presence_expired)
        self.presence.start()
        self.accepting = True

    async def drain(self) -> None:
        """Graceful drain (docs/delivery.md, "Drain"); idempotent, a second call waits for the first.

        1. Stop accepting: ``/healthz`` answers 503 (the load balancer stops sending sockets here) and new
           sockets are closed with 1012 at once.
        2. Sessions stop taking frames (a client resends unacknowledged messages after reconnecting) and
           the frames already being handled finish, so their acks are queued.
        3. Every session is closed with 1012 and ``retry_ms=<n>`` in the reason, ``n`` drawn uniformly from
           0 to ``STORM_DRAIN_RECONNECT_SPREAD_S``: clients come back spread out, not as one wave.
        4. Wait for the closes (each flushes what is queued first).
        All of it within ``STORM_DRAIN_TIMEOUT_S``; runs before the server's own shutdown, which would
        otherwise close the sockets first with another code."""
        if self._draining is None:
            self._draining = asyncio.get_running_loop().create_task(self._drain())
        await asyncio.shield(self._draining)

    async def _drain(self) -> None:
        self.accepting = False
        loop = asyncio.get_running_loop()
        budget = self.config.drain_timeout_s
        deadline = loop.time() + budget
        for session in list(self.hub.sessions):
            session.draining = True
        acks_by = loop.time() + budget * ACK_SHARE_OF_DRAIN
        while loop.time() < acks_by and any(s.busy for s in self.hub.sessions):
            await asyncio.sleep(0.02)
        spread_ms = int(self.config.drain_reconnect_spread_s * 1000)
        closing = list(self.hub.sessions)
        for session in closing:
            session.draining = True
            retry_ms = secrets.randbelow(spread_ms + 1) if spread_ms else 0
            session.close(CloseCode.SERVICE_RESTART, f"gateway draining; retry_ms={retry_ms}")
        log.info("drain: closed %d sessions with 1012, reconnects spread over %d ms", len(closing), spread_ms)
        remaining = deadline - loop.time()
        if self._tasks and remaining > 0:
            await asyncio.wait(list(self._tasks), timeout=remaining)

    async def stop(self) -> None:
        await self.drain()
        await self.presence.stop()
        await self.session_context.presence.aclose()  # the pending joins and leaves go out now
        if self._unwatch is not None:
            unwatch, self._unwatch = self._unwatch, None
            with contextlib.suppress(Exception):
                await unwatch()
        await self.hub.stop()
        self.flusher.close()
        await cancel_and_wait(self._tasks)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    def admit(self) -> tuple[int, str] | None:
        """None to accept a new socket (counted until :meth:`release`), or (close code, reason) to refuse it."""
        if not self.accepting:
            self.meters.connects["restarting"].value += 1
            return (CloseCode.SERVICE_RESTART, "gateway restarting")
        self.connections += 1
        return None

    def release(self) -> None:
        self.connections -= 1


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until they have ended, whatever they raise; the caller's own cancellation
    while it waits is not swallowed (it propagates, as it must for the caller's ``stop`` to be cancellable)."""
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
