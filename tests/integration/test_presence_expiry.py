"""presence.leave for a user whose gateway died: their presence entries are never removed, they expire (or
their gateway's presence lease lapses), and every gateway with subscribers in the channel tells them
(Cache.watch_presence_expiry, wired by gateway/runtime.py).  A real Gateway with its hub; the dead gateway is
a second cache client that adds bob's entry and stops without removing it (Hazelcast), or an entry, a lease,
that is simply not refreshed (memory).  And what the lease is for: a gateway keeps all its sessions present
with one cache call per pass (ADR 0010, amendment "the per-gateway presence lease").
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.runtime import Gateway
from storm.adapters.dev_identity import DevIdentity
from storm.bootstrap import Services, hazelcast_settings
from storm.config import Config
from storm.ports.cache import PresenceEntry
from storm.protocol.quota import WORKSPACE_PRESENCE
from storm.protocol.session import Session, State
from storm_tools.seed import DEMO_WORKSPACE, channel_id
from tests.support.services import demo_services

GENERAL = channel_id(DEMO_WORKSPACE, "general")
DEADLINE_S = 12.0  # TTL 1 s (whole seconds in Hazelcast) + its 5 s expiration task, with room


class Collect:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def send(self, data: bytes) -> bool:
        self.events.extend(json.loads(part) for part in data.split(b"\n"))
        return True

    def close(self, code: int, reason: str) -> None:
        pass


@pytest.fixture(params=["memory", pytest.param("hazelcast", marks=pytest.mark.integration)])
async def services(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[Services]:
    extra: dict[str, Any] = {}
    if request.param == "hazelcast":
        extra = {"cache": "hazelcast", "hazelcast_members": request.getfixturevalue("hazelcast_members"),
                 "hazelcast_cluster": "storm"}
    cfg = Config.from_env({}, database_url=f"sqlite+aiosqlite:///{tmp_path}/p.db", **extra)
    svc = await demo_services(cfg)
    try:
        yield svc
    finally:
        await svc.cache.drop_workspace(DEMO_WORKSPACE)
        await svc.stop()


async def _dead_gateways_entry(services: Services, entry: PresenceEntry) -> None:
    """What a gateway that dies leaves behind: an entry with the presence TTL that nobody refreshes."""
    if services.config.cache == "hazelcast":
        from storm.adapters.hazelcast_cache import HazelcastCache

        doomed = HazelcastCache(hazelcast_settings(services.config), services.clock)
        await doomed.start()
        await doomed.presence_add(DEMO_WORKSPACE, GENERAL, "conn-of-a-dead-gateway", entry, 1.0)
        await doomed.stop()  # the process is gone: nobody removes it
    else:
        await services.cache.presence_add(DEMO_WORKSPACE, GENERAL, "conn-of-a-dead-gateway", entry, 1.0)


async def test_subscribers_are_told_when_a_dead_gateways_user_expires(services: Services) -> None:
    gateway = Gateway(services)
    await gateway.start()
    try:
        transport = Collect()
        alice = Session(gateway.session_context, transport)
        token = DevIdentity(services.config.dev_secret).issue("dev|alice", DEMO_WORKSPACE, "Alice")
        await alice.receive(json.dumps({"op": "auth", "token": token}))
        assert alice.state is State.OPEN, transport.events
        await alice.receive(json.dumps({"op": "subscribe", "id": 1, "channel": GENERAL}))
        assert any(e["type"] == "subscribed" for e in transport.events), transport.events
        transport.events.clear()
        ghost = PresenceEntry("00000000-0000-4000-8000-00000000b0b0", "Bob")
        await _dead_gateways_entry(services, ghost)
        started = time.monotonic()
        while not any(e["type"] == "presence.leave" for e in transport.events):
            assert time.monotonic() - started < DEADLINE_S, transport.events
            await asyncio.sleep(0.1)
        leaves = [e for e in transport.events if e["type"] == "presence.leave"]
        bob = {"id": ghost.user_id, "name": "Bob"}
        assert leaves == [{"type": "presence.leave", "channel": GENERAL, "users": [bob]}]
        assert [e.name for e in await services.cache.presence_list(DEMO_WORKSPACE, GENERAL)] == ["Alice"]
        await alice.closed()
    finally:
        await gateway.stop()


async def _open(gateway: Gateway, services: Services, subject: str, name: str) -> tuple[Session, Collect]:
    transport = Collect()
    session = Session(gateway.session_context, transport)
    token = DevIdentity(services.config.dev_secret).issue(subject, DEMO_WORKSPACE, name)
    await session.receive(json.dumps({"op": "auth", "token": token}))
    assert session.state is State.OPEN, transport.events
    await session.receive(json.dumps({"op": "subscribe", "id": 1, "channel": GENERAL}))
    assert any(e["type"] == "subscribed" for e in transport.events), transport.events
    transport.events.clear()
    return session, transport


async def test_a_dead_gateways_leased_users_leave_presence_and_the_quota_recount(services: Services) -> None:
    """The killed gateway of today: its lease lapses, nobody removes its entries.  Alice's subscribers hear
    bob leave, the presence list and the connection quota's recount (the ``_workspace`` count) drop him."""
    gateway = Gateway(services)
    await gateway.start()
    try:
        alice, transport = await _open(gateway, services, "dev|alice", "Alice")
        ghost, lease = PresenceEntry("00000000-0000-4000-8000-00000000b0b0", "Bob"), "gw-dead-" + alice.id
        doomed: Any = services.cache
        if services.config.cache == "hazelcast":
            from storm.adapters.hazelcast_cache import HazelcastCache

            doomed = HazelcastCache(hazelcast_settings(services.config), services.clock)
            await doomed.start()
        await doomed.presence_lease(lease, 1.0)  # the dead gateway's last renewal
        for channel in (GENERAL, WORKSPACE_PRESENCE):
            await doomed.presence_add(DEMO_WORKSPACE, channel, "conn-of-a-dead-gateway", ghost, 60.0, lease=lease)
        if doomed is not services.cache:
            await doomed.stop()  # the process is gone: nobody renews its lease or removes its entries
        assert await services.cache.presence_count(DEMO_WORKSPACE, WORKSPACE_PRESENCE) == 2
        started = time.monotonic()
        while not any(e["type"] == "presence.leave" for e in transport.events):
            assert time.monotonic() - started < DEADLINE_S, transport.events
            await asyncio.sleep(0.1)
        leaves = [e for e in transport.events if e["type"] == "presence.leave"]
        assert leaves == [{"type": "presence.leave", "channel": GENERAL, "users": [{"id": ghost.user_id,
                                                                                      "name": "Bob"}]}]
        assert [e.name for e in await services.cache.presence_list(DEMO_WORKSPACE, GENERAL)] == ["Alice"]
        assert await services.cache.presence_count(DEMO_WORKSPACE, WORKSPACE_PRESENCE) == 1  # alice's only
        await alice.closed()
    finally:
        await gateway.stop()


