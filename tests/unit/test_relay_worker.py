"""The relay worker's failure policy (consumers/relay.py), without I/O: what it acknowledges, what it hands back."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from consumers.relay import RelayWorker
from storm.adapters.memory_broker import MemoryBroker
from storm.config import Config, ConfigError
from storm.errors import NotFound, Unavailable
from storm.ports.broker import Delivery, Record
from storm.ports.clock import SystemClock


class _Work:
    def __init__(self) -> None:
        self.acked: list[Delivery] = []
        self.nacked: list[tuple[Delivery, float]] = []

    async def ack(self, deliveries: Sequence[Delivery]) -> None:
        self.acked += deliveries

    async def nack(self, deliveries: Sequence[Delivery], delay: float) -> None:
        self.nacked += [(d, delay) for d in deliveries]


class _Broker:
    """Relays workspace ``ok``, is down for ``down``, and no longer knows ``gone``."""

    def __init__(self) -> None:
        self.relayed: list[list[Record]] = []

    async def relay(self, records: Sequence[Record]) -> None:
        ws = records[0].workspace
        assert all(r.workspace == ws for r in records)  # one call per workspace
        if ws == "down":
            raise Unavailable("broadcast topic unavailable")
        if ws == "gone":
            raise NotFound("workspace deleted")
        self.relayed.append(list(records))

    async def subscribe_work(self, name: str) -> Any:
        raise AssertionError("not used")


def _d(ws: str, ch: str, offset: int) -> Delivery:
    return Delivery(Record(ws, ch, offset, b"{}", 1.0), 1, None)


def test_the_relay_needs_a_broker_that_relays() -> None:
    with pytest.raises(ConfigError, match="STORM_BROADCAST=relay"):
        RelayWorker(MemoryBroker(SystemClock()), Config())


async def test_a_batch_is_relayed_per_workspace_in_order_and_only_the_failed_workspace_is_handed_back() -> None:
    broker = _Broker()
    worker = RelayWorker(broker, Config())  # type: ignore[arg-type,unused-ignore]
    work = _Work()
    worker._sub = work  # type: ignore[assignment,unused-ignore]
    batch = [_d("ok", "a", 1), _d("down", "b", 5), _d("ok", "a", 2), _d("gone", "c", 7), _d("ok", "d", 3)]
    handed_back = await worker.process(batch, 2.0)
    assert handed_back == 1
    assert [[(r.channel, r.offset) for r in call] for call in broker.relayed] == [[("a", 1), ("a", 2), ("d", 3)]]
    assert sorted((d.record.workspace, d.record.offset) for d in work.acked) == [
        ("gone", 7), ("ok", 1), ("ok", 2), ("ok", 3)]  # a deleted workspace's records are dropped, not retried
    assert [(d.record.workspace, delay) for d, delay in work.nacked] == [("down", 2.0)]
    assert worker.stats["relayed"] == 3 and worker.stats["dropped_deleted"] == 1 and worker.stats["handed_back"] == 1
