"""Cross-tenant isolation: Mallory owns workspace `evil`; the victim workspace is `demo`.  Whatever she sends,
over the gateway or the tenants REST API, she never reads or changes anything of `demo`, and `demo`'s
members see nothing of her attempts.  One test per operation (docs/security.md, "Tenant isolation")."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from storm.adapters.dev_identity import DevIdentity
from storm.bootstrap import build_services
from storm.config import Config
from storm.domain import Message
from storm.protocol.codes import CloseCode
from storm.protocol.session import Session, State
from storm_cli.apps import dev_app
from storm_tools.seed import DEMO_WORKSPACE, channel_id, demo_id, seed_demo
from tests.service.test_session import ListTransport

pytestmark = pytest.mark.security

VICTIM_CHANNEL = channel_id(DEMO_WORKSPACE, "general")
VICTIM_MESSAGE = str(uuid.uuid5(uuid.NAMESPACE_URL, "victim-message"))


@dataclass
class World:
    app: Any
    client: Any
    identity: DevIdentity
    gateway: Any
    evil_channel: str

    def token(self, user: str, workspace: str) -> str:
        return self.identity.issue(f"dev|{user}", workspace, user.title())

    async def session(self, user: str, workspace: str) -> tuple[Session, ListTransport]:
        t = ListTransport()
        s = Session(self.gateway.session_context, t)
        await s.receive(json.dumps({"op": "auth", "token": self.token(user, workspace)}))
        return s, t

    async def rest(self, method: str, path: str, token: str, **kw: Any) -> tuple[int, Any]:
        r = await self.client.open(path, method=method, headers={"Authorization": f"Bearer {token}"}, **kw)
        return r.status_code, (await r.get_json() if r.mimetype == "application/json" else None)


@pytest.fixture
async def world(tmp_path) -> AsyncIterator[World]:
    cfg = Config.from_env({}, database_url=f"sqlite+aiosqlite:///{tmp_path}/iso.db", idle_timeout_s=1e6)
    services = build_services(cfg)
    app = dev_app(services, page=False, consumers=False)
    identity = DevIdentity(cfg.dev_secret)
    async with app.test_app() as test_app:
        ws = await seed_demo(services.store)
        await services.broker.ensure_workspace(ws.slug, ws.quotas)
        victim = Message(id=uuid.UUID(VICTIM_MESSAGE), workspace_id=ws.id, channel_id=uuid.UUID(VICTIM_CHANNEL),
                         author_id=demo_id("user", "alice"), body="the launch code is 1234", offset=1,
                         created_at=datetime.now(UTC))
        await services.store.run(lambda uow: uow.messages.add_many([victim]))
        w = World(app, test_app.test_client(), identity, app.extensions["gateway"], "")
        status, _ = await w.rest("POST", "/v1/workspaces", w.token("mallory", "*"), json={"slug": "evil",
                                                                                           "name": "Evil"})
        assert status == 201
        status, body = await w.rest("POST", "/v1/workspaces/evil/channels", w.token("mallory", "evil"),
                                    json={"name": "lair"})
        assert status == 201
        w.evil_channel = body["id"]
        yield w


@pytest.fixture
async def victim(world) -> AsyncIterator[ListTransport]:
    """Alice, subscribed to the victim channel: whatever Mallory does must not reach her."""
    s, t = await world.session("alice", DEMO_WORKSPACE)
    await s.receive(json.dumps({"op": "subscribe", "channel": VICTIM_CHANNEL}))
    t.take()
    yield t
    assert t.take() == [], "an attempt from another workspace reached the victim"
    await s.closed()


@pytest.fixture
async def mallory(world) -> AsyncIterator[tuple[Session, ListTransport]]:
    s, t = await world.session("mallory", "evil")
    assert s.state is State.OPEN, t.events
    t.take()
    yield s, t
    await s.closed()


async def attempt(mallory: tuple[Session, ListTransport], **frame: Any) -> dict[str, Any]:
    s, t = mallory
    await s.receive(json.dumps({"id": 7, **frame}))
    events = t.take()
    assert s.state is State.OPEN
    assert len(events) == 1 and events[0]["type"] == "error", events
    assert events[0]["id"] == 7
    return events[0]


async def arrived(transport: ListTransport, type_: str, timeout: float = 5.0) -> dict[str, Any]:
    """The first event of ``type_`` the transport received, waiting for it: delivery is asynchronous, so
    a test that expects nothing elsewhere first waits for the same event where it must arrive."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (found := [e for e in transport.events if e["type"] == type_]):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no {type_!r} event within {timeout} s: {transport.events}")
        await asyncio.sleep(0.01)
    return found[0]


