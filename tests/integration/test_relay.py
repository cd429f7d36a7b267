"""The relay (``STORM_BROADCAST=relay``, docs/adr/0013-following-channels.md, "Amendment: the relay"): a relay
that dies between writing a batch to the workspace's broadcast topic and acknowledging it sends that batch
again from another relay; a gateway's subscription delivers each record once, in offset order.

The first relay here writes every batch and then hangs before its acknowledgement (what a relay killed
between the two does to the subscription: nothing acked); it is stopped, its records go to a second relay,
which writes them again.  The broadcast topic then really holds duplicates (the subscription counts what it
dropped), and the gateway sees none of them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from consumers.relay import RelayWorker
from storm.adapters.pulsar_broker import PulsarBroker
from storm.adapters.pulsar_relay import pulsar_broker
from storm.bootstrap import pulsar_settings
from storm.config import Config
from storm.domain import PLANS
from storm.ports.broker import Record
from storm.ports.clock import SystemClock

pytestmark = pytest.mark.integration


def _config(pulsar_urls: tuple[str, str]) -> Config:
    return Config(broker="pulsar", pulsar_url=pulsar_urls[0], pulsar_admin_url=pulsar_urls[1], broadcast="relay",
                  ack_timeout_s=30.0, drain_timeout_s=0.5, gateway_id=f"test-{uuid.uuid4().hex[:8]}")


@pytest.fixture
async def broker(pulsar_urls: tuple[str, str]) -> AsyncIterator[tuple[PulsarBroker, str]]:
    workspace = f"t-{uuid.uuid4().hex[:12]}"
    b = pulsar_broker(pulsar_settings(_config(pulsar_urls)), SystemClock(),
                      workspace_filter=lambda tenant: tenant == workspace, discovery_period_s=0.5,
                      pattern_discovery_s=1)
    await b.start()
    try:
        await b.ensure_workspace(workspace, PLANS["pro"])
        yield b, workspace
    finally:
        try:
            await b.delete_workspace(workspace)
        finally:
            await b.stop()


class _SendsThenHangs:
    """A broker whose relay writes a batch and then never returns: the worker never acknowledges it."""

    def __init__(self, broker: PulsarBroker) -> None:
        self._broker = broker
        self.sent: list[Record] = []

    async def relay(self, records: Sequence[Record]) -> None:
        await self._broker.relay(records)
        self.sent += records
        await asyncio.Event().wait()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._broker, name)


async def _until(cond: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_a_relay_dying_before_its_ack_duplicates_records_on_the_topic_and_the_gateway_drops_them(
        broker: tuple[PulsarBroker, str], pulsar_urls: tuple[str, str]) -> None:
    b, workspace = broker
    channels = [uuid.uuid4().hex for _ in range(3)]
    for ch in channels:
        await b.ensure_channel(workspace, ch)
    got: list[Record] = []
    sub: Any = await b.subscribe_broadcast(got.append)
    for ch in channels:
        await sub.add(workspace, ch)
    cfg = _config(pulsar_urls)
    hanging = _SendsThenHangs(b)
    first = RelayWorker(hanging, cfg)  # type: ignore[arg-type,unused-ignore]  # a proxy of the broker
    await first.start()
    published = {ch: [await b.publish(workspace, ch, b'{"n":%d}' % i) for i in range(10)] for ch in channels}
    await _until(lambda: len(got) >= 1, 20.0)  # the hanging relay wrote its first batch: gateways heard it
    await first.stop()  # gives up on the batch in flight: nothing of it was acknowledged
    assert hanging.sent, "the first relay wrote nothing"
    second = RelayWorker(b, cfg)
    await second.start()
    try:
        await _until(lambda: len(got) >= 30, 30.0)
        await _until(lambda: sub.dropped >= len(hanging.sent), 10.0)  # its copies of the first relay's records
        await asyncio.sleep(1.0)  # anything late would be a duplicate
    finally:
        await second.stop()
    by_channel = {ch: [r.offset for r in got if r.channel == ch] for ch in channels}
    assert by_channel == published  # each record once, in offset order
    assert sub.dropped >= len(hanging.sent) > 0
    await sub.close()


async def test_a_channel_added_while_the_relay_is_behind_gets_every_record_committed_after_add(
        broker: tuple[PulsarBroker, str], pulsar_urls: tuple[str, str]) -> None:
    """``add`` racing the relay: records committed before ``add`` and relayed after it are not delivered
    (the channel's head, read by ``add``, is the floor); every record committed after it is."""
    b, workspace = broker
    ch = uuid.uuid4().hex
    await b.ensure_channel(workspace, ch)
    got: list[Record] = []
    sub: Any = await b.subscribe_broadcast(got.append)
    before = [await b.publish(workspace, ch, b'{"n":%d}' % i) for i in range(5)]  # no relay yet: not relayed
    await sub.add(workspace, ch)
    after = [await b.publish(workspace, ch, b'{"n":%d}' % i) for i in range(5, 10)]
    relay = RelayWorker(b, _config(pulsar_urls))
    await relay.start()  # relays `before` (late, after add) and `after`
    try:
        await _until(lambda: len(got) >= len(after), 20.0)
        await _until(lambda: sub.dropped >= len(before), 10.0)
        await asyncio.sleep(0.5)
    finally:
        await relay.stop()
    assert [r.offset for r in got] == after
    assert got[0].payload == b'{"n":5}'
    await sub.close()


def test_bench_follow_with_the_relay_reports_the_relays_cost_and_delivers_in_order(
        pulsar_urls: tuple[str, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`storm bench follow --broadcast relay` (shape and exactness, not speed: docs/benchmarks.md)."""
    import json

    from storm_cli import main as cli

    monkeypatch.setenv("STORM_PULSAR_URL", pulsar_urls[0])
    monkeypatch.setenv("STORM_PULSAR_ADMIN_URL", pulsar_urls[1])
    code = cli.main(["bench", "follow", "--channels", "30", "--publish-channels", "5", "--messages", "50",
                     "--rate", "200", "--idle-s", "0.5", "--timeout", "30", "--broadcast", "relay", "--json"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0, result
    assert (result["broadcast"], result["followed"], result["published"], result["delivered"]) == ("relay", 30, 50, 50)
    assert (result["lost"], result["duplicates"], result["inversions"]) == (0, 0, 0)
    assert result["relayed"] == 50 and result["relay_cpu_us_per_msg"] > 0
    assert "error" not in result and "cleanup_error" not in result