async def test_a_gateway_keeps_its_sessions_present_with_one_cache_call_per_pass(
        services: Services, monkeypatch: pytest.MonkeyPatch) -> None:
    """Holding connections is nearly free: a keeper pass renews the gateway's lease, one cache call, however
    many sessions and channels it holds; no entry is touched (Hazelcast: no ``setTtl`` per entry)."""
    gateway = Gateway(services)
    await gateway.start()
    try:
        sessions = [await _open(gateway, services, f"dev|{n}", n.title()) for n in ("alice", "bob", "carol")]
        calls: list[str] = []
        for method in ("presence_lease", "presence_refresh", "presence_refresh_many"):
            real = getattr(services.cache, method)

            async def counted(*args: Any, _real: Any = real, _name: str = method, **kwargs: Any) -> Any:
                calls.append(_name)
                return await _real(*args, **kwargs)

            monkeypatch.setattr(services.cache, method, counted)
        entry_calls: list[str] = []
        if services.config.cache == "hazelcast":  # on the wire: nothing sent per entry
            from storm.adapters.hazelcast_cache import MAP_PRESENCE

            presence = services.cache._maps[MAP_PRESENCE]  # type: ignore[attr-defined]
            for method in ("set_ttl", "set", "put"):
                real = getattr(presence, method)

                async def counted_entry(*args: Any, _real: Any = real, _name: str = method, **kwargs: Any) -> Any:
                    entry_calls.append(_name)
                    return await _real(*args, **kwargs)

                monkeypatch.setattr(presence, method, counted_entry)
        for _ in range(3):
            await gateway.presence.run_once()
        assert calls == ["presence_lease"] * 3
        assert entry_calls == []
        names = [e.name for e in await services.cache.presence_list(DEMO_WORKSPACE, GENERAL)]
        assert names == ["Alice", "Bob", "Carol"]
        for session, _ in sessions:
            await session.closed()
    finally:
        await gateway.stop()
