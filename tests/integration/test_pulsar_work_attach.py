"""Attaching a work subscription to a workspace with many channel topics, on the real Pulsar
(storm/adapters/pulsar_work.py, docs/consumers.md "Attaching to a workspace").

storm day (100 000 users, docs/storm-day.md) had hundreds of channel topics per large workspace; one pattern
consumer subscribed to all of them at once, and on the slow broker that all-or-nothing subscribe timed out
every time, so the consumers never attached.  The work subscription now subscribes in chunks of at most
``attach_chunk`` topics, keeps the chunks that attached and retries only the rest.  Here: 300 topics
attach, every record published before and after the attach is delivered exactly once in per-channel order,
and chunks that fail (a timeout injected on their first attempts) are retried until everything is attached.

Measure the attach of a bigger workspace on your own Pulsar (prints one JSON line; the optional second
argument throttles the consumer's link to Pulsar to that many KB/s through toxiproxy, a slow broker):

    env $(scripts/services.sh env all) .venv/bin/python -m tests.integration.test_pulsar_work_attach 1000 [4]
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from storm.adapters.pulsar_broker import PulsarBroker
from storm.bootstrap import pulsar_settings
from storm.config import Config
from storm.domain import PLANS
from storm.ports.broker import Delivery
from storm.ports.clock import SystemClock

pytestmark = pytest.mark.integration

TOPICS = 300


def _broker(pulsar_urls: tuple[str, str], workspace: str, **settings: Any) -> PulsarBroker:
    config = Config(broker="pulsar", pulsar_url=pulsar_urls[0], pulsar_admin_url=pulsar_urls[1], ack_timeout_s=30.0,
                    gateway_id=f"test-{uuid.uuid4().hex[:8]}", **settings)
    return PulsarBroker(pulsar_settings(config), SystemClock(), workspace_filter=lambda tenant: tenant == workspace,
                        discovery_period_s=0.5, pattern_discovery_s=1, max_producers=2048)


async def _gather_limited(coros: list[Any], limit: int = 32) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(coro: Any) -> Any:
        async with gate:
            return await coro

    return await asyncio.gather(*(one(c) for c in coros))


async def _publish_one_each(b: PulsarBroker, workspace: str, channels: list[str], tag: str) -> dict[str, int]:
    offsets = await _gather_limited([b.publish(workspace, ch, tag.encode()) for ch in channels])
    return dict(zip(channels, offsets, strict=True))


async def _receive_all(sub: Any, expected: int, timeout: float) -> list[Delivery]:
    got: list[Delivery] = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        batch = await sub.receive(500, 0.5)
        got += batch
        await sub.ack(batch)
    return got


@pytest.fixture
async def many_topics(pulsar_urls: tuple[str, str]) -> AsyncIterator[tuple[PulsarBroker, str, list[str]]]:
    """A workspace with ``TOPICS`` channel topics, each holding one record published before any attach."""
    workspace = f"t-{uuid.uuid4().hex[:12]}"
    b = _broker(pulsar_urls, workspace, work_attach_chunk=50)
    await b.start()
    try:
        await b.ensure_workspace(workspace, PLANS["pro"])
        channels = [uuid.uuid4().hex for _ in range(TOPICS)]
        await _gather_limited([b.ensure_channel(workspace, ch) for ch in channels])
        yield b, workspace, channels
    finally:
        try:
            await b.delete_workspace(workspace)
        finally:
            await b.stop()


def _check_exactly_once_in_order(got: list[Delivery], published: dict[str, list[int]]) -> None:
    per_channel: dict[str, list[int]] = {}
    for d in got:
        per_channel.setdefault(d.record.channel, []).append(d.record.offset)
    assert per_channel == published  # every record, once, in each channel's order


async def test_a_workspace_of_300_topics_attaches_and_delivers_every_record_once_in_order(
        many_topics: tuple[PulsarBroker, str, list[str]]) -> None:
    b, workspace, channels = many_topics
    before = await _publish_one_each(b, workspace, channels, "before")
    sub = await b.subscribe_work("attach-many")
    try:
        after = await _publish_one_each(b, workspace, channels, "after")
        got = await _receive_all(sub, 2 * TOPICS, 60.0)
        await asyncio.sleep(1.0)  # nothing more comes
        got += await sub.receive(500, 0.2)
        _check_exactly_once_in_order(got, {ch: [before[ch], after[ch]] for ch in channels})
        assert sub.attached_topics(workspace) == TOPICS
        assert 1 < sub.consumer_count(workspace) <= TOPICS // 50  # chunks, not one consumer, not one per topic
    finally:
        await sub.close()


async def test_chunks_whose_subscribe_times_out_are_retried_and_the_rest_stays_attached(
        many_topics: tuple[PulsarBroker, str, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """A timeout on the first two attempts of every chunk holding one of 30 "slow" topics (the first 30 by
    name, so all in the first chunk of 50): the other chunks attach at once and keep delivering; the failed
    topics are retried, in smaller chunks, until all 300 are attached.  The injected failure subscribes for
    real and closes the consumer, as when the client gives up on an operation the broker still completes."""
    import pulsar
    import pulsar.asyncio as pulsar_async

    from storm.adapters.pulsar_work import PulsarWorkSubscription

    b, workspace, channels = many_topics
    slow = sorted(f"persistent://{workspace}/channels/{ch}" for ch in channels)[:30]
    failures = dict.fromkeys(slow, 0)  # failed subscribes of each slow topic
    real = PulsarWorkSubscription._subscribe

    def flaky(self: PulsarWorkSubscription, topics: list[str], conf: Any, done: Callable[[Any], None]) -> None:
        hit = [t for t in topics if t in failures and failures[t] < 2]
        if not hit:
            real(self, topics, conf, done)
            return
        for t in hit:
            failures[t] += 1

        def timed_out(value: Any) -> None:  # on a client thread
            if not isinstance(value, Exception):
                value.close_async(lambda _r: None)
            done(pulsar_async.PulsarException(pulsar.Result.Timeout, "injected"))

        real(self, topics, conf, timed_out)

    monkeypatch.setattr(PulsarWorkSubscription, "_subscribe", flaky)
    before = await _publish_one_each(b, workspace, channels, "before")
    sub = await b.subscribe_work("attach-flaky")
    try:
        assert sub.attached_topics(workspace) == TOPICS - 50  # the first round kept what attached
        after = await _publish_one_each(b, workspace, channels, "after")
        got = await _receive_all(sub, 2 * TOPICS, 90.0)
        await asyncio.sleep(1.0)
        got += await sub.receive(500, 0.2)
        _check_exactly_once_in_order(got, {ch: [before[ch], after[ch]] for ch in channels})
        assert sub.attached_topics(workspace) == TOPICS
        assert set(failures.values()) == {2}
    finally:
        await sub.close()


async def test_a_topic_created_after_the_attach_is_picked_up_from_its_first_record(
        many_topics: tuple[PulsarBroker, str, list[str]]) -> None:
    b, workspace, _ = many_topics
    sub = await b.subscribe_work("attach-late")
    try:
        late = uuid.uuid4().hex
        offset = await b.publish(workspace, late, b"first")  # creates the topic: found by the next listing
        got = await _receive_all(sub, 1, 15.0)
        assert [(d.record.channel, d.record.offset) for d in got] == [(late, offset)]
        assert sub.attached_topics(workspace) == TOPICS + 1
    finally:
        await sub.close()


async def _measure(n: int, throttle_kb_s: int) -> dict[str, Any]:
    """Attach a work subscription to a workspace of ``n`` topics holding one record each; with
    ``throttle_kb_s``, the subscription's client reaches Pulsar's binary port through a toxiproxy link limited
    to that many KB/s towards the client (a slow broker: lookups and subscribes queue up and time out)."""
    from storm_tools.chaos.toxiproxy import Toxiproxy

    urls = (os.environ.get("STORM_TEST_PULSAR_URL", "pulsar://127.0.0.1:6650"),
            os.environ.get("STORM_TEST_PULSAR_ADMIN_URL", "http://127.0.0.1:8080"))
    toxiproxy = Toxiproxy(f"http://127.0.0.1:{os.environ.get('STORM_TOXIPROXY_PORT', '8474')}")
    proxy = f"attach-{uuid.uuid4().hex[:8]}"
    workspace = f"t-{uuid.uuid4().hex[:12]}"
    b = _broker(urls, workspace)
    await b.start()
    try:
        await b.ensure_workspace(workspace, PLANS["pro"])
        channels = [uuid.uuid4().hex for _ in range(n)]
        await _gather_limited([b.ensure_channel(workspace, ch) for ch in channels])
        await _publish_one_each(b, workspace, channels, "before")
        consumer = b
        if throttle_kb_s:
            host, port = urls[0].removeprefix("pulsar://").rsplit(":", 1)
            listen = f"127.0.0.1:{int(port) + 7}"
            toxiproxy.create(proxy, listen, f"{host}:{port}")
            toxiproxy.add_toxic(proxy, "slow", "bandwidth", {"rate": throttle_kb_s})
            consumer = _broker((f"pulsar://{listen}", urls[1]), workspace)
            await consumer.start()
        try:
            t0 = time.monotonic()
            sub = await consumer.subscribe_work("attach-measure")
            attach_s = time.monotonic() - t0
            got = await _receive_all(sub, n, 180.0)
            all_s = time.monotonic() - t0
            await sub.close()
        finally:
            if consumer is not b:
                await consumer.stop()
                toxiproxy.delete(proxy)
        return {"topics": n, "throttle_kb_s": throttle_kb_s, "subscribe_work_s": round(attach_s, 2),
                "received": len({(d.record.channel, d.record.offset) for d in got}), "last_received_s": round(all_s, 2)}
    finally:
        try:
            await b.delete_workspace(workspace)
        finally:
            await b.stop()


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    print(json.dumps(asyncio.run(_measure(args[0] if args else 1000, args[1] if len(args) > 1 else 0))))
