"""consumers/work.py: the lifecycle and receive policy the persistence, relay and webhook workers share."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from consumers.work import OUTAGE_BACKOFF_CAP_S, WorkWorker, outage_pause


class _Sub:
    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first = fail_first
        self.receives = 0
        self.closed = False

    async def receive(self, max_records: int, wait_s: float) -> Sequence[Any]:
        self.receives += 1
        if self.receives <= self.fail_first:
            raise ConnectionError("broker restarting")
        await asyncio.sleep(0.001)
        return ("record",)

    async def close(self) -> None:
        self.closed = True


class _Worker(WorkWorker):
    def __init__(self, sub: _Sub, subscribe_gate: asyncio.Event | None = None) -> None:
        async def subscribe(name: str) -> Any:
            if subscribe_gate is not None:
                await subscribe_gate.wait()
            return sub

        super().__init__("test worker", subscribe, "work", loop_wait_s=1.0, retry_s=0.01)
        self.got: list[Any] = []
        self.drained = self.closed_after = False

    async def _run(self) -> None:
        while not self._stopping:
            self.got.extend(await self.receive(10, 0.01))

    async def _drain(self) -> None:
        self.drained = True

    async def _closed(self) -> None:
        self.closed_after = True


async def test_a_failing_receive_is_retried_and_stop_drains_then_closes() -> None:
    sub = _Sub(fail_first=2)
    async with _Worker(sub) as worker:
        for _ in range(200):
            if worker.got:
                break
            await asyncio.sleep(0.01)
    assert worker.got and sub.receives >= 3  # outlived two failures
    assert sub.closed and worker.drained and worker.closed_after


async def test_a_stop_while_subscribing_closes_the_new_subscription_and_runs_nothing() -> None:
    sub, gate = _Sub(), asyncio.Event()
    worker = _Worker(sub, gate)
    starting = asyncio.create_task(worker.start())
    await asyncio.sleep(0)
    stopping = asyncio.create_task(worker.stop())
    await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(starting, stopping)
    assert sub.closed and sub.receives == 0


def test_the_outage_pause_doubles_up_to_its_cap() -> None:
    assert [outage_pause(0.5, n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0, OUTAGE_BACKOFF_CAP_S]
    assert outage_pause(0.5, 10_000) == OUTAGE_BACKOFF_CAP_S
    assert outage_pause(8.0, 3) == 8.0  # a nack delay above the cap is the pause
