"""Broker port contract (storm/ports/broker.py), run against every adapter: the embedded MemoryBroker and
the PulsarBroker on a live Pulsar (``integration``: skipped locally without Pulsar, failing under CI=true).

Each test uses its own workspace slugs (``workspace`` and slugs starting with it); the Pulsar broker only
discovers those for its work subscriptions and the fixture deletes them afterwards.  Offsets are compared
as "strictly increasing" everywhere and as "dense, from 1" for the memory adapter only, as the port says.
At the end: Pulsar-only tests (workspace lifecycle and policies, reader bound, deduplication, Key_Shared
order, nack delay, dead letters).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import msgspec
import pytest

from storm.adapters.memory_broker import MemoryBroker
from storm.bootstrap import pulsar_settings
from storm.config import Config
from storm.domain import PLANS
from storm.errors import OffsetTruncated, Unavailable
from storm.ports.broker import ChannelPreparer, Delivery, Record
from storm.ports.clock import SystemClock
from tests.contract.conftest import ACK_TIMEOUT_S

MAX_REDELIVERIES = 3


def _pulsar_config(pulsar_urls: tuple[str, str], **overrides: Any) -> Config:
    service_url, admin_url = pulsar_urls
    values: dict[str, Any] = {
        "broker": "pulsar", "pulsar_url": service_url, "pulsar_admin_url": admin_url,
        "ack_timeout_s": ACK_TIMEOUT_S, "consumer_max_redeliveries": MAX_REDELIVERIES,
        "gateway_id": f"test-{uuid.uuid4().hex[:8]}",
    }
    values.update(overrides)
    return Config(**values)


async def _pulsar_broker(pulsar_urls: tuple[str, str], workspace: str, **overrides: Any) -> Any:
    from storm.adapters.pulsar_relay import pulsar_broker

    b = pulsar_broker(pulsar_settings(_pulsar_config(pulsar_urls, **overrides)), SystemClock(),
                      workspace_filter=lambda tenant: tenant.startswith(workspace),
                      discovery_period_s=0.5, pattern_discovery_s=1, read_timeout_s=3.0)
    await b.start()
    return b


async def _cleanup_pulsar(b: Any, workspace: str) -> None:
    try:
        for tenant in await b.workspaces():  # only this test's, thanks to the filter
            await b.delete_workspace(tenant)
    finally:
        await b.stop()


async def _relay_worker(pulsar_urls: tuple[str, str], b: Any) -> Any:
    """A relay worker (consumers/relay.py) on the test's broker: what ``STORM_BROADCAST=relay`` gateways hear."""
    from consumers.relay import RelayWorker

    worker = RelayWorker(b, _pulsar_config(pulsar_urls, broadcast="relay", drain_timeout_s=1.0))
    await worker.start()
    return worker


@pytest.fixture(params=["memory", pytest.param("pulsar", marks=pytest.mark.integration),
                        pytest.param("pulsar-relay", marks=pytest.mark.integration)])
async def broker(request: pytest.FixtureRequest, workspace: str) -> AsyncIterator[Any]:
    """``pulsar-relay``: gateways follow channels through one broadcast topic per workspace, filled by a relay
    worker running beside them (ADR 0013, "Amendment: the relay"); everything else is the Pulsar adapter."""
    if request.param == "memory":
        b: Any = MemoryBroker(SystemClock(), retention_messages=50, ack_timeout_s=ACK_TIMEOUT_S)
        await b.start()
        try:
            yield b
        finally:
            await b.stop()
        return
    urls = request.getfixturevalue("pulsar_urls")
    relay = request.param == "pulsar-relay"
    b = await _pulsar_broker(urls, workspace, broadcast="relay" if relay else "readers")
    worker = await _relay_worker(urls, b) if relay else None
    try:
        yield b
    finally:
        if worker is not None:
            await worker.stop()
        await _cleanup_pulsar(b, workspace)


def is_memory(broker: Any) -> bool:
    return isinstance(broker, MemoryBroker)


def settle_s(broker: Any) -> float:
    """How long to wait before concluding that nothing more arrives."""
    return 0.05 if is_memory(broker) else 0.5


async def ready(broker: Any, *workspaces: str, plan: str = "free") -> None:
    """Create the workspaces' broker side (the tenants service does this before any publish)."""
    for ws in workspaces:
        await broker.ensure_workspace(ws, PLANS[plan])


