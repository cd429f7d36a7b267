"""The webhook worker on each broker, the embedded one and a live Pulsar (``integration``), POSTing to a real
HTTP receiver on 127.0.0.1 with the real httpx client: delivery with a valid signature, a retry after a
failure, per-channel filtering.  docs/consumers.md "The webhook worker"."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from consumers.webhooks import WebhookWorker
from storm.bootstrap import Services, build_services, pulsar_settings
from storm.config import Config
from storm.domain import PLANS, Workspace
from storm.ports.broker import ChannelPreparer
from storm.ports.clock import SystemClock
from storm.ports.store import UnitOfWork
from storm.protocol import events as e
from storm.webhooks import MEMBERS_LOG, Webhook, member_record
from tests.support.receiver import Receiver

FAST = {"webhook_max_attempts": 3, "webhook_backoff_s": 0.05, "webhook_backoff_cap_s": 0.2,
        "webhook_timeout_s": 2.0}


@pytest.fixture(params=["memory", pytest.param("pulsar", marks=pytest.mark.integration)])
async def services(request: pytest.FixtureRequest) -> AsyncIterator[Services]:
    slug = f"whk-{uuid.uuid4().hex[:10]}"
    if request.param == "memory":
        svc = build_services(Config.from_env({}, store="memory", **FAST))
    else:
        from storm.adapters.pulsar_broker import PulsarBroker

        service_url, admin_url = request.getfixturevalue("pulsar_urls")
        cfg = Config.from_env({}, store="memory", broker="pulsar", pulsar_url=service_url,
                              pulsar_admin_url=admin_url, gateway_id=f"test-{uuid.uuid4().hex[:8]}", **FAST)
        broker = PulsarBroker(pulsar_settings(cfg), SystemClock(), workspace_filter=lambda t: t == slug,
                              discovery_period_s=0.5, pattern_discovery_s=1, read_timeout_s=3.0)
        svc = dataclasses.replace(build_services(Config.from_env({}, store="memory", **FAST)), config=cfg,
                                  broker=broker)
    await svc.start()
    ws = Workspace(id=uuid.uuid4(), slug=slug, name="Webhooks", plan="free")

    async def add(uow: UnitOfWork) -> None:
        await uow.workspaces.add(ws)

    await svc.store.run(add)
    await svc.broker.ensure_workspace(slug, PLANS["free"])
    try:
        yield svc
    finally:
        try:
            await svc.broker.delete_workspace(slug)
        finally:
            await svc.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    try:
        yield r
    finally:
        await r.stop()


async def _workspace(services: Services) -> Workspace:
    async with services.store.unit_of_work() as uow:
        [ws] = await uow.workspaces.list()
    return ws


async def _hook(services: Services, ws: Workspace, url: str, channel: uuid.UUID) -> Webhook:
    hook = Webhook(uuid.uuid4(), ws.id, url, f"whsec_{uuid.uuid4().hex}", ("message.posted",), channels=(channel,))

    async def add(uow: UnitOfWork) -> None:
        await uow.webhooks.add(hook)

    await services.store.run(add)
    return hook


async def test_worker_delivers_signed_events_and_retries_on_each_broker(services: Services,
                                                                        receiver: Receiver) -> None:
    ws = await _workspace(services)
    channel, other = uuid.uuid4(), uuid.uuid4()
    for ch in (channel, other):
        if isinstance(services.broker, ChannelPreparer):
            await services.broker.ensure_channel(ws.slug, str(ch))
    ok = await _hook(services, ws, receiver.url("/ok"), channel)
    receiver.secrets["/ok"] = ok.secret
    flaky = await _hook(services, ws, receiver.url("/flaky"), channel)
    receiver.secrets["/flaky"] = flaky.secret
    receiver.behaviours["/flaky"] = lambda n: 500 if n == 1 else 204

    async with WebhookWorker(services) as worker:
        for ch, text in ((other, "elsewhere"), (channel, "hello")):
            event = e.MessageEvent(channel=str(ch), id=str(uuid.uuid4()), author=str(uuid.uuid4()),
                                   author_name="Alice", text=text, ts=1.0)
            offset = await services.broker.publish(ws.slug, str(ch), e.encode(event))
        [got] = await receiver.wait("/ok", 1, timeout=30)
        first, second = await receiver.wait("/flaky", 2, timeout=30)
    assert got.valid and first.valid and second.valid
    body: dict[str, Any] = json.loads(got.body)
    assert body["data"]["text"] == "hello" and body["offset"] == offset and body["workspace"] == ws.slug
    assert first.event_id == second.event_id == got.event_id
    assert worker.stats["delivered"] == 2 and worker.stats["failed_attempts"] == 1
    assert [r.path for r in receiver.received].count("/ok") == 1  # the other channel's message went nowhere


async def test_membership_events_travel_their_own_log_on_each_broker(services: Services, receiver: Receiver) -> None:
    ws = await _workspace(services)
    hook = Webhook(uuid.uuid4(), ws.id, receiver.url("/members"), "whsec_m", ("member.joined",))

    async def add(uow: UnitOfWork) -> None:
        await uow.webhooks.add(hook)

    await services.store.run(add)
    receiver.secrets["/members"] = hook.secret
    user = uuid.uuid4()
    async with WebhookWorker(services):
        await services.broker.publish(ws.slug, MEMBERS_LOG, member_record("member.joined", user, 1.0, name="Bob"))
        [got] = await receiver.wait("/members", 1, timeout=30)
    body = json.loads(got.body)
    assert got.valid and body["type"] == "member.joined" and body["data"] == {"user": str(user), "name": "Bob"}
