"""The hub's deadline sweeper looks at a slice of the sessions per tick, not all of them (issue 11: holding
connections is nearly free), and at the young ones (authentication deadline) every tick."""

from __future__ import annotations

import asyncio
from typing import Any

import gateway.hub as hub_module
from gateway.hub import Hub
from storm.ports.clock import ManualClock


class _Session:
    def __init__(self, opened_at: float) -> None:
        self.opened_at = opened_at
        self.checks = 0

    def check_deadlines(self, now: float) -> None:
        self.checks += 1


class _Broker:
    async def subscribe_broadcast(self, handler: Any) -> Any:
        class Sub:
            async def close(self) -> None: ...

        return Sub()


async def test_each_tick_checks_the_young_and_one_slice_of_the_rest(monkeypatch):
    monkeypatch.setattr(hub_module, "OPEN_SWEEP_S", 0.25)  # a round of the old ones every 0.25 s
    clock = ManualClock()
    clock.advance(100)
    hub = Hub(_Broker(), clock, sweep_interval_s=0.05)  # type: ignore[arg-type]
    old = [_Session(opened_at=0.0) for _ in range(200)]
    young = _Session(opened_at=clock.monotonic())
    for s in old:
        hub.register(s)  # type: ignore[arg-type]
    hub.register(young)  # type: ignore[arg-type]
    await hub.start()
    try:
        for _ in range(100):  # bounded: a round takes 5 ticks (~0.25 s)
            await asyncio.sleep(0.05)
            if all(s.checks for s in old):
                break
        ticks = young.checks
        assert all(s.checks for s in old)  # every session is looked at within a round
        total = sum(s.checks for s in old)
        assert total <= ticks * 40 + 40  # 200 × 0.05 / 0.25 = 40 per tick, not 200
        assert ticks >= 4  # the young one on every tick
    finally:
        await hub.stop()
