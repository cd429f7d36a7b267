"""Webhooks end to end: a `storm dev` process, a real HTTP receiver on 127.0.0.1 (tests/support/receiver.py),
WebSocket clients.  Outgoing: delivery, the receiver's signature check, retry after failures, dead letter
after the bound, the delivery log, a slow endpoint not slowing publish acks.  Incoming: a post appears in
the channel as the bot, seen by a WebSocket subscriber; validated like `publish`; rate limited.
docs/tenants-api.md "Webhooks", docs/consumers.md "The webhook worker", docs/security.md "Webhooks"."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from storm.domain import MAX_BODY_CHARS
from tests.support.dev_server import StormProcess
from tests.support.receiver import Receiver

pytestmark = pytest.mark.e2e

MAX_ATTEMPTS = 3
ENV = {"STORM_WEBHOOK_MAX_ATTEMPTS": str(MAX_ATTEMPTS), "STORM_WEBHOOK_BACKOFF_S": "0.05",
       "STORM_WEBHOOK_BACKOFF_CAP_S": "0.2", "STORM_WEBHOOK_TIMEOUT_S": "1.0"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StormProcess]:
    proc = StormProcess(Path(tmp_path_factory.mktemp("storm-webhooks")), env=ENV)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    try:
        yield r
    finally:
        await r.stop()


class Api:
    def __init__(self, server: StormProcess, client: httpx.AsyncClient) -> None:
        self.server = server
        self.client = client

    async def token(self, user: str) -> str:
        r = await self.client.get(f"{self.server.base}/dev/token", params={"user": user, "workspace": "demo"})
        return str(r.json()["token"])

    async def call(self, method: str, path: str, user: str = "alice", **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {await self.token(user)}"}
        return await self.client.request(method, f"{self.server.base}/v1/workspaces/demo{path}", headers=headers,
                                         **kw)

    async def channel(self, name: str) -> str:
        r = await self.call("POST", "/channels", json={"name": name, "kind": "public"})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    async def webhook(self, receiver: Receiver, path: str, channel: str, events: list[str]) -> dict[str, Any]:
        r = await self.call("POST", "/webhooks", json={"url": receiver.url(path), "events": events,
                                                        "channels": [channel]})
        assert r.status_code == 201, r.text
        body: dict[str, Any] = r.json()
        receiver.secrets[path] = body["secret"]
        return body

    async def log(self, hook: dict[str, Any], **params: Any) -> list[dict[str, Any]]:
        r = await self.call("GET", f"/webhooks/{hook['id']}/deliveries", params=params)
        assert r.status_code == 200, r.text
        return list(r.json()["deliveries"])


@pytest.fixture
async def api(server: StormProcess) -> AsyncIterator[Api]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield Api(server, client)


class Client:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, api: Api, user: str) -> Client:
        c = cls(await websockets.connect(api.server.ws))
        await c.send(op="auth", token=await api.token(user))
        await c.wait_for("hello")
        return c

    async def send(self, **frame: Any) -> None:
        await self.ws.send(json.dumps(frame))

    async def wait_for(self, type_: str, timeout: float = 5.0, **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev["type"] == type_ and all(ev.get(k) == v for k, v in match.items()):
                    return self.events.pop(i)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {type_} {match} within {timeout}s; got {self.events}")
            frame = await asyncio.wait_for(self.ws.recv(), remaining)
            self.events.extend(json.loads(part) for part in frame.split("\n"))

    async def subscribe(self, channel: str) -> None:
        await self.send(op="subscribe", id=1, channel=channel)
        await self.wait_for("subscribed", id=1)


async def _eventually(check: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result or time.monotonic() > deadline:
            return result
        await asyncio.sleep(0.1)


async def test_outgoing_delivery_signature_retries_dead_letter_and_log(api: Api, receiver: Receiver) -> None:
    channel, other = await api.channel("wh-out"), await api.channel("wh-other")
    ok = await api.webhook(receiver, "/ok", channel, ["message.posted", "message.edited"])
    await api.webhook(receiver, "/other", other, ["message.posted"])
    receiver.behaviours["/flaky"] = lambda n: 503 if n <= 2 else 200  # fails twice, then takes it
    flaky = await api.webhook(receiver, "/flaky", channel, ["message.posted"])
    receiver.behaviours["/down"] = lambda n: 500  # never takes it
    down = await api.webhook(receiver, "/down", channel, ["message.posted"])

    alice = await Client.connect(api, "alice")
    try:
        await alice.subscribe(channel)
        await alice.send(op="publish", id=2, channel=channel, cmid="wh-1", text="hello hooks")
        ack = await alice.wait_for("ack", id=2)

        [got] = await receiver.wait("/ok", 1)
        assert got.valid, "the receiver could not verify the signature"
        body = json.loads(got.body)
        assert body["type"] == "message.posted" and body["workspace"] == "demo" and body["channel"] == channel
        assert body["offset"] == ack["offset"] and body["data"]["id"] == ack["message_id"]
        assert body["data"]["text"] == "hello hooks" and body["data"]["author_name"] == "Alice"
        assert got.event_id == body["id"]

        # retry after failures: the same event (same id) until the endpoint takes it
        flaky_calls = await receiver.wait("/flaky", 3)
        assert {r.event_id for r in flaky_calls} == {body["id"]} and all(r.valid for r in flaky_calls)
        # dead letter after the bound: exactly MAX_ATTEMPTS POSTs, then nothing more
        await receiver.wait("/down", MAX_ATTEMPTS)

        async def flaky_settled() -> list[dict[str, Any]]:
            entries = await api.log(flaky)
            return entries if any(e["status"] == "delivered" for e in entries) else []

        entries = await _eventually(flaky_settled)
        assert [(e["attempt"], e["status"], e["http_status"]) for e in entries] == [
            (3, "delivered", 200), (2, "failed", 503), (1, "failed", 503)]

        async def down_settled() -> list[dict[str, Any]]:
            return await api.log(down, status="dead_lettered")

        [dead] = await _eventually(down_settled)
        assert dead["attempt"] == MAX_ATTEMPTS and dead["http_status"] == 500 and dead["event_id"] == body["id"]
        assert len(await api.log(down)) == MAX_ATTEMPTS
        await asyncio.sleep(0.5)
        assert len(receiver.at("/down")) == MAX_ATTEMPTS  # nothing after the dead letter

        # an edit is its own event type; the other channel's webhook never saw this channel's messages
        for _ in range(50):  # edit needs the message stored first
            await alice.send(op="edit", id=3, channel=channel, message_id=ack["message_id"], text="edited")
            reply = await alice.wait_for("ack", id=3) if await _acked(alice, 3) else None
            if reply is not None:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("edit was never accepted")
        edited = json.loads((await receiver.wait("/ok", 2))[1].body)
        assert edited["type"] == "message.edited" and edited["data"]["text"] == "edited"
        assert receiver.at("/other") == []
        # the worker writes an attempt to the log once the receiver's answer is back, so the log can trail
        # the receiver by a moment; it must catch up, and never hold more than the two deliveries
        async def ok_settled() -> list[dict[str, Any]]:
            entries = await api.log(ok)
            return entries if len(entries) >= 2 else []

        assert [e["status"] for e in await _eventually(ok_settled)] == ["delivered", "delivered"]
    finally:
        await alice.ws.close()


async def _acked(client: Client, request_id: int) -> bool:
    """True when the command got an ack, False when it got an error (the event is consumed either way)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for ev in client.events:
            if ev.get("id") == request_id and ev["type"] in ("ack", "error"):
                if ev["type"] == "error":
                    client.events.remove(ev)
                    return False
                return True
        frame = await asyncio.wait_for(client.ws.recv(), deadline - time.monotonic())
        client.events.extend(json.loads(part) for part in frame.split("\n"))
    raise AssertionError(f"no answer to request {request_id}")


