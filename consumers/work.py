"""What every worker on a work subscription shares (persistence, relay, webhooks).

* The lifecycle: :meth:`WorkWorker.start` subscribes and starts the loop (a ``stop`` that came meanwhile
  closes the new subscription); :meth:`WorkWorker.stop` is idempotent, lets the loop finish its batch for
  up to ``loop_wait_s`` (then cancels it: what it held goes back on close), runs the subclass's own drain,
  closes the subscription.
* :meth:`WorkWorker.receive`: a failing subscription (the broker restarting) is logged and retried after
  ``retry_s``, never the end of the worker.
* :func:`outage_pause`: the pause between two attempts at a batch while a dependency is down, doubling
  from the nack delay up to :data:`OUTAGE_BACKOFF_CAP_S`.

Each worker keeps its own loop (``_run``) and its own failure policy (its module docstring).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Self

from storm.lifecycle import Lifecycle
from storm.ports.broker import Delivery, WorkSubscription

log = logging.getLogger("storm.consumers")

OUTAGE_BACKOFF_CAP_S = 5.0  # longest pause between two attempts at a batch while a dependency is down


def outage_pause(nack_delay_s: float, failures: int) -> float:
    """The pause after ``failures`` (≥ 1) failed batches in a row."""
    return float(min(nack_delay_s * 2 ** min(failures - 1, 16), max(OUTAGE_BACKOFF_CAP_S, nack_delay_s)))


class WorkWorker:
    """Base of the workers (module docstring).  Subclasses implement :meth:`_run` (their loop, which checks
    ``self._stopping`` after each receive) and may extend :meth:`_drain` and :meth:`_closed`."""

    def __init__(self, what: str, subscribe: Callable[[str], Awaitable[WorkSubscription]], name: str, *,
                 loop_wait_s: float, retry_s: float) -> None:
        self._life = Lifecycle(what)
        self._subscribe = subscribe
        self._name = name
        self._loop_wait_s = loop_wait_s
        self._retry_s = retry_s
        self._sub: WorkSubscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        self._life.begin_start()
        try:
            sub = await self._subscribe(self._name)
        except BaseException:
            self._life.start_failed()
            raise
        if not self._life.started():  # stop() ran while we were subscribing
            with contextlib.suppress(Exception):
                await sub.close()
            return
        self._sub = sub
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._life.begin_stop()
        self._stopping = True
        if self._task is not None:
            task, self._task = self._task, None
            try:
                await asyncio.wait_for(asyncio.shield(task), self._loop_wait_s)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._drain()
        if self._sub is not None:
            sub, self._sub = self._sub, None
            with contextlib.suppress(Exception):
                await sub.close()
        await self._closed()

    async def _drain(self) -> None:
        """After the loop stopped, before the subscription closes (work the loop handed off)."""

    async def _closed(self) -> None:
        """After the subscription closed (the worker's own resources)."""

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _run(self) -> None:
        raise NotImplementedError

    async def receive(self, max_records: int, wait_s: float) -> Sequence[Delivery]:
        """Up to ``max_records`` within ``wait_s``; nothing (after ``retry_s``) when the subscription fails."""
        assert self._sub is not None
        try:
            return await self._sub.receive(max_records, wait_s)
        except Exception:
            log.exception("receive failed on subscription %s; retrying", self._name)
            await asyncio.sleep(self._retry_s)
            return ()
