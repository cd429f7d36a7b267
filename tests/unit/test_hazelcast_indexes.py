"""The presence map's hash indexes after a reconnection (storm/adapters/hazelcast_cache.py ``_on_state``) and in
the member configuration this repository starts (scripts/services/hazelcast/hazelcast.xml).

A cluster that restarts whole forgets the indexes a client added: every presence query then scans the whole
map (53 ms of the member's CPU per query at 30 000 entries, 1.4 ms on the index).  The real restart is in
tests/integration/test_hazelcast_outage.py."""

from __future__ import annotations

import asyncio
import logging
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from storm.adapters.hazelcast_cache import MAP_PRESENCE, PRESENCE_INDEXES, HazelcastCache, HazelcastSettings
from storm.ports.clock import SystemClock

ROOT = Path(__file__).resolve().parents[2]


class RecordingMap:
    def __init__(self, fail: bool = False) -> None:
        self.declared: list[tuple[tuple[str, ...], Any]] = []
        self.fail = fail

    async def add_index(self, *, attributes: list[str], index_type: Any) -> None:
        if self.fail:
            raise ConnectionError("gone again")
        self.declared.append((tuple(attributes), index_type))


async def test_a_reconnection_declares_the_presence_indexes_again(caplog: pytest.LogCaptureFixture) -> None:
    from hazelcast.config import IndexType

    caplog.set_level(logging.INFO, logger="storm.cache.hazelcast")
    cache = HazelcastCache(HazelcastSettings(members=("127.0.0.1:1",), cluster="storm"), SystemClock())
    presence = RecordingMap()
    cache._maps[MAP_PRESENCE] = presence
    cache._client = object()  # started
    for state in ("DISCONNECTED", "CONNECTED"):
        cache._on_state(state)
    await asyncio.gather(*cache._background)
    assert presence.declared == [(a, IndexType.HASH) for a in PRESENCE_INDEXES]
    assert "presence indexes declared again" in caplog.text

    failing = RecordingMap(fail=True)  # the cluster went away again: a warning, no crash, the next try later
    cache._maps[MAP_PRESENCE] = failing
    cache._on_state("CONNECTED")
    await asyncio.gather(*cache._background)
    assert "declaring the presence indexes failed: gone again" in caplog.text

    cache._client = None  # not started, or stopped: nothing to declare
    cache._maps[MAP_PRESENCE] = presence
    cache._on_state("CONNECTED")
    assert not cache._background


def test_the_member_configuration_declares_the_same_indexes() -> None:
    root = ET.parse(ROOT / "scripts" / "services" / "hazelcast" / "hazelcast.xml").getroot()
    ns = {"h": root.tag.split("}")[0].strip("{")} if root.tag.startswith("{") else {}
    prefix = "h:" if ns else ""
    maps = {m.get("name"): m for m in root.findall(f"{prefix}map", ns)}
    indexes = maps[MAP_PRESENCE].findall(f"{prefix}indexes/{prefix}index", ns)
    declared = [(i.get("type"), tuple(a.text for a in i.findall(f"{prefix}attributes/{prefix}attribute", ns)))
                for i in indexes]
    assert declared == [("HASH", a) for a in PRESENCE_INDEXES]


def test_the_partition_hash_in_c_is_the_clients_own_on_every_length_and_is_installed() -> None:
    """A key hashed differently would be sent to the wrong partition's owner: every call would still be
    answered (the member forwards), but the near cache, locks and put-if-absent races rely on one owner."""
    import random

    import hazelcast.serialization.data as data_mod
    from hazelcast.hash import murmur_hash3_x86_32 as clients
    from hazelcast.serialization.data import Data

    from storm.adapters.hazelcast_cache import partition_hash

    rng = random.Random(7)
    for length in [*range(0, 64), *(rng.randrange(64, 600) for _ in range(2000))]:
        data = bytearray(rng.randbytes(length))
        assert partition_hash(data) == clients(data), length
        assert partition_hash(bytes(data)) == clients(bytes(data)), length
    assert data_mod.murmur_hash3_x86_32 is partition_hash  # what Data.hash_code calls once the adapter is loaded
    key = bytearray(rng.randbytes(80))
    assert Data(key).hash_code() == clients(key)
