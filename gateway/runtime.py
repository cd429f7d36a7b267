"""The gateway component: hub, session context and background tasks of one gateway process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from gateway.hub import Hub
from gateway.outbox import Flusher
from storm.bootstrap import Services
from storm.protocol.codes import CloseCode
from storm.protocol.session import SessionContext

log = logging.getLogger("storm.gateway")


class Gateway:
    def __init__(self, services: Services) -> None:
        self.services = services
        self.config = services.config
        self.hub = Hub(services.broker, services.clock)
        self.flusher = Flusher(services.config.write_delay_s)  # writes every connection's outbox, per tick
        self.session_context = SessionContext(
            config=services.config, clock=services.clock, broker=services.broker, cache=services.cache,
            store=services.store, identity=services.identity, directory=services.directory, hub=self.hub,
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self.connections = 0
        self.accepting = False

    async def start(self) -> None:
        await self.hub.start()
        self.accepting = True

    async def drain(self) -> None:
        """Stop accepting and close every session with 1012 (reconnect elsewhere), waiting (bounded) for
        the closes and cleanups.  Runs before the server's own shutdown, which would otherwise close the
        sockets first with another code.  Idempotent."""
        self.accepting = False
        for session in list(self.hub.sessions):
            session.close(CloseCode.SERVICE_RESTART, "gateway restarting")
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=self.config.drain_timeout_s)

    async def stop(self) -> None:
        await self.drain()
        await self.hub.stop()
        self.flusher.close()
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    def admit(self, headers: dict[str, str]) -> tuple[int, str] | None:
        """None to accept a new socket, or (close code, reason) to refuse it."""
        if not self.accepting:
            return (CloseCode.SERVICE_RESTART, "gateway restarting")
        self.connections += 1
        return None

    def release(self) -> None:
        self.connections -= 1
