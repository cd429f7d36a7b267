"""Webhooks through the tenants API (in-process, SQLite store) and the webhook worker on the embedded broker
and store with a scripted HTTP seam.  The real receiver is in tests/e2e/test_webhooks_e2e.py."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from consumers.webhooks import DeliveryFailed, WebhookWorker
from storm.adapters.memory_broker import MemoryBroker
from storm.bootstrap import Services
from storm.config import Config
from storm.domain import Workspace
from storm.errors import Unavailable
from storm.ports.store import UnitOfWork
from storm.protocol import events as e
from storm.webhooks import MEMBERS_LOG, DeliveryStatus, RetryPolicy, Webhook, verify
from tests.service.conftest import TenantsApi
from tests.support.services import demo_services


# -- REST ---------------------------------------------------------------------------------------------------
async def test_admins_manage_webhooks_and_members_cannot(tenants_api: TenantsApi) -> None:
    api = tenants_api
    await api.workspace("acme")
    await api.member("acme", "bob")
    general = await api.channel("acme", "general")
    body = {"url": "http://127.0.0.1:9/hook", "events": ["message.posted"], "channels": [general["id"]]}

    refused = await api.post("/v1/workspaces/acme/webhooks", as_="bob", json=body)
    assert refused.status == 403 and refused.error()["code"] == "forbidden"
    assert (await api.get("/v1/workspaces/acme/webhooks", as_="bob")).status == 403

    created = await api.post("/v1/workspaces/acme/webhooks", as_="alice", json=body)
    assert created.status == 201, created.body
    assert created.body["secret"].startswith("whsec_") and created.body["channels"] == [general["id"]]
    listed = (await api.get("/v1/workspaces/acme/webhooks", as_="alice")).body["webhooks"]
    assert [w["id"] for w in listed] == [created.body["id"]] and "secret" not in listed[0]
    log = await api.get(f"/v1/workspaces/acme/webhooks/{created.body['id']}/deliveries", as_="alice")
    assert log.status == 200 and log.body == {"deliveries": []}

    assert (await api.delete(f"/v1/workspaces/acme/webhooks/{created.body['id']}", as_="alice")).status == 204
    assert (await api.delete(f"/v1/workspaces/acme/webhooks/{created.body['id']}", as_="alice")).status == 404
    assert (await api.get("/v1/workspaces/acme/webhooks", as_="alice")).body == {"webhooks": []}


@pytest.mark.parametrize(("change", "field"), [
    ({"url": "ftp://example.com/"}, "url"),
    ({"url": "http://user:pw@127.0.0.1/"}, "url"),
    ({"events": []}, "events"),
    ({"events": ["message.exploded"]}, "events"),
    ({"channels": ["not-a-uuid"]}, "channels"),
    ({"extra": 1}, "extra"),
])
async def test_bad_webhook_requests_name_the_field(tenants_api: TenantsApi, change: dict[str, Any],
                                                   field: str) -> None:
    api = tenants_api
    await api.workspace("acme")
    body = {"url": "https://hooks.example.com/x", "events": ["message.posted"], **change}
    r = await api.post("/v1/workspaces/acme/webhooks", as_="alice", json=body)
    assert r.status == 400 and r.error()["field"] == field, r.body


async def test_a_webhook_for_a_channel_of_another_workspace_is_not_found(tenants_api: TenantsApi) -> None:
    api = tenants_api
    await api.workspace("acme")
    await api.workspace("beta")
    theirs = await api.channel("beta", "general")
    r = await api.post("/v1/workspaces/acme/webhooks", as_="alice",
                       json={"url": "https://hooks.example.com/x", "events": ["message.posted"],
                             "channels": [theirs["id"]]})
    assert r.status == 404 and r.error()["field"] == "channels"


async def test_production_refuses_plain_http_and_loopback_targets(tenants_api: TenantsApi) -> None:
    api = tenants_api
    await api.workspace("acme")
    api.services.config = Config.from_env({}, mode="embedded", webhook_allow_private=False)  # embedded: allowed
    assert (await api.post("/v1/workspaces/acme/webhooks", as_="alice",
                           json={"url": "http://127.0.0.1:9/x", "events": ["message.posted"]})).status == 201
    object.__setattr__(api.services.config, "mode", "production")  # the rule, not the identity check
    for url in ("http://hooks.example.com/x", "https://127.0.0.1/x", "https://169.254.169.254/"):
        r = await api.post("/v1/workspaces/acme/webhooks", as_="alice",
                           json={"url": url, "events": ["message.posted"]})
        assert r.status == 400 and r.error()["field"] == "url", (url, r.body)


async def test_incoming_webhooks_are_admin_only_and_shown_once(tenants_api: TenantsApi) -> None:
    api = tenants_api
    await api.workspace("acme")
    await api.member("acme", "bob")
    general = await api.channel("acme", "general")
    body = {"channel_id": general["id"], "name": "CI"}
    assert (await api.post("/v1/workspaces/acme/incoming-webhooks", as_="bob", json=body)).status == 403
    created = await api.post("/v1/workspaces/acme/incoming-webhooks", as_="alice", json=body)
    assert created.status == 201 and created.body["url"].startswith(f"/v1/incoming-webhooks/acme/{created.body['id']}/")
    listed = (await api.get("/v1/workspaces/acme/incoming-webhooks", as_="alice")).body["incoming_webhooks"]
    assert [h["id"] for h in listed] == [created.body["id"]] and "url" not in listed[0]
    missing = await api.post("/v1/workspaces/acme/incoming-webhooks", as_="alice",
                             json={"channel_id": str(uuid.uuid4()), "name": "CI"})
    assert missing.status == 404 and missing.error()["field"] == "channel_id"
    # deleting it kills the URL at once
    assert (await api.delete(f"/v1/workspaces/acme/incoming-webhooks/{created.body['id']}",
                             as_="alice")).status == 204
    gone = await api.post(created.body["url"], json={"text": "hello"})
    assert gone.status == 404


async def test_incoming_post_is_stored_under_the_bot_and_needs_no_bearer(tenants_api: TenantsApi) -> None:
    api = tenants_api
    await api.workspace("acme")
    general = await api.channel("acme", "general")
    hook = (await api.post("/v1/workspaces/acme/incoming-webhooks", as_="alice",
                           json={"channel_id": general["id"], "name": "CI"})).body
    r = await api.post(hook["url"], json={"text": "build green", "cmid": "build-1"})
    assert r.status == 200, r.body
    again = await api.post(hook["url"], json={"text": "build green", "cmid": "build-1"})
    assert again.status == 200 and again.body["message_id"] == r.body["message_id"] and again.body["duplicate"]
    archived = await api.post(f"/v1/workspaces/acme/channels/{general['id']}/archive", as_="alice")
    assert archived.status == 200
    refused = await api.post(hook["url"], json={"text": "after archive"})
    assert refused.status == 403 and refused.error()["field"] == "channel"


async def test_webhook_routes_are_in_openapi(tenants_api: TenantsApi) -> None:
    spec = (await tenants_api.get("/openapi.json")).body
    paths = spec["paths"]
    assert {"post", "get"} <= set(paths["/v1/workspaces/{slug}/webhooks"])
    assert "get" in paths["/v1/workspaces/{slug}/webhooks/{webhook_id}/deliveries"]
    assert "204" in paths["/v1/workspaces/{slug}/webhooks/{webhook_id}"]["delete"]["responses"]
    incoming = paths["/v1/incoming-webhooks/{slug}/{hook_id}/{token}"]["post"]
    assert incoming.get("security") == [] and {"200", "400", "404", "429"} <= set(incoming["responses"])


# -- the worker -----------------------------------------------------------------------------------------------
class ScriptedPoster:
    """The HTTP seam with answers by URL: a list of statuses (or DeliveryFailed) consumed in order."""

    def __init__(self, script: dict[str, list[int | DeliveryFailed]]) -> None:
        self.script = script
        self.calls: list[tuple[str, dict[str, str], bytes]] = []

    async def post(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
        self.calls.append((url, headers, body))
        answers = self.script.get(url, [200])
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        if isinstance(answer, DeliveryFailed):
            raise answer
        return answer

    async def close(self) -> None:
        pass


@pytest.fixture
async def worker_env() -> AsyncIterator[tuple[Any, Workspace, uuid.UUID]]:
    cfg = Config.from_env({}, store="memory", drain_timeout_s=0.2)
    services = await demo_services(cfg)
    try:
        async with services.store.unit_of_work() as uow:
            ws = await uow.workspaces.get_by_slug("demo")
        assert ws is not None
        yield services, ws, uuid.uuid4()
    finally:
        await services.stop()


async def _add(services: Any, hook: Webhook) -> None:
    async def tx(uow: UnitOfWork) -> None:
        await uow.webhooks.add(hook)

    await services.store.run(tx)


async def _log(services: Any, ws: Workspace, hook: Webhook) -> list[Any]:
    async def tx(uow: UnitOfWork) -> list[Any]:
        return await uow.webhooks.deliveries(ws.id, hook.id, limit=100)

    return list(reversed(await services.store.run(tx)))


async def _publish(services: Services, channel: uuid.UUID, text: str = "hi") -> int:
    event = e.MessageEvent(channel=str(channel), id=str(uuid.uuid4()), author=str(uuid.uuid4()), author_name="A",
                           text=text, ts=1.0)
    return await services.broker.publish("demo", str(channel), e.encode(event))


async def _until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_worker_retries_with_backoff_then_dead_letters_and_logs_each_attempt(worker_env: Any) -> None:
    services, ws, channel = worker_env
    flaky = Webhook(uuid.uuid4(), ws.id, "https://flaky.example/", "whsec_a", ("message.posted",))
    down = Webhook(uuid.uuid4(), ws.id, "https://down.example/", "whsec_b", ("message.posted",))
    refused = Webhook(uuid.uuid4(), ws.id, "https://gone.example/", "whsec_c", ("message.posted",))
    for hook in (flaky, down, refused):
        await _add(services, hook)
    poster = ScriptedPoster({flaky.url: [DeliveryFailed("timed out after 4s"), 502, 200], down.url: [500],
                             refused.url: [410]})
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    policy = RetryPolicy(max_attempts=4, base_s=1.0, cap_s=3.0)
    worker = WebhookWorker(services, policy=policy, poster=poster, rand=lambda: 1.0, sleep=sleep)
    async with worker:
        await _publish(services, channel)
        await _until(lambda: worker.stats["dead_lettered"] == 2 and worker.stats["delivered"] == 1)
    assert [(a.attempt, a.status, a.http_status) for a in await _log(services, ws, flaky)] == [
        (1, DeliveryStatus.FAILED, None), (2, DeliveryStatus.FAILED, 502), (3, DeliveryStatus.DELIVERED, 200)]
    assert [(a.attempt, a.status) for a in await _log(services, ws, down)] == [
        (1, DeliveryStatus.FAILED), (2, DeliveryStatus.FAILED), (3, DeliveryStatus.FAILED),
        (4, DeliveryStatus.DEAD_LETTERED)]
    # a 410 is the receiver's final word: dead-lettered at once, no retry
    assert [(a.attempt, a.status, a.http_status) for a in await _log(services, ws, refused)] == [
        (1, DeliveryStatus.DEAD_LETTERED, 410)]
    # backoff ceilings 1, 2, 3 (capped), with rand() = 1.0: flaky paused 1, 2; down paused 1, 2, 3
    assert sorted(pauses) == [1.0, 1.0, 2.0, 2.0, 3.0]
    # every POST of the event carries the same id and a signature the receiver accepts
    for url, headers, body in poster.calls:
        secret = {flaky.url: flaky.secret, down.url: down.secret, refused.url: refused.secret}[url]
        assert verify(secret, headers, body, now=float(headers["Storm-Webhook-Timestamp"]))
    assert len({h["Storm-Webhook-Id"] for _, h, _ in poster.calls}) == 1


async def test_worker_acks_only_after_every_webhook_is_settled(worker_env: Any) -> None:
    services, ws, channel = worker_env
    hook = Webhook(uuid.uuid4(), ws.id, "https://slow.example/", "whsec_a", ("message.posted",))
    await _add(services, hook)
    gate = asyncio.Event()

    class GatedPoster(ScriptedPoster):
        async def post(self, url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
            await gate.wait()
            return await super().post(url, body, headers, timeout)

    worker = WebhookWorker(services, poster=GatedPoster({}))
    await worker.start()
    await _publish(services, channel)
    await _until(lambda: worker.stats["events"] == 1)
    assert await services.broker.work_backlog("webhooks") == 0  # handed out, in flight
    await worker.stop()  # the delivery cannot finish within the drain budget: cancelled, not acknowledged
    assert await services.broker.work_backlog("webhooks") == 1  # so the broker has it again

    gate.set()
    poster = ScriptedPoster({})
    async with WebhookWorker(services, poster=poster) as again:
        await _until(lambda: again.stats["delivered"] == 1)
    assert await services.broker.work_backlog("webhooks") == 0 and len(poster.calls) == 1


async def test_worker_ignores_other_event_types_channels_and_dead_letters_poison(worker_env: Any) -> None:
    services, ws, channel = worker_env
    other = uuid.uuid4()
    hook = Webhook(uuid.uuid4(), ws.id, "https://a.example/", "whsec_a", ("message.edited",), channels=(channel,))
    await _add(services, hook)
    poster = ScriptedPoster({})
    worker = WebhookWorker(services, poster=poster)
    async with worker:
        await _publish(services, channel)  # a message.posted: not subscribed
        await _publish(services, other)
        await services.broker.publish("demo", str(channel), b'{"type":"mystery"}')
        await _until(lambda: worker.stats["records"] == 3)
    assert poster.calls == [] and worker.stats["poison"] == 1
    assert [reason for _, reason in services.broker.dead_letters("webhooks")] == ["unknown record type 'mystery'"]


async def test_a_store_outage_hands_the_batch_back_and_it_is_delivered_later(
        worker_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    services, ws, channel = worker_env
    hook = Webhook(uuid.uuid4(), ws.id, "https://a.example/", "whsec_a", ("message.posted",))
    await _add(services, hook)
    real_run, failures = services.store.run, list[int]()

    async def flaky_run(fn: Any, **kw: Any) -> Any:
        if not failures:
            failures.append(1)
            raise Unavailable("database down")
        return await real_run(fn, **kw)

    monkeypatch.setattr(services.store, "run", flaky_run)
    poster = ScriptedPoster({})
    async with WebhookWorker(services, poster=poster) as worker:
        await _publish(services, channel)
        await _until(lambda: worker.stats["delivered"] == 1)
    assert failures == [1] and len(poster.calls) == 1


async def test_records_of_a_deleted_workspace_are_dropped(worker_env: Any) -> None:
    services, ws, channel = worker_env
    hook = Webhook(uuid.uuid4(), ws.id, "https://a.example/", "whsec_a", ("message.posted",))
    await _add(services, hook)

    async def drop(uow: UnitOfWork) -> None:
        await uow.workspaces.delete(ws.id)

    await services.store.run(drop)
    await services.cache.delete("demo", "ws")  # what the tenants service invalidates on deletion
    poster = ScriptedPoster({})
    async with WebhookWorker(services, poster=poster) as worker:
        await _publish(services, channel)
        await _until(lambda: worker.stats["records"] == 1)
        await _until(lambda: services.broker.dead_letters("webhooks") == [] and worker.stats["events"] == 0)
    assert poster.calls == [] and await services.broker.work_backlog("webhooks") == 0


async def test_membership_changes_reach_webhooks_and_stay_out_of_history(tenants_api: TenantsApi) -> None:
    from consumers.persistence import PersistenceWorker

    api = tenants_api
    await api.workspace("acme")
    hook = (await api.post("/v1/workspaces/acme/webhooks", as_="alice",
                           json={"url": "https://hooks.example.com/m", "events": ["member.joined", "member.left"],
                                 "channels": [(await api.channel("acme", "general"))["id"]]})).body
    poster = ScriptedPoster({})
    persistence = PersistenceWorker(api.services)
    async with WebhookWorker(api.services, poster=poster) as worker, persistence:
        bob = await api.member("acme", "bob")
        r = await api.post("/v1/workspaces/acme/members/bulk", as_="alice",
                           json={"members": [{"subject": "dev|carol"}, {"subject": "dev|bob"}]})
        assert r.status == 200, r.body
        assert (await api.delete(f"/v1/workspaces/acme/members/{bob}", as_="alice")).status == 204
        await _until(lambda: worker.stats["delivered"] == 3)
        await _until(lambda: persistence.stats["records"] == 3)
    bodies = [json.loads(body) for _, _, body in poster.calls]
    assert sorted((b["type"], b["data"].get("name")) for b in bodies) == [
        ("member.joined", "Bob"), ("member.joined", "carol"), ("member.left", None)]  # bob was already there
    assert all(b["channel"] == "" and b["workspace"] == "acme" for b in bodies)
    broker = api.services.broker
    assert isinstance(broker, MemoryBroker)
    assert broker.dead_letters("persistence") == []  # the membership log is not poison to it
    assert persistence.stats["dead_lettered"] == 0
    assert hook["events"] == ["member.joined", "member.left"]


async def test_no_membership_records_without_a_webhook_that_wants_them(tenants_api: TenantsApi) -> None:
    api = tenants_api
    await api.workspace("acme")
    await api.member("acme", "bob")
    assert await api.services.broker.head("acme", MEMBERS_LOG) == 0


async def test_the_last_attempt_prunes_the_log_past_its_retention(worker_env: Any) -> None:
    services, ws, channel = worker_env
    short = dataclasses.replace(services, config=dataclasses.replace(services.config, webhook_log_retention_s=0.001))
    hook = Webhook(uuid.uuid4(), ws.id, "https://flaky.example/", "whsec_a", ("message.posted",))
    await _add(services, hook)
    poster = ScriptedPoster({hook.url: [503, 200]})

    async def no_pause(seconds: float) -> None:
        await asyncio.sleep(0.01)  # so the first attempt is older than the 1 ms retention

    async with WebhookWorker(short, poster=poster, sleep=no_pause) as worker:
        await _publish(services, channel)
        await _until(lambda: worker.stats["delivered"] == 1)
    assert [(a.attempt, a.status) for a in await _log(services, ws, hook)] == [(2, DeliveryStatus.DELIVERED)]



async def test_a_workspace_without_webhooks_costs_no_store_read_per_batch_and_a_new_webhook_counts_at_once(
        tenants_api: TenantsApi, monkeypatch: pytest.MonkeyPatch) -> None:
    """At 1 000 records/s the per-batch webhook read was the consumers' largest cost (docs/benchmarks.md).
    Whether a workspace has webhooks is cached in the directory and invalidated by the API: records of a
    workspace without any are acknowledged without a store read, and a webhook created (or deleted) through
    the API counts for the very next record."""
    api = tenants_api
    services = api.services
    await api.workspace("acme")
    general = (await api.channel("acme", "general"))["id"]
    reads: list[int] = []
    real_run = services.store.run

    async def counting_run(fn: Any, **kw: Any) -> Any:
        reads.append(1)
        return await real_run(fn, **kw)

    async def publish(text: str) -> None:
        event = e.MessageEvent(channel=general, id=str(uuid.uuid4()), author=str(uuid.uuid4()), author_name="A",
                               text=text, ts=1.0)
        await services.broker.publish("acme", general, e.encode(event))

    poster = ScriptedPoster({})
    async with WebhookWorker(services, poster=poster) as worker:
        await publish("first")
        await _until(lambda: worker.stats["records"] == 1)  # the directory learnt "no webhooks"
        monkeypatch.setattr(services.store, "run", counting_run)
        for n in range(3):  # three more batches
            await publish(f"quiet {n}")
            await _until(lambda n=n: worker.stats["records"] == n + 2)
        assert reads == [] and await services.broker.work_backlog("webhooks") == 0
        monkeypatch.setattr(services.store, "run", real_run)
        created = await api.post("/v1/workspaces/acme/webhooks", as_="alice",
                                 json={"url": "https://hooks.example.com/x", "events": ["message.posted"]})
        assert created.status == 201, created.body
        await publish("after the webhook")
        await _until(lambda: worker.stats["delivered"] == 1)
        assert (await api.delete(f"/v1/workspaces/acme/webhooks/{created.body['id']}", as_="alice")).status == 204
        await publish("after the delete")
        await _until(lambda: worker.stats["records"] == 6)
    assert [json.loads(body)["data"]["text"] for _, _, body in poster.calls] == ["after the webhook"]