async def test_a_slow_endpoint_does_not_slow_publish_acks(api: Api, receiver: Receiver) -> None:
    channel = await api.channel("wh-slow")
    receiver.behaviours["/slow"] = lambda n: (200, 3.0)  # longer than the 1 s timeout: every attempt times out
    slow = await api.webhook(receiver, "/slow", channel, ["message.posted"])
    alice = await Client.connect(api, "alice")
    try:
        latencies = []
        for i in range(20):
            started = time.monotonic()
            await alice.send(op="publish", id=100 + i, channel=channel, cmid=f"slow-{i}", text=f"m{i}")
            await alice.wait_for("ack", id=100 + i)
            latencies.append(time.monotonic() - started)
        await receiver.wait("/slow", 20)  # the worker is stuck on the endpoint while we publish
        # were delivery on the publish path, every ack would wait for at least one 1 s timeout
        assert max(latencies) < 0.9, latencies

        async def timed_out() -> list[dict[str, Any]]:
            return [e for e in await api.log(slow) if "timed out" in e["error"]]

        assert await _eventually(timed_out)
    finally:
        await alice.ws.close()


async def test_incoming_webhook_posts_as_a_bot_validated_and_rate_limited(api: Api) -> None:
    channel = await api.channel("wh-in")
    r = await api.call("POST", "/incoming-webhooks", json={"channel_id": channel, "name": "Deploy Bot"})
    assert r.status_code == 201, r.text
    hook = r.json()
    url = f"{api.server.base}{hook['url']}"
    bob = await Client.connect(api, "bob")
    try:
        await bob.subscribe(channel)
        posted = await api.client.post(url, json={"text": "deployed v1.2"})
        assert posted.status_code == 200, posted.text
        seen = await bob.wait_for("message", id=posted.json()["message_id"])
        assert seen["text"] == "deployed v1.2" and seen["author_name"] == "Deploy Bot"
        assert seen["author"] == hook["bot_user_id"]

        # validated like publish
        for bad, field in [({"text": ""}, "text"), ({"text": "x" * (MAX_BODY_CHARS + 1)}, "text"),
                           ({"text": 5}, "text"), ({"text": "hi", "thread": "not-an-id"}, "thread")]:
            refused = await api.client.post(url, json=bad)
            assert refused.status_code == 400, (bad, refused.text)
            assert refused.json()["error"]["field"] == field
        # the URL is the credential: a wrong token is the same 404 as an unknown hook
        wrong = await api.client.post(url[:-4] + "AAAA", json={"text": "sneaky"})
        assert wrong.status_code == 404 and wrong.json()["error"]["code"] == "not_found"

        # rate limited: a burst of posts meets 429 with Retry-After
        statuses = [(await api.client.post(url, json={"text": f"spam {i}"})) for i in range(15)]
        limited = [p for p in statuses if p.status_code == 429]
        assert limited and limited[0].json()["error"]["code"] == "rate_limited"
        assert "Retry-After" in limited[0].headers
        assert sum(p.status_code == 200 for p in statuses) < 15
    finally:
        await bob.ws.close()


async def test_member_joined_reaches_a_real_receiver(api: Api, receiver: Receiver) -> None:
    r = await api.call("POST", "/webhooks", json={"url": receiver.url("/members"), "events": ["member.joined"]})
    assert r.status_code == 201, r.text
    receiver.secrets["/members"] = r.json()["secret"]
    added = await api.call("POST", "/members", json={"subject": "dev|erin", "name": "Erin"})
    assert added.status_code == 201, added.text
    [got] = await receiver.wait("/members", 1)
    body = json.loads(got.body)
    assert got.valid and body["type"] == "member.joined" and body["workspace"] == "demo"
    assert body["data"] == {"user": added.json()["user_id"], "name": "Erin", "role": "member"}
