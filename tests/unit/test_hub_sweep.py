"""The hub's deadline sweeper looks at a slice of the sessions per tick, not all of them (issue 11: holding
connections is nearly free), and at the young ones (authentication deadline) every tick."""

from __future__ import annotations

import asyncio
from typing import Any

import gateway.hub as hub_module
from gateway.hub import Hub
from storm.ports.clock import ManualClock


class _Session:
    def __init__(self, opened_at: float, awaiting_auth: bool = True) -> None:
        self.opened_at = opened_at
        self.awaiting_auth = awaiting_auth
        self.checks = 0
        self.walls: list[float | None] = []

    def check_deadlines(self, now: float, wall: float | None = None) -> None:
        self.checks += 1
        self.walls.append(wall)


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
    authenticated = [_Session(opened_at=clock.monotonic(), awaiting_auth=False) for _ in range(200)]
    for s in old + authenticated:
        hub.register(s)  # type: ignore[arg-type]
    hub.register(young)  # type: ignore[arg-type]
    await hub.start()
    try:
        for _ in range(100):  # bounded: a round takes 5 ticks (~0.25 s)
            await asyncio.sleep(0.05)
            if all(s.checks for s in old + authenticated):
                break
        ticks = young.checks
        assert all(s.checks for s in old + authenticated)  # every session is looked at within a round
        total = sum(s.checks for s in old + authenticated)
        assert total <= ticks * 80 + 80  # 400 × 0.05 / 0.25 = 80 per tick, not 400
        assert ticks >= 4  # the young one waiting for its authentication on every tick
        # the young ones already authenticated wait for their turn in the round, like the old ones
        assert max(s.checks for s in authenticated) <= 2
        assert set(young.walls) <= {clock.time()}  # the wall clock read once per tick, handed down
    finally:
        await hub.stop()
