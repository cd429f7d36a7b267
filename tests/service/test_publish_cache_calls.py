"""What one publish costs the cache at steady state (issue 12: Hazelcast off the per-message path).

A shape test, not a timing: it counts the Cache port's calls made by publishes of a user who publishes
every 2 s (the bench's users; most chat users publish less often).  Before issue 12 each such publish made
a claim (``put_if_absent``), its confirmation (``set``) and a user-bucket ``rate_take`` (its 0.25 s lease had
expired); on Hazelcast a ``rate_take`` is two or three round trips (docs/cache.md, "Rate buckets")."""

from __future__ import annotations

from collections import Counter
from typing import Any

from tests.service.test_session import GENERAL, connect, send

PUBLISHES = 12


async def test_a_steady_publish_makes_one_cache_write_and_a_third_of_a_rate_take(ctx, services, monkeypatch):
    a, ta = await connect(ctx, services)
    await send(a, op="publish", id=0, channel=GENERAL, cmid="warm", text="x")  # directory entries, leases
    assert ta.take("ack")
    calls: Counter[str] = Counter()
    inside = [0]  # the memory cache's put_if_absent calls its own set: count the port's outer calls only
    for name in ("get", "set", "delete", "put_if_absent", "rate_take", "incr"):
        real = getattr(services.cache, name)

        async def counting(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            calls[_name] += not inside[0]
            inside[0] += 1
            try:
                return await _real(*args, **kw)
            finally:
                inside[0] -= 1

        monkeypatch.setattr(services.cache, name, counting)
    for i in range(1, PUBLISHES + 1):
        services.clock.advance(2.0)
        await send(a, op="publish", id=i, channel=GENERAL, cmid=f"c{i}", text="x")
    assert len(ta.take("ack")) == PUBLISHES
    assert calls["put_if_absent"] == PUBLISHES  # the cmid claim, one per publish
    assert calls["set"] == 0  # no confirmation write (12 before issue 12): done is kept in the process
    # the user's lease of 3 tokens (0.1 s x 30/s) serves three publishes 2 s apart (LEASE_TTL_S = 10 s);
    # and the workspace lease (0.1 s of the demo plan's rate) a few: 6 rate_takes here, 24 before issue 12
    assert calls["rate_take"] <= PUBLISHES // 2, calls