# -- the gateway: one test per operation --------------------------------------------------------------
async def test_token_of_a_or_star_cannot_open_a_session_in_b(world):
    for user, workspace in (("mallory", DEMO_WORKSPACE), ("mallory", "*")):
        _s, t = await world.session(user, workspace)
        assert t.closed and t.closed[0] == CloseCode.UNAUTHENTICATED


async def test_cannot_subscribe_to_b(mallory, victim):
    assert (await attempt(mallory, op="subscribe", channel=VICTIM_CHANNEL))["code"] == "not_found"
    assert mallory[0].subscriptions.channels == {}


async def test_cannot_publish_in_b(world, mallory, victim):
    broker = world.gateway.services.broker
    head = await broker.head(DEMO_WORKSPACE, VICTIM_CHANNEL)
    err = await attempt(mallory, op="publish", channel=VICTIM_CHANNEL, cmid="x", text="pwned")
    assert err["code"] == "not_found"
    assert await broker.head(DEMO_WORKSPACE, VICTIM_CHANNEL) == head


async def test_cannot_read_history_of_b(mallory, victim):
    assert (await attempt(mallory, op="history", channel=VICTIM_CHANNEL))["code"] == "not_found"


async def test_cannot_see_presence_of_b(mallory, victim):
    assert (await attempt(mallory, op="presence", channel=VICTIM_CHANNEL))["code"] == "not_found"


async def test_cannot_send_typing_to_b(mallory, victim):
    assert (await attempt(mallory, op="typing", channel=VICTIM_CHANNEL))["code"] == "not_found"


async def test_cannot_see_typing_of_b(world, mallory):
    """The other direction: Alice types and publishes in demo; Mallory, subscribed in evil, gets nothing.
    Bob, subscribed in demo, is the witness that both were delivered before Mallory's nothing is checked."""
    s, t = mallory
    await s.receive(json.dumps({"op": "subscribe", "channel": world.evil_channel}))
    t.take()
    bob, witness = await world.session("bob", DEMO_WORKSPACE)
    await bob.receive(json.dumps({"op": "subscribe", "channel": VICTIM_CHANNEL}))
    alice, _ = await world.session("alice", DEMO_WORKSPACE)
    await alice.receive(json.dumps({"op": "subscribe", "channel": VICTIM_CHANNEL}))
    await alice.receive(json.dumps({"op": "typing", "channel": VICTIM_CHANNEL}))
    await alice.receive(json.dumps({"op": "publish", "channel": VICTIM_CHANNEL, "cmid": "a", "text": "secret"}))
    await arrived(witness, "typing")
    await arrived(witness, "message")
    assert t.take() == []
    await alice.closed()
    await bob.closed()


async def test_cannot_react_in_b(mallory, victim):
    err = await attempt(mallory, op="react", channel=VICTIM_CHANNEL, message_id=VICTIM_MESSAGE, emoji="x")
    assert err["code"] == "not_found"


async def test_cannot_react_to_a_message_of_b_through_a_channel_of_a(world, mallory, victim):
    err = await attempt(mallory, op="react", channel=world.evil_channel, message_id=VICTIM_MESSAGE, emoji="x")
    assert err["code"] == "not_found" and err["field"] == "message_id"


async def test_cannot_edit_in_b(world, mallory, victim):
    for channel in (VICTIM_CHANNEL, world.evil_channel):
        err = await attempt(mallory, op="edit", channel=channel, message_id=VICTIM_MESSAGE, text="pwned")
        assert err["code"] == "not_found"


