"""Broker port contract (storm/ports/broker.py), run against every adapter."""

from __future__ import annotations

import asyncio

import pytest

from storm.domain import PLANS
from storm.errors import OffsetTruncated
from storm.ports.broker import Record
from tests.contract.conftest import ACK_TIMEOUT_S


async def test_offsets_start_at_one_and_are_dense(broker, workspace, channel):
    await broker.ensure_workspace(workspace, PLANS["free"])
    offsets = [await broker.publish(workspace, channel, b'{"type":"m","n":%d}' % i) for i in range(5)]
    assert offsets == [1, 2, 3, 4, 5]
    assert await broker.head(workspace, channel) == 5


async def test_channels_and_workspaces_have_separate_logs(broker, workspace, channel):
    other_ws = workspace + "-b"
    await broker.publish(workspace, channel, b'{"a":1}')
    await broker.publish(workspace, channel, b'{"a":2}')
    assert await broker.publish(other_ws, channel, b'{"b":1}') == 1
    assert await broker.head(other_ws, channel) == 1
    assert [r.payload for r in await broker.read(other_ws, channel, 1, 10)] == [b'{"b":1}']


async def test_read_from_offset_in_order(broker, workspace, channel):
    for i in range(10):
        await broker.publish(workspace, channel, b'{"n":%d}' % i)
    recs = await broker.read(workspace, channel, 4, 3)
    assert [r.offset for r in recs] == [4, 5, 6]
    assert recs[0].payload == b'{"n":3}'
    assert await broker.read(workspace, channel, 11, 10) == []


async def test_retention_truncates_and_says_where_the_log_starts(broker, workspace, channel):
    for i in range(60):  # fixture retention: 50 entries
        await broker.publish(workspace, channel, b'{"n":%d}' % i)
    with pytest.raises(OffsetTruncated) as info:
        await broker.read(workspace, channel, 1, 10)
    assert info.value.earliest == 11
    assert [r.offset for r in await broker.read(workspace, channel, 11, 2)] == [11, 12]


async def test_broadcast_delivers_every_record_in_order_to_every_gateway(broker, workspace, channel):
    got_a: list[Record] = []
    got_b: list[Record] = []
    a = await broker.subscribe_broadcast(got_a.append)
    b = await broker.subscribe_broadcast(got_b.append)
    await a.add(workspace, channel)
    await b.add(workspace, channel)
    for i in range(20):
        await broker.publish(workspace, channel, b'{"n":%d}' % i)
    await asyncio.sleep(0.05)
    assert [r.offset for r in got_a] == list(range(1, 21))
    assert [r.offset for r in got_b] == list(range(1, 21))
    await a.remove(workspace, channel)
    await broker.publish(workspace, channel, b'{"n":99}')
    await asyncio.sleep(0.05)
    assert len(got_a) == 20 and len(got_b) == 21
    await a.close()
    await b.close()


async def test_broadcast_only_for_added_channels(broker, workspace, channel):
    got: list[Record] = []
    sub = await broker.subscribe_broadcast(got.append)
    await sub.add(workspace, channel)
    await broker.publish(workspace, channel + "x", b'{"n":1}')
    await broker.publish(workspace + "x", channel, b'{"n":1}')
    await asyncio.sleep(0.05)
    assert got == []
    await sub.close()


async def test_ephemeral_records_reach_subscribers_without_offset_and_are_not_stored(broker, workspace, channel):
    got: list[Record] = []
    sub = await broker.subscribe_broadcast(got.append)
    await sub.add(workspace, channel)
    await broker.publish_ephemeral(workspace, channel, b'{"type":"typing"}')
    await asyncio.sleep(0.05)
    assert [(r.offset, r.payload) for r in got] == [(0, b'{"type":"typing"}')]
    assert await broker.head(workspace, channel) == 0
    await sub.close()


async def test_work_subscription_shares_records_and_acks(broker, workspace, channel):
    sub = await broker.subscribe_work("persist-test")
    for i in range(5):
        await broker.publish(workspace, channel, b'{"n":%d}' % i)
    got = await sub.receive(10, 1.0)
    assert [d.record.offset for d in got] == [1, 2, 3, 4, 5]
    assert all(d.delivery_count == 1 for d in got)
    await sub.ack(got)
    assert await sub.receive(10, 0.2) == []
    await sub.close()


async def test_unacked_records_are_redelivered_after_the_ack_timeout(broker, workspace, channel):
    sub = await broker.subscribe_work("persist-test")
    await broker.publish(workspace, channel, b'{"n":1}')
    first = await sub.receive(10, 1.0)
    assert len(first) == 1
    again = await sub.receive(10, ACK_TIMEOUT_S * 4)
    assert [d.record.offset for d in again] == [1]
    assert again[0].delivery_count == 2
    await sub.ack(again)
    await sub.close()


async def test_nack_redelivers_after_delay_and_keeps_channel_order(broker, workspace, channel):
    sub = await broker.subscribe_work("persist-test")
    await broker.publish(workspace, channel, b'{"n":1}')
    first = await sub.receive(10, 1.0)
    await broker.publish(workspace, channel, b'{"n":2}')
    await sub.nack(first, 0.2)
    again = await sub.receive(10, 2.0)
    # offset 2 must not overtake the nacked offset 1
    assert [d.record.offset for d in again][:1] == [1]
    assert again[0].delivery_count == 2
    await sub.ack(again)
    rest = await sub.receive(10, 0.5)
    await sub.ack(rest)
    assert sorted(d.record.offset for d in again + rest) == [1, 2]
    await sub.close()


async def test_two_consumers_split_the_work_but_never_share_a_channel_concurrently(broker, workspace):
    c1 = await broker.subscribe_work("persist-test")
    c2 = await broker.subscribe_work("persist-test")
    channels = [f"00000000-0000-0000-0000-00000000000{i}" for i in range(4)]
    for ch in channels:
        for _ in range(3):
            await broker.publish(workspace, ch, b"{}")
    got1 = await c1.receive(6, 1.0)
    got2 = await c2.receive(100, 1.0)
    ch1 = {d.record.channel for d in got1}
    ch2 = {d.record.channel for d in got2}
    assert not ch1 & ch2
    assert len(got1) + len(got2) == 12
    await c1.ack(got1)
    await c2.ack(got2)
    await c1.close()
    await c2.close()


async def test_closing_a_consumer_hands_its_unacked_work_to_another(broker, workspace, channel):
    c1 = await broker.subscribe_work("persist-test")
    c2 = await broker.subscribe_work("persist-test")
    await broker.publish(workspace, channel, b"{}")
    assert len(await c1.receive(10, 1.0)) == 1
    await c1.close()
    got = await c2.receive(10, 2.0)
    assert [d.record.offset for d in got] == [1]
    await c2.ack(got)
    await c2.close()


async def test_dead_letter_acknowledges(broker, workspace, channel):
    sub = await broker.subscribe_work("persist-test")
    await broker.publish(workspace, channel, b"not json")
    got = await sub.receive(10, 1.0)
    await sub.dead_letter(got[0], "poison")
    assert await sub.receive(10, ACK_TIMEOUT_S * 2) == []
    await sub.close()


async def test_delete_workspace_removes_its_logs(broker, workspace, channel):
    await broker.ensure_workspace(workspace, PLANS["pro"])
    await broker.publish(workspace, channel, b"{}")
    await broker.delete_workspace(workspace)
    assert await broker.head(workspace, channel) == 0
