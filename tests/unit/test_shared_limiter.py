"""Shared buckets taken in leases (storm/ratelimit.py SharedLimiter; docs/cache.md, "Rate buckets")."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from storm.adapters.memory_cache import MemoryCache
from storm.errors import Unavailable
from storm.ports.clock import ManualClock
from storm.ratelimit import LEASE_TTL_S, SharedLimiter


class CountingCache:
    """The memory cache, counting (and optionally failing) rate_take calls."""

    def __init__(self, clock: ManualClock) -> None:
        self.inner = MemoryCache(clock)
        self.calls: list[int] = []
        self.fail = False

    async def rate_take(self, workspace: str, key: str, rate: float, burst: int, cost: int = 1) -> float:
        self.calls.append(cost)
        await asyncio.sleep(0)  # a round trip: concurrent takers really overlap
        if self.fail:
            raise Unavailable("cache down")
        return await self.inner.rate_take(workspace, key, rate, burst, cost)


@pytest.fixture
async def env() -> Any:
    clock = ManualClock()
    cache = CountingCache(clock)
    await cache.inner.start()
    try:
        yield clock, cache, SharedLimiter(cache, clock)
    finally:
        await cache.inner.stop()


async def test_a_thousand_concurrent_takers_share_one_cache_call_per_lease(env: Any) -> None:
    _, cache, limiter = env
    waits = await asyncio.gather(*(limiter.take("ws", "rate:workspace", 10_000, 20_000) for _ in range(1000)))
    assert waits == [0.0] * 1000
    assert cache.calls == [1000]  # 10 000/s x 100 ms, taken once for all of them


async def test_more_takers_in_line_than_three_leases_hold_are_not_refused_while_the_bucket_has_tokens(
        env: Any) -> None:
    """A gateway with thousands of publishes queued (a loaded bench) must not refuse them as ``rate_limited``
    while the shared bucket still has tokens: waiters that saw three leases taken by others ask the bucket."""
    _, cache, limiter = env
    waits = await asyncio.gather(*(limiter.take("ws", "rate:workspace", 10_000, 20_000) for _ in range(5000)))
    assert sum(w > 0 for w in waits) == 0  # 5 000 of a 20 000 burst: every one admitted
    assert sum(cache.calls) <= 20_000  # and no more granted than the bucket holds


async def test_admits_at_most_what_the_shared_bucket_grants_across_gateways(env: Any) -> None:
    clock, cache, _ = env
    gateways = [SharedLimiter(cache, clock), SharedLimiter(cache, clock)]  # two processes, one bucket
    admitted = 0
    for _ in range(40):  # 4 s of 100 ms steps, each gateway trying 100 publishes per step
        for gw in gateways:
            admitted += sum(w == 0.0 for w in [await gw.take("ws", "rate:workspace", 50, 100) for _ in range(100)])
        clock.advance(0.1)
    assert admitted <= 100 + 50 * 4  # the burst plus the rate over the window: never more
    assert admitted >= 0.8 * (100 + 50 * 4)  # and not much less (leases expire unused only at the edges)


async def test_near_the_limit_single_tokens_are_taken_so_the_burst_is_used_exactly(env: Any) -> None:
    _, _, limiter = env
    waits = [await limiter.take("ws", "rate:user:u", 30, 7) for _ in range(10)]  # lease of 3 > what is left
    assert [w == 0.0 for w in waits] == [True] * 7 + [False] * 3
    assert all(w > 0 for w in waits[7:])


async def test_an_unused_lease_expires_instead_of_piling_up(env: Any) -> None:
    clock, cache, limiter = env
    assert await limiter.take("ws", "k", 100, 1000) == 0.0  # leases 10, uses 1
    clock.advance(LEASE_TTL_S + 0.01)
    assert await limiter.take("ws", "k", 100, 1000) == 0.0
    assert cache.calls == [10, 10]  # the 9 left over were dropped, a new lease was taken


async def test_a_failing_cache_fails_every_taker_and_the_next_take_tries_again(env: Any) -> None:
    _, cache, limiter = env
    cache.fail = True
    results = await asyncio.gather(*(limiter.take("ws", "k", 100, 1000) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, Unavailable) for r in results), results
    cache.fail = False
    assert await limiter.take("ws", "k", 100, 1000) == 0.0


async def test_a_user_publishing_every_two_seconds_keeps_the_lease_between_publishes(env: Any) -> None:
    """The bench's users (and chat users) publish far below their bucket's rate: each publish used to find
    its 0.25 s lease expired and pay a rate_take (two or three Hazelcast round trips)."""
    clock, cache, limiter = env
    for _ in range(6):
        assert await limiter.take("ws", "rate:user:u", 30, 60) == 0.0
        clock.advance(2.0)
    assert cache.calls == [3, 3]  # one lease of 0.1 s x 30/s per three publishes


async def test_held_leases_add_at_most_one_lease_per_gateway_to_any_window(env: Any) -> None:
    """A lease outlives its grant by up to LEASE_TTL_S: the only slack over the bucket is the unused part of
    one lease per gateway, whatever the window."""
    clock, cache, _ = env
    gateways = [SharedLimiter(cache, clock) for _ in range(3)]
    for gw in gateways:  # each takes a lease of 3 and uses one token of it
        assert await gw.take("ws", "rate:user:u", 30, 60) == 0.0
    clock.advance(LEASE_TTL_S - 0.5)  # the bucket is full again; the leases still hold 2 tokens each
    admitted = 0
    for _ in range(100):  # a burst within one instant, spread over the gateways
        for gw in gateways:
            admitted += await gw.take("ws", "rate:user:u", 30, 60) == 0.0
    assert admitted == 60 + 3 * 2  # the burst plus what the leases held, never more