async def test_cannot_delete_in_b(world, mallory, victim):
    for channel in (VICTIM_CHANNEL, world.evil_channel):
        err = await attempt(mallory, op="delete", channel=channel, message_id=VICTIM_MESSAGE)
        assert err["code"] == "not_found"
    async with world.gateway.services.store.unit_of_work() as uow:
        ws = await uow.workspaces.get_by_slug(DEMO_WORKSPACE)
        msg = await uow.messages.get(ws.id, uuid.UUID(VICTIM_MESSAGE))
    assert msg is not None and msg.deleted_at is None and msg.body == "the launch code is 1234"


async def test_cannot_move_read_markers_in_b(mallory, victim):
    assert (await attempt(mallory, op="read", channel=VICTIM_CHANNEL, offset=1))["code"] == "not_found"


# -- the tenants REST API ---------------------------------------------------------------------------------
CH = VICTIM_CHANNEL
ALICE = str(demo_id("user", "alice"))
REST_ATTEMPTS = [
    ("GET", f"/v1/workspaces/{DEMO_WORKSPACE}", None),
    ("DELETE", f"/v1/workspaces/{DEMO_WORKSPACE}", None),
    ("GET", f"/v1/workspaces/{DEMO_WORKSPACE}/members", None),
    ("POST", f"/v1/workspaces/{DEMO_WORKSPACE}/members", {"subject": "dev|mallory", "role": "owner"}),
    ("PATCH", f"/v1/workspaces/{DEMO_WORKSPACE}/members/{ALICE}", {"role": "member"}),
    ("DELETE", f"/v1/workspaces/{DEMO_WORKSPACE}/members/{ALICE}", None),
    ("POST", f"/v1/workspaces/{DEMO_WORKSPACE}/members/{ALICE}/ban", None),
    ("POST", f"/v1/workspaces/{DEMO_WORKSPACE}/logout", None),
    ("POST", f"/v1/workspaces/{DEMO_WORKSPACE}/channels", {"name": "pwned"}),
    ("GET", f"/v1/workspaces/{DEMO_WORKSPACE}/channels", None),
    ("POST", f"/v1/workspaces/{DEMO_WORKSPACE}/channels/{CH}/archive", None),
    ("POST", f"/v1/workspaces/{DEMO_WORKSPACE}/channels/{CH}/members", {"user_id": ALICE}),
    ("GET", f"/v1/workspaces/{DEMO_WORKSPACE}/channels/{CH}/messages", None),
    ("GET", f"/v1/workspaces/{DEMO_WORKSPACE}/channels/{CH}/presence", None),
    ("GET", f"/v1/workspaces/{DEMO_WORKSPACE}/online", None),
]


@pytest.mark.parametrize(("method", "path", "body"), REST_ATTEMPTS, ids=[f"{m} {p}" for m, p, _ in REST_ATTEMPTS])
async def test_rest_endpoints_of_b_refuse_tokens_of_a(world, method, path, body):
    for token in (world.token("mallory", "evil"), world.token("mallory", "*")):
        status, reply = await world.rest(method, path, token, **({"json": body} if body is not None else {}))
        assert status == 403 and reply["error"]["code"] == "forbidden", (status, reply)
    status, reply = await world.rest("GET", f"/v1/workspaces/{DEMO_WORKSPACE}/members", world.token("alice", "*"))
    assert status == 200 and "mallory" not in json.dumps(reply)


@pytest.mark.parametrize("suffix", ["messages", "presence", "archive", "members"])
async def test_rest_channel_of_b_through_the_path_of_a_is_not_found(world, suffix):
    method = "GET" if suffix in ("messages", "presence") else "POST"
    kw = {"json": {"user_id": ALICE}} if suffix == "members" else {}
    status, reply = await world.rest(method, f"/v1/workspaces/evil/channels/{CH}/{suffix}",
                                     world.token("mallory", "evil"), **kw)
    assert status == 404 and reply["error"]["code"] == "not_found", (status, reply)


async def test_workspace_list_shows_only_own_workspaces(world):
    status, reply = await world.rest("GET", "/v1/workspaces", world.token("mallory", "*"))
    assert status == 200 and [w["slug"] for w in reply["workspaces"]] == ["evil"]
