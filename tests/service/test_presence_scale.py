"""Presence at scale (issue 11, item 4; ADR 0010): joins and leaves coalesced per channel and window,
announced only in small channels, and the presence of any channel served by pages."""

from __future__ import annotations

import asyncio
import dataclasses
import math

from storm.adapters.memory_cache import MemoryCache
from storm.ports.cache import PresenceEntry
from storm.ports.clock import ManualClock
from storm.protocol.presence import SIZE_FRESH_S, PresenceAnnouncer
from tests.service.test_session import GENERAL, _events, connect, send


async def test_joins_are_announced_coalesced_and_only_while_the_channel_is_small(ctx, services):
    ctx.presence.max_size = 2  # STORM_PRESENCE_BROADCAST_MAX
    a, ta = await connect(ctx, services, "alice")
    b, tb = await connect(ctx, services, "bob")
    await send(a, op="subscribe", channel=GENERAL)
    await send(b, op="subscribe", channel=GENERAL)
    (join,) = await _events(ta, "presence.join")  # one event for the window's two joins
    assert sorted(u["name"] for u in join["users"]) == ["Alice", "Bob"]
    assert [len(j["users"]) for j in await _events(tb, "presence.join")] == [2]
    services.clock.advance(SIZE_FRESH_S)  # the channel is counted again at the next announcement
    c, _tc = await connect(ctx, services, "carol")
    await send(c, op="subscribe", channel=GENERAL)
    await asyncio.sleep(ctx.presence.coalesce_s + 0.1)
    assert not ta.take("presence.join")  # three entries > 2: not announced
    assert ctx.presence.suppressed == 1
    await send(a, op="presence", id=1, channel=GENERAL)
    (p,) = ta.take("presence")
    assert p["count"] == 3 and p["broadcast"] is False  # the client learns to page instead


async def test_presence_is_served_by_pages_with_a_cursor(ctx, services):
    sessions = [await connect(ctx, services, u) for u in ("alice", "bob", "carol")]
    for s, _t in sessions:
        await send(s, op="subscribe", channel=GENERAL)
    a, ta = sessions[0]
    seen: list[str] = []
    cursor = None
    for _ in range(5):  # bounded: 3 users in pages of 2
        frame = {"op": "presence", "id": 7, "channel": GENERAL, "limit": 2}
        if cursor:
            frame["cursor"] = cursor
        await send(a, **frame)
        (page,) = ta.take("presence")
        assert page["count"] == 3 and len(page["users"]) <= 2
        seen += [u["id"] for u in page["users"]]
        cursor = page.get("next_cursor")
        if cursor is None:
            break
    assert len(seen) == 3 and seen == sorted(seen)  # every user once, in id order
    await send(a, op="presence", id=8, channel=GENERAL, limit=5000)  # above the protocol's bound
    (err,) = ta.take("error")
    assert err["code"] == "bad_request" and err["field"] == "limit"
    ctx.config = dataclasses.replace(ctx.config, presence_page_max=1)  # STORM_PRESENCE_PAGE_MAX caps a limit
    await send(a, op="presence", id=9, channel=GENERAL, limit=1000)
    (capped,) = ta.take("presence")
    assert len(capped["users"]) == 1 and capped["next_cursor"] == capped["users"][0]["id"]


async def test_a_user_who_joins_and_leaves_within_the_window_is_not_announced(services):
    published: list[bytes] = []

    class Broker:
        async def publish_ephemeral(self, workspace: str, channel: str, payload: bytes) -> None:
            published.append(payload)

    ann = PresenceAnnouncer(services.cache, Broker(), services.clock, max_size=100, coalesce_s=60)  # type: ignore[arg-type]
    bob = PresenceEntry("u-bob", "Bob")
    ann.joined("acme", "ch", bob)
    ann.left("acme", "ch", bob)
    await ann.aclose()
    assert published == [] and ann.announced == 0


class _CountingBroker:
    """Counts what the hubs would deliver: each announcement reaches every subscriber of the moment."""

    def __init__(self) -> None:
        self.subscribers = 0
        self.events = 0  # events published
        self.deliveries = 0  # events received by clients, in all

    async def publish_ephemeral(self, workspace: str, channel: str, payload: bytes) -> None:
        self.events += 1
        self.deliveries += self.subscribers


async def joins_delivered(n: int, per_window: int, max_size: int) -> tuple[int, int]:
    """``n`` users join one channel, ``per_window`` per coalescing window: (events published, delivered)."""
    clock = ManualClock()
    cache = MemoryCache(clock)
    await cache.start()
    broker = _CountingBroker()
    ann = PresenceAnnouncer(cache, broker, clock, max_size=max_size, coalesce_s=3600)  # type: ignore[arg-type]
    try:
        for w in range(math.ceil(n / per_window)):
            for i in range(w * per_window, min(n, (w + 1) * per_window)):
                entry = PresenceEntry(f"u-{i:06d}", f"User {i}")
                if await cache.presence_add("ws", "big", f"c-{i}", entry, 600, first=ann.broadcasts("ws", "big")):
                    ann.joined("ws", "big", entry)
                broker.subscribers += 1
            await ann.flush()  # the window ends
            clock.advance(SIZE_FRESH_S)
    finally:
        await ann.aclose()
        await cache.stop()
    return broker.events, broker.deliveries


async def test_ten_thousand_joins_cost_a_bounded_number_of_events():
    """Before: each join announced alone to every member, n(n+1)/2 = 50 005 000 events for 10 000 joins.
    After (defaults: 100 entries, 1 s windows), 100 joins a second: one event per window while the
    channel is small, then none (ADR 0010 has the figures)."""
    events, delivered = await joins_delivered(10_000, per_window=100, max_size=100)
    assert events == 1 and delivered == 100
    events, delivered = await joins_delivered(10_000, per_window=1, max_size=100)  # a slow trickle
    assert events == 100 and delivered == sum(range(1, 101))  # 5 050