async def channels_exist(broker: Any, workspace: str, *channels: str) -> None:
    """Pulsar: create channel topics up front, so work consumers attach to them when they subscribe."""
    if isinstance(broker, ChannelPreparer):
        for ch in channels:
            await broker.ensure_channel(workspace, ch)


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def receive_n(sub: Any, n: int, timeout: float = 8.0) -> list[Delivery]:
    """Deliveries until ``n`` arrived or ``timeout`` passed (the port hands out *up to* max_records)."""
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        got += await sub.receive(n - len(got), remaining)
    return got


def increasing(offsets: Sequence[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(offsets)) and all(o > 0 for o in offsets)


# --- the contract ------------------------------------------------------------------------------------------


async def test_offsets_are_strictly_increasing_and_dense_in_memory(broker, workspace, channel):
    await ready(broker, workspace)
    offsets = [await broker.publish(workspace, channel, b'{"type":"m","n":%d}' % i) for i in range(5)]
    assert increasing(offsets)
    if is_memory(broker):
        assert offsets == [1, 2, 3, 4, 5]
    assert await broker.head(workspace, channel) == offsets[-1]


async def test_channels_and_workspaces_have_separate_logs(broker, workspace, channel):
    other_ws = workspace + "-b"
    await ready(broker, workspace, other_ws)
    await broker.publish(workspace, channel, b'{"a":1}')
    await broker.publish(workspace, channel, b'{"a":2}')
    first = await broker.publish(other_ws, channel, b'{"b":1}')
    if is_memory(broker):
        assert first == 1
    assert await broker.head(other_ws, channel) == first
    assert [r.payload for r in await broker.read(other_ws, channel, 1, 10)] == [b'{"b":1}']


async def test_read_from_offset_in_order(broker, workspace, channel):
    await ready(broker, workspace)
    offsets = [await broker.publish(workspace, channel, b'{"n":%d}' % i) for i in range(10)]
    recs = await broker.read(workspace, channel, offsets[3], 3)
    assert [r.offset for r in recs] == offsets[3:6]
    assert recs[0].payload == b'{"n":3}'
    assert all(r.workspace == workspace and r.channel == channel for r in recs)
    assert [r.offset for r in await broker.read(workspace, channel, 1, 100)] == offsets
    assert await broker.read(workspace, channel, offsets[-1] + 1, 10) == []


async def _truncate(broker: Any, workspace: str, channel: str) -> tuple[list[int], list[int]]:
    """Publish records and make retention drop the oldest; returns (all offsets, offsets still retained)."""
    if is_memory(broker):  # fixture retention: 50 entries
        offsets = [await broker.publish(workspace, channel, b'{"n":%d}' % i) for i in range(60)]
        return offsets, offsets[10:]
    import httpx

    topic = f"{broker.admin._base}/admin/v2/persistent/{workspace}/channels/{channel}"
    async with httpx.AsyncClient(timeout=10.0) as http:
        resp = await http.post(f"{broker.admin._base}/admin/v2/namespaces/{workspace}/channels/retention",
                               json={"retentionTimeInMinutes": 0, "retentionSizeInMB": 0})
        assert resp.is_success, resp.text
        # deduplication keeps a cursor that holds ledgers until its snapshot (every 1000 entries): off here
        resp = await http.post(f"{broker.admin._base}/admin/v2/namespaces/{workspace}/channels/deduplication",
                               json=False)
        assert resp.is_success, resp.text
        old = [await broker.publish(workspace, channel, b'{"n":%d}' % i) for i in range(10)]
        assert (await http.put(f"{topic}/unload")).is_success  # closes the ledger; the next one starts
        kept = [await broker.publish(workspace, channel, b'{"n":%d}' % i) for i in range(10, 15)]
        deadline = time.monotonic() + 15
        while await broker.earliest(workspace, channel) != kept[0]:  # trimming runs in the background
            assert time.monotonic() < deadline, "retention did not trim the closed ledger"
            await http.post(f"{topic}/trim")
            await asyncio.sleep(0.3)
    return old + kept, kept


async def test_retention_truncates_and_says_where_the_log_starts(broker, workspace, channel):
    await ready(broker, workspace)
    offsets, kept = await _truncate(broker, workspace, channel)
    with pytest.raises(OffsetTruncated) as info:
        await broker.read(workspace, channel, offsets[0], 10)
    assert info.value.earliest == kept[0]
    assert [r.offset for r in await broker.read(workspace, channel, kept[0], 2)] == kept[:2]


async def test_broadcast_delivers_every_record_in_order_to_every_gateway(broker, workspace, channel):
    await ready(broker, workspace)
    got_a: list[Record] = []
    got_b: list[Record] = []
    a = await broker.subscribe_broadcast(got_a.append)
    b = await broker.subscribe_broadcast(got_b.append)
    await a.add(workspace, channel)
    await b.add(workspace, channel)
    offsets = [await broker.publish(workspace, channel, b'{"n":%d}' % i) for i in range(20)]
    await until(lambda: len(got_a) >= 20 and len(got_b) >= 20)
    await asyncio.sleep(settle_s(broker))
    assert [r.offset for r in got_a] == offsets
    assert [r.offset for r in got_b] == offsets
    assert got_a[5].payload == b'{"n":5}'
    await a.remove(workspace, channel)
    last = await broker.publish(workspace, channel, b'{"n":99}')
    await until(lambda: len(got_b) == 21)
    await asyncio.sleep(settle_s(broker))
    assert len(got_a) == 20 and got_b[-1].offset == last
    await a.close()
    await b.close()


async def test_broadcast_only_for_added_channels(broker, workspace, channel):
    other_ws = workspace + "x"
    await ready(broker, workspace, other_ws)
    got: list[Record] = []
    sub = await broker.subscribe_broadcast(got.append)
    await sub.add(workspace, channel)
    await broker.publish(workspace, channel + "x", b'{"n":1}')  # another channel of the workspace
    await broker.publish(other_ws, channel, b'{"n":1}')  # the same channel id in another workspace
    added = await broker.publish(workspace, channel, b'{"n":2}')  # the added channel: this one arrives
    await until(lambda: len(got) >= 1)
    await asyncio.sleep(settle_s(broker))
    assert [(r.workspace, r.channel, r.offset) for r in got] == [(workspace, channel, added)]
    await sub.close()


async def test_ephemeral_records_reach_subscribers_without_offset_and_are_not_stored(broker, workspace, channel):
    await ready(broker, workspace)
    got: list[Record] = []
    sub = await broker.subscribe_broadcast(got.append)
    await sub.add(workspace, channel)
    await broker.publish_ephemeral(workspace, channel, b'{"type":"typing"}')
    await until(lambda: len(got) >= 1)
    await asyncio.sleep(settle_s(broker))
    assert [(r.offset, r.payload) for r in got] == [(0, b'{"type":"typing"}')]
    assert await broker.head(workspace, channel) == 0
    await sub.close()


async def test_ephemeral_records_arrive_only_for_followed_channels_of_a_workspace(broker: Any, workspace: str,
                                                                              channel: str) -> None:
    """Pulsar carries a workspace's ephemeral records on one feed (ADR 0013): a gateway following one channel
    of the workspace must not get another channel's typing, and two followed channels share the feed."""
    await ready(broker, workspace)
    other, third = channel + "o", channel + "t"
    if not is_memory(broker):
        await channels_exist(broker, workspace, other, third)
    got: list[Record] = []
    sub = await broker.subscribe_broadcast(got.append)
    await sub.add(workspace, channel)
    await sub.add(workspace, other)
    await broker.publish_ephemeral(workspace, third, b'{"type":"typing","n":0}')  # not followed
    await broker.publish_ephemeral(workspace, channel, b'{"type":"typing","n":1}')
    await broker.publish_ephemeral(workspace, other, b'{"type":"typing","n":2}')
    await until(lambda: len(got) >= 2)
    await asyncio.sleep(settle_s(broker))
    assert sorted((r.channel, r.payload) for r in got) == [(channel, b'{"type":"typing","n":1}'),
                                                           (other, b'{"type":"typing","n":2}')]
    await sub.remove(workspace, channel)
    await broker.publish_ephemeral(workspace, channel, b'{"type":"typing","n":3}')  # no longer followed
    await broker.publish_ephemeral(workspace, other, b'{"type":"typing","n":4}')
    await until(lambda: len(got) >= 3)
    await asyncio.sleep(settle_s(broker))
    assert [r.payload for r in got[2:]] == [b'{"type":"typing","n":4}']
    await sub.close()


async def test_work_subscription_shares_records_and_acks(broker, workspace, channel):
    await ready(broker, workspace)
    sub = await broker.subscribe_work("persist-test")
    # no channels_exist(): the consumer must discover the channel's topic created by the first publish
    offsets = [await broker.publish(workspace, channel, b'{"n":%d}' % i) for i in range(5)]
    got = await receive_n(sub, 5)
    assert [d.record.offset for d in got] == offsets
    assert all(d.delivery_count == 1 for d in got)
    await sub.ack(got)
    assert await sub.receive(10, ACK_TIMEOUT_S * 2) == []
    await sub.close()


async def test_unacked_records_are_redelivered_after_the_ack_timeout(broker, workspace, channel):
    await ready(broker, workspace)
    await channels_exist(broker, workspace, channel)
    sub = await broker.subscribe_work("persist-test")
    offset = await broker.publish(workspace, channel, b'{"n":1}')
    first = await receive_n(sub, 1)
    assert len(first) == 1
    again = await sub.receive(10, ACK_TIMEOUT_S * 6)
    assert [d.record.offset for d in again] == [offset]
    assert again[0].delivery_count == 2
    await sub.ack(again)
    await sub.close()


async def test_nack_redelivers_after_delay_and_keeps_channel_order(broker, workspace, channel):
    await ready(broker, workspace)
    await channels_exist(broker, workspace, channel)
    sub = await broker.subscribe_work("persist-test")
    o1 = await broker.publish(workspace, channel, b'{"n":1}')
    first = await receive_n(sub, 1)
    o2 = await broker.publish(workspace, channel, b'{"n":2}')
    await asyncio.sleep(settle_s(broker))  # let offset 2 reach the consumer before the nack
    await sub.nack(first, 0.2)
    again = await sub.receive(10, 3.0)
    # offset 2 must not overtake the nacked offset 1
    assert [d.record.offset for d in again][:1] == [o1]
    assert again[0].delivery_count == 2
    await sub.ack(again)
    rest = await sub.receive(10, 0.5) if len(again) < 2 else []
    await sub.ack(rest)
    assert sorted(d.record.offset for d in again + rest) == [o1, o2]
    await sub.close()


async def test_two_consumers_split_the_work_but_never_share_a_channel_concurrently(broker, workspace):
    await ready(broker, workspace)
    channels = [str(uuid.uuid4()) for _ in range(16)]  # Pulsar assigns keys by hash: all 16 on one side is ~2^-15
    await channels_exist(broker, workspace, *channels)
    c1 = await broker.subscribe_work("persist-test")
    c2 = await broker.subscribe_work("persist-test")
    for ch in channels:
        for _ in range(2):
            await broker.publish(workspace, ch, b"{}")
    got1 = await c1.receive(6, 3.0)
    got2: list[Delivery] = []
    deadline = time.monotonic() + 8.0
    while len(got1) + len(got2) < 32 and time.monotonic() < deadline:  # nothing is acked meanwhile
        got2 += await c2.receive(100, 0.2)
        got1 += await c1.receive(100, 0.05) if not is_memory(broker) else []
    ch1 = {d.record.channel for d in got1}
    ch2 = {d.record.channel for d in got2}
    assert not ch1 & ch2
    assert ch1 and ch2  # the work is shared
    assert len(got1) + len(got2) == 32
    await c1.ack(got1)
    await c2.ack(got2)
    await c1.close()
    await c2.close()


async def test_closing_a_consumer_hands_its_unacked_work_to_another(broker, workspace, channel):
    await ready(broker, workspace)
    await channels_exist(broker, workspace, channel)
    c1 = await broker.subscribe_work("persist-test")
    c2 = await broker.subscribe_work("persist-test")
    offset = await broker.publish(workspace, channel, b"{}")
    holder = other = None
    deadline = time.monotonic() + 5.0
    while holder is None and time.monotonic() < deadline:  # Pulsar picks the consumer by the channel's key
        for a, b in ((c1, c2), (c2, c1)):
            if await a.receive(10, 0.1):
                holder, other = a, b
                break
    assert holder is not None and other is not None
    await holder.close()
    got = await receive_n(other, 1, 5.0)
    assert [d.record.offset for d in got] == [offset]
    await other.ack(got)
    await other.close()


async def test_dead_letter_acknowledges(broker, workspace, channel):
    await ready(broker, workspace)
    await channels_exist(broker, workspace, channel)
    sub = await broker.subscribe_work("persist-test")
    await broker.publish(workspace, channel, b"not json")
    got = await receive_n(sub, 1)
    await sub.dead_letter(got[0], "poison")
    assert await sub.receive(10, ACK_TIMEOUT_S * 3) == []
    await sub.close()


async def test_delete_workspace_removes_its_logs(broker, workspace, channel):
    await ready(broker, workspace, plan="pro")
    await broker.publish(workspace, channel, b"{}")
    await broker.delete_workspace(workspace)
    await broker.delete_workspace(workspace)  # idempotent
    assert await broker.head(workspace, channel) == 0


# --- Pulsar only ---------------------------------------------------------------------------------------------


@pytest.fixture
async def pulsar_factory(pulsar_urls, workspace) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    made: list[Any] = []

    async def make(**overrides: Any) -> Any:
        b = await _pulsar_broker(pulsar_urls, workspace, **overrides)
        made.append(b)
        return b

    try:
        yield make
    finally:
        for b in made:
            await _cleanup_pulsar(b, workspace)


@pytest.fixture
async def pulsar(pulsar_factory) -> Any:
    return await pulsar_factory()


async def _get(broker: Any, path: str) -> Any:
    import httpx

    async with httpx.AsyncClient(base_url=broker.admin._base, timeout=10.0) as http:
        return await http.get(path)


@pytest.mark.integration
async def test_pulsar_workspace_is_a_tenant_with_plan_policies_and_delete_removes_it(pulsar, workspace, channel):
    free, pro = PLANS["free"], PLANS["pro"]
    await pulsar.ensure_workspace(workspace, free)
    tenant = (await _get(pulsar, f"/admin/v2/tenants/{workspace}")).json()
    assert tenant["allowedClusters"] == [pulsar._settings.cluster]
    namespaces = (await _get(pulsar, f"/admin/v2/namespaces/{workspace}")).json()
    assert sorted(namespaces) == [f"{workspace}/channels", f"{workspace}/ephemeral"]
    pol = (await _get(pulsar, f"/admin/v2/namespaces/{workspace}/channels")).json()
    assert pol["retention_policies"]["retentionTimeInMinutes"] == free.retention_days * 1440
    assert pol["deduplicationEnabled"] is True
    assert pol["message_ttl_in_seconds"] == free.retention_days * 86400
    assert pol["subscription_expiration_time_minutes"] == free.retention_days * 1440
    assert pol["backlog_quota_map"]["destination_storage"]["policy"] == "producer_exception"
    rate = (await _get(pulsar, f"/admin/v2/namespaces/{workspace}/channels/publishRate")).json()
    assert rate["publishThrottlingRateInMsg"] == free.messages_per_second

    await pulsar.ensure_workspace(workspace, pro)  # again: updates the policies
    pol = (await _get(pulsar, f"/admin/v2/namespaces/{workspace}/channels")).json()
    assert pol["retention_policies"]["retentionTimeInMinutes"] == pro.retention_days * 1440
    rate = (await _get(pulsar, f"/admin/v2/namespaces/{workspace}/channels/publishRate")).json()
    assert rate["publishThrottlingRateInMsg"] == pro.messages_per_second

    await pulsar.publish(workspace, channel, b"{}")
    await pulsar.publish_ephemeral(workspace, channel, b"{}")
    await pulsar.delete_workspace(workspace)
    assert (await _get(pulsar, f"/admin/v2/tenants/{workspace}")).status_code == 404
    assert workspace not in await pulsar.admin.tenants()
    await pulsar.delete_workspace(workspace)  # idempotent


@pytest.mark.integration
async def test_pulsar_ensure_workspace_failing_midway_removes_what_it_created(pulsar, workspace):
    admin = pulsar.admin

    async def broken_ephemeral_policies(tenant: str, plan: Any) -> None:
        # a real failing admin call: this namespace does not exist
        await admin._call("POST", f"/admin/v2/namespaces/{tenant}/missing/publishRate", json={})

    admin.set_ephemeral_policies = broken_ephemeral_policies
    with pytest.raises(Unavailable) as info:
        await pulsar.ensure_workspace(workspace, PLANS["free"])
    assert info.value.retriable and "rolled back" in info.value.message
    assert (await _get(pulsar, f"/admin/v2/tenants/{workspace}")).status_code == 404
    del admin.set_ephemeral_policies  # back to the real method: a retry succeeds
    await pulsar.ensure_workspace(workspace, PLANS["free"])
    assert workspace in await pulsar.admin.tenants()


@pytest.mark.integration
async def test_pulsar_reader_bound_refuses_one_channel_too_many(pulsar_factory, workspace):
    from storm.adapters.pulsar_broker import ChannelReadersExhausted

    b = await pulsar_factory(max_channel_readers=2)
    await b.ensure_workspace(workspace, PLANS["free"])
    sub = await b.subscribe_broadcast(lambda r: None)
    chans = [str(uuid.uuid4()) for _ in range(3)]
    await sub.add(workspace, chans[0])
    await sub.add(workspace, chans[1])
    await sub.add(workspace, chans[1])  # already followed: no new reader
    with pytest.raises(ChannelReadersExhausted) as info:
        await sub.add(workspace, chans[2])
    assert info.value.code == "unavailable" and "STORM_MAX_CHANNEL_READERS" in info.value.message
    await sub.remove(workspace, chans[0])
    await sub.add(workspace, chans[2])
    await sub.close()


@pytest.mark.integration
async def test_pulsar_follows_a_channel_with_one_reader_and_a_workspace_with_one_feed(pulsar_factory: Any,
                                                                                     workspace: str) -> None:
    """ADR 0013: N channels of one workspace cost N log readers and one ephemeral feed reader, which the
    last removed channel closes (a reader per channel's ephemeral topic doubled the readers)."""
    b = await pulsar_factory()
    await b.ensure_workspace(workspace, PLANS["free"])
    sub = await b.subscribe_broadcast(lambda r: None)
    chans = [str(uuid.uuid4()) for _ in range(3)]
    await asyncio.gather(*(sub.add(workspace, c) for c in chans))
    assert (len(sub), sub.feeds) == (3, 1)
    await sub.remove(workspace, chans[0])
    await sub.remove(workspace, chans[1])
    assert (len(sub), sub.feeds) == (1, 1)
    await sub.remove(workspace, chans[2])
    assert (len(sub), sub.feeds) == (0, 0)
    await sub.close()


@pytest.mark.integration
async def test_pulsar_deduplication_drops_a_resent_message(pulsar, workspace, channel):
    import pulsar as pulsar_lib
    import pulsar.asyncio as pulsar_async

    from storm.adapters.pulsar_names import channel_topic

    await pulsar.ensure_workspace(workspace, PLANS["free"])
    first = await pulsar.publish(workspace, channel, b'{"n":1}')
    name = pulsar._producers._open[channel_topic(workspace, channel)].producer_name()
    assert name.startswith(f"{pulsar.gateway_id}-{channel}-")  # a name per creation attempt
    await pulsar._producers.close_all()
    # the same producer (name) resends its last message, as the client does after a reconnect
    client = pulsar_async.Client(pulsar._settings.service_url)
    try:
        producer = await client.create_producer(channel_topic(workspace, channel), producer_name=name,
                                                batching_enabled=False)
        last = producer.last_sequence_id()
        assert last >= 0
        receipt: pulsar_lib.MessageId = await producer.send(b'{"n":1}', sequence_id=last)
        assert receipt.ledger_id() < 0  # the broker acknowledged it as a duplicate
        await producer.close()
    finally:
        await client.close()
    assert [r.offset for r in await pulsar.read(workspace, channel, 1, 10)] == [first]
    second = await pulsar.publish(workspace, channel, b'{"n":2}')  # a new producer, a new name: not a duplicate
    assert [r.offset for r in await pulsar.read(workspace, channel, 1, 10)] == [first, second]


@pytest.mark.integration
async def test_pulsar_key_shared_keeps_channel_order_across_two_consumers(pulsar, workspace):
    """Each channel goes to one consumer, in order, and the channels are spread over both consumers.
    16 channels (the key is the channel): all of them hashing to one consumer has odds of about 2**-15."""
    await pulsar.ensure_workspace(workspace, PLANS["free"])
    channels = [str(uuid.uuid4()) for _ in range(16)]
    await channels_exist(pulsar, workspace, *channels)
    c1 = await pulsar.subscribe_work("persist-order")
    c2 = await pulsar.subscribe_work("persist-order")
    published: dict[str, list[int]] = {ch: [] for ch in channels}
    for i in range(8):
        for ch in channels:
            published[ch].append(await pulsar.publish(workspace, ch, b'{"n":%d}' % i))
    total = sum(len(v) for v in published.values())
    seen: dict[str, list[tuple[int, int]]] = {ch: [] for ch in channels}  # channel -> (consumer, offset)
    deadline = time.monotonic() + 15
    while sum(len(v) for v in seen.values()) < total and time.monotonic() < deadline:
        for n, c in enumerate((c1, c2)):
            batch = await c.receive(7, 0.1)
            for d in batch:
                seen[d.record.channel].append((n, d.record.offset))
            await c.ack(batch)
    for ch in channels:
        assert [o for _, o in seen[ch]] == published[ch]
        assert len({n for n, _ in seen[ch]}) == 1  # one consumer per channel
    assert {n for got in seen.values() for n, _ in got} == {0, 1}, "one consumer got every channel"
    await c1.close()
    await c2.close()


@pytest.mark.integration
async def test_pulsar_nack_redelivers_after_the_requested_delay(pulsar, workspace, channel):
    await pulsar.ensure_workspace(workspace, PLANS["free"])
    await channels_exist(pulsar, workspace, channel)
    sub = await pulsar.subscribe_work("persist-nack")
    offset = await pulsar.publish(workspace, channel, b"{}")
    first = await receive_n(sub, 1)
    t0 = time.monotonic()
    await sub.nack(first, 1.0)
    again = await receive_n(sub, 1, 5.0)
    elapsed = time.monotonic() - t0
    assert [d.record.offset for d in again] == [offset] and again[0].delivery_count == 2
    assert 0.9 <= elapsed < 3.0
    await sub.ack(again)
    await sub.close()


async def _dead_letters(b: Any, workspace: str, name: str, n: int) -> list[Any]:
    import pulsar as pulsar_lib

    from storm.adapters.pulsar_names import dead_letter_topic

    reader = await b._client.create_reader(dead_letter_topic(workspace, name), pulsar_lib.MessageId.earliest)
    out = []
    try:
        while len(out) < n:
            out.append(await asyncio.wait_for(reader.read_next(), 10.0))
    finally:
        await reader.close()
    return out


@pytest.mark.integration
async def test_pulsar_dead_letters_only_what_the_worker_dead_letters(pulsar, workspace, channel):
    await pulsar.ensure_workspace(workspace, PLANS["free"])
    await channels_exist(pulsar, workspace, channel)
    sub = await pulsar.subscribe_work("persist-dlq")
    poison = await pulsar.publish(workspace, channel, b"not json")
    got = await receive_n(sub, 1)
    await sub.dead_letter(got[0], "undecodable")
    letters = await _dead_letters(pulsar, workspace, "persist-dlq", 1)
    assert letters[0].data() == b"not json"
    assert letters[0].properties()["reason"] == "undecodable"
    assert letters[0].properties()["offset"] == str(poison)
    await sub.close()


@pytest.mark.integration
async def test_pulsar_a_record_handed_back_past_max_redeliveries_still_comes_back_and_its_channel_moves_on(
        pulsar, workspace, channel):
    """A worker whose store is down hands the same records back again and again (chaos postgres-restart).
    The client-side dead-letter policy the consumers had moved such a record to the dead-letter topic after
    MAX_REDELIVERIES without handing it out again: never stored, and the later records of its channel, held
    until it came back, were never handed out either."""
    await pulsar.ensure_workspace(workspace, PLANS["free"])
    await channels_exist(pulsar, workspace, channel)
    sub = await pulsar.subscribe_work("persist-outage")
    failing = await pulsar.publish(workspace, channel, b'{"n":1}')
    later = await pulsar.publish(workspace, channel, b'{"n":2}')
    counts = []
    for _ in range(MAX_REDELIVERIES + 3):  # the store is down: hand the first record back every time
        got = await receive_n(sub, 1, 10.0)
        assert [d.record.offset for d in got] == [failing]  # never the later one first
        counts.append(got[0].delivery_count)
        await sub.nack(got, 0.0)
    assert counts == list(range(1, MAX_REDELIVERIES + 4))
    got = await receive_n(sub, 1, 10.0)  # the store is back
    assert [d.record.offset for d in got] == [failing]
    await sub.ack(got)
    assert [d.record.offset for d in await receive_n(sub, 1, 10.0)] == [later]
    await sub.close()


async def test_pulsar_lifecycle_connects_nothing_before_start_and_refuses_a_second_start():
    from storm.adapters.pulsar_broker import PulsarBroker

    # nothing listens on port 1: construction and start must not connect, stop must be idempotent
    b = PulsarBroker(pulsar_settings(Config(broker="pulsar", pulsar_url="pulsar://127.0.0.1:1",
                                            pulsar_admin_url="http://127.0.0.1:1")), SystemClock())
    with pytest.raises(Unavailable):
        await b.publish("ws-a", str(uuid.uuid4()), b"{}")
    await b.start()
    with pytest.raises(RuntimeError):
        await b.start()
    await b.stop()
    await b.stop()
    with pytest.raises(Unavailable):
        await b.head("ws-a", str(uuid.uuid4()))


@pytest.mark.integration
async def test_pulsar_refuses_unknown_workspaces_and_bad_channel_ids(pulsar, workspace, channel):
    from storm.errors import BadRequest, NotFound

    with pytest.raises(NotFound) as info:  # never ensured: no tenant
        await pulsar.publish(workspace, channel, b"{}")
    assert not info.value.retriable
    await pulsar.ensure_workspace(workspace, PLANS["free"])
    with pytest.raises(BadRequest) as bad:
        await pulsar.publish(workspace, "not/a/channel", b"{}")
    assert bad.value.field == "channel"


@pytest.mark.integration
async def test_pulsar_work_subscription_picks_up_a_workspace_created_after_it(pulsar, workspace, channel):
    sub = await pulsar.subscribe_work("persist-late")
    late = workspace + "-late"
    await pulsar.ensure_workspace(late, PLANS["free"])  # in-process: the subscription attaches at once
    offset = await pulsar.publish(late, channel, b"{}")
    got = await receive_n(sub, 1, 8.0)
    assert [(d.record.workspace, d.record.offset) for d in got] == [(late, offset)]
    await sub.ack(got)
    await sub.close()


def test_pulsar_offsets_pack_positions_in_53_bits_and_refuse_what_does_not_fit():
    from storm.adapters.pulsar_names import OffsetOverflow, decode_offset, encode_offset

    assert encode_offset(11, 0) < encode_offset(11, 1) < encode_offset(12, 0)  # increasing across ledgers
    assert decode_offset(encode_offset(123456, 54321)) == (123456, 54321)
    assert encode_offset(2**33 - 1, 2**20 - 1) == 2**53 - 1  # the largest is exact in a JavaScript number
    with pytest.raises(OffsetOverflow, match="managedLedgerMaxEntriesPerLedger"):
        encode_offset(5, 2**20)
    with pytest.raises(OffsetOverflow):
        encode_offset(2**33, 0)


def test_pulsar_backlog_sums_the_subscription_over_every_topic():
    """The admin API's broker-stats/topics document: namespace -> bundle -> domain -> topic."""
    from storm.adapters.pulsar_admin import sum_backlog

    def topic(**subs: int) -> dict[str, Any]:
        return {"subscriptions": {name: {"msgBacklog": n} for name, n in subs.items()}}

    stats = {
        "ws-a/channels": {"0x0_0x8": {"persistent": {"persistent://ws-a/channels/c1": topic(persistence=3, other=9),
                                                      "persistent://ws-a/channels/c2": topic(persistence=4)}}},
        "ws-b/channels": {"0x8_0xf": {"persistent": {"persistent://ws-b/channels/c3": topic(other=5),
                                                      "persistent://ws-b/channels/c4": {}}}},
    }
    assert sum_backlog(json.dumps(stats).encode(), "persistence") == 7
    assert sum_backlog(json.dumps(stats).encode(), "other") == 14
    assert sum_backlog(b"{}", "persistence") == 0
    # with every other field of a topic's stats, as the admin API answers it (skipped unread)
    stats["ws-a/channels"]["0x0_0x8"]["persistent"]["persistent://ws-a/channels/c1"].update(
        {"msgRateIn": 1.5, "publishers": [{"producerName": "g1", "msgRateIn": 1.5}], "storageSize": 10})
    raw = json.dumps(stats).encode()
    assert sum_backlog(raw, "persistence") == 7 and sum_backlog(raw, "other") == 14
    assert sum_backlog(b"{}", "persistence") == 0
    with pytest.raises(msgspec.DecodeError):
        sum_backlog(b'{"ws/ns": []}', "persistence")
