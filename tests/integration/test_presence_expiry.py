"""presence.leave for a user whose gateway died: their presence entries are never removed, they expire, and
every gateway with subscribers in the channel tells them (Cache.watch_presence_expiry, wired by
gateway/runtime.py).  A real Gateway with its hub; the dead gateway is a second cache client that adds
bob's entry and stops without removing it (Hazelcast), or an entry that is simply not refreshed (memory).
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
