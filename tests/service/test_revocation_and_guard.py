"""Through the real app: the tenants API by Quart's test client, WebSockets through the app's own front door
on a real socket (the production path, tests/support/front_door.py): removal, ban and logout close open
sockets with 4010 within a second; the handshake guard refuses foreign origins (403) and connection floods
from one address (429).  docs/security.md."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from gateway.frontdoor import FrontDoor
from storm.adapters.dev_identity import DevIdentity
from storm.bootstrap import build_services
from storm.config import Config
from storm.protocol.codes import CloseCode
from storm_cli.apps import dev_app
from tests.support.front_door import Refused, WsClient, front_door

pytestmark = pytest.mark.security

SLUG = "acme"


@dataclass
class App:
    client: Any
    identity: DevIdentity
    app: Any
    door: FrontDoor

    def token(self, user: str, workspace: str = SLUG) -> str:
        return self.identity.issue(f"dev|{user}", workspace, user.title())

    async def rest(self, method: str, path: str, user: str, *, token: str | None = None, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {token or self.token(user, '*')}"}
        response = await self.client.open(path, method=method, headers=headers, **kw)
        body = await response.get_json() if response.mimetype == "application/json" else None
        return response.status_code, body


async def _app(tmp_path: Any, **overrides: Any) -> Any:
    cfg = Config.from_env({}, store="memory", **overrides)
    services = build_services(cfg)
    return dev_app(services, page=False, consumers=False), DevIdentity(cfg.dev_secret)


@pytest.fixture
async def env(tmp_path) -> AsyncIterator[App]:
    app, identity = await _app(tmp_path)
    async with app.test_app() as test_app, front_door(app) as door:
        env = App(test_app.test_client(), identity, app, door)
        status, _ = await env.rest("POST", "/v1/workspaces", "alice", json={"slug": SLUG, "name": "Acme"})
        assert status == 201
        for user in ("bob", "carol"):
            status, _ = await env.rest("POST", f"/v1/workspaces/{SLUG}/members", "alice",
                                       json={"subject": f"dev|{user}"})
            assert status == 201
        yield env


async def _hello(ws: WsClient, token: str) -> dict[str, Any]:
    await ws.send({"op": "auth", "token": token})
    hello = await ws.event()
    assert hello["type"] == "hello", hello
    return hello


def ws(env: App, **kw: Any) -> WsClient:
    return WsClient(env.door, **kw)


async def _user_id(env: App, user: str) -> str:
    _, body = await env.rest("GET", f"/v1/workspaces/{SLUG}/members", "alice")
    return next(m["user_id"] for m in body["members"] if m["name"].lower() == user)


async def test_removal_from_the_workspace_closes_open_sockets_4010_within_1s(env):
    async with ws(env) as bob, ws(env) as carol:
        await _hello(bob, env.token("bob"))
        await _hello(carol, env.token("carol"))
        status, _ = await env.rest("DELETE", f"/v1/workspaces/{SLUG}/members/{await _user_id(env, 'bob')}", "alice")
        assert status == 204
        assert await bob.close_code(within=1.0) == CloseCode.REVOKED
        await carol.send({"op": "ping", "id": 1})
        assert (await carol.event())["type"] == "pong"  # others unaffected
    async with ws(env) as again:  # and bob cannot come back in
        await again.send({"op": "auth", "token": env.token("bob")})
        assert await again.close_code(within=2.0) == CloseCode.UNAUTHENTICATED


async def test_ban_closes_sockets_and_refuses_the_subject_afterwards(env):
    bob_id = await _user_id(env, "bob")
    async with ws(env) as bob:
        await _hello(bob, env.token("bob"))
        status, _ = await env.rest("POST", f"/v1/workspaces/{SLUG}/members/{bob_id}/ban", "alice")
        assert status == 204
        assert await bob.close_code(within=1.0) == CloseCode.REVOKED
    status, _ = await env.rest("POST", f"/v1/workspaces/{SLUG}/members", "alice", json={"subject": "dev|bob"})
    assert status == 201  # re-added by mistake: the ban still holds until STORM_BAN_TTL_S
    async with ws(env) as again:
        await again.send({"op": "auth", "token": env.token("bob")})
        assert await again.close_code(within=2.0) == CloseCode.REVOKED
    status, body = await env.rest("GET", f"/v1/workspaces/{SLUG}", "bob")
    assert status == 401 and body["error"]["code"] == "unauthenticated"


async def test_ban_needs_an_admin(env):
    status, body = await env.rest("POST", f"/v1/workspaces/{SLUG}/members/{await _user_id(env, 'carol')}/ban", "bob")
    assert status == 403 and body["error"]["code"] == "forbidden"


async def test_logout_revokes_the_token_and_closes_the_callers_sockets(env):
    token, other_token = env.token("bob"), env.token("bob")  # bob on two devices: two tokens
    async with ws(env) as bob, ws(env) as bob_elsewhere:
        await _hello(bob, token)
        await _hello(bob_elsewhere, other_token)
        status, _ = await env.rest("POST", f"/v1/workspaces/{SLUG}/logout", "bob", token=token)
        assert status == 204
        assert await bob.close_code(within=1.0) == CloseCode.REVOKED
        await bob_elsewhere.send({"op": "ping", "id": 7})  # the other device's session goes on
        assert (await bob_elsewhere.event())["type"] == "pong"
    status, _ = await env.rest("GET", f"/v1/workspaces/{SLUG}", "bob", token=token)
    assert status == 401  # the logged-out token is dead for the REST API too
    async with ws(env) as again:
        await again.send({"op": "auth", "token": token})
        assert await again.close_code(within=2.0) == CloseCode.REVOKED
    async with ws(env) as fresh:  # a new login works
        await _hello(fresh, env.token("bob"))


async def _events_until(sock: WsClient, kind: str) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    while not seen or seen[-1]["type"] != kind:
        seen.extend(await sock.receive(timeout=3.0))  # > STORM_PRESENCE_COALESCE_S: presence.leave comes late
        seen = seen[: next((i + 1 for i, e in enumerate(seen) if e["type"] == kind), len(seen))]
    return seen


async def test_removal_from_a_private_channel_ends_the_open_subscription_only(env):
    bob_id, carol_id = await _user_id(env, "bob"), await _user_id(env, "carol")
    status, channel = await env.rest("POST", f"/v1/workspaces/{SLUG}/channels", "alice",
                                     json={"name": "secret", "kind": "private", "members": [bob_id, carol_id]})
    assert status == 201, channel
    cid = channel["id"]
    async with ws(env) as bob, ws(env) as carol:
        for sock, user in ((bob, "bob"), (carol, "carol")):
            await _hello(sock, env.token(user))
            await sock.send({"op": "subscribe", "id": 1, "channel": cid})
            await _events_until(sock, "subscribed")
        await _events_until(carol, "presence.join")  # the joins' window closed (a join and a leave within one cancel)
        status, _ = await env.rest("DELETE", f"/v1/workspaces/{SLUG}/channels/{cid}/members/{bob_id}", "alice")
        assert status == 204
        ended = (await _events_until(bob, "unsubscribed"))[-1]
        assert ended == {"type": "unsubscribed", "channel": cid, "reason": "removed"}
        left = (await _events_until(carol, "presence.leave"))[-1]
        assert [u["id"] for u in left["users"]] == [bob_id] and left["channel"] == cid
        await carol.send({"op": "publish", "id": 2, "channel": cid, "cmid": "c-1", "text": "after bob left"})
        carol_saw = await _events_until(carol, "message")
        assert carol_saw[-1]["text"] == "after bob left"  # the channel goes on for its members
        await bob.send({"op": "ping", "id": 3})  # bob's socket stays open, and the message never reaches it
        assert [e["type"] for e in await _events_until(bob, "pong")] == ["pong"]
        await bob.send({"op": "subscribe", "id": 4, "channel": cid})
        refused = (await _events_until(bob, "error"))[-1]
        assert refused["code"] == "not_found" and refused["id"] == 4


# -- handshake guard ----------------------------------------------------------------------------------
async def _refused(door: FrontDoor, **kw: Any) -> Refused:
    with pytest.raises(Refused) as info:
        async with WsClient(door, **kw):
            pass
    return info.value


async def _usable(sock: WsClient) -> None:
    await sock.send({"op": "ping"})
    assert (await sock.event())["code"] == "unauthenticated"  # reached the session: the upgrade went through


async def test_foreign_origin_is_refused_with_403_before_upgrade(env):
    refused = await _refused(env.door, origin="https://evil.example")
    assert refused.status == 403
    assert env.app.extensions["guard"].refused["origin"] == 1


async def test_same_origin_and_no_origin_are_allowed_in_embedded_mode(env):
    for origin, host in (("http://localhost:9000", "localhost:9000"), ("http://127.0.0.1:8000", "x:1"),
                         (None, "127.0.0.1:8000")):
        async with WsClient(env.door, origin=origin, host=host) as sock:
            await _hello(sock, env.token("bob"))
    assert (await _refused(env.door, origin="null")).status == 403
    assert (await _refused(env.door, origin="http://localhost:9000", host="127.0.0.1:8000")).status == 403


async def test_configured_allowlist_is_exact(tmp_path):
    app, _ = await _app(tmp_path, allowed_origins="https://chat.example.com, https://admin.example.com/")
    async with app.test_app(), front_door(app) as door:
        assert (await _refused(door, origin="http://127.0.0.1:8000")).status == 403
        assert (await _refused(door, origin="https://chat.example.com.evil.io")).status == 403
        for origin in ("https://chat.example.com", "https://ADMIN.example.com"):
            async with WsClient(door, origin=origin) as sock:
                await _usable(sock)


async def test_connections_per_ip_are_limited_with_429(tmp_path):
    app, _ = await _app(tmp_path, max_connections_per_ip=2)
    async with app.test_app(), front_door(app) as door:
        here, there = "127.0.0.2", "127.0.0.3"  # two client addresses on the loopback network
        async with WsClient(door, client=here) as a, WsClient(door, client=here) as b:  # held open (awaiting auth)
            assert a.accepted and b.accepted
            refused = await _refused(door, client=here)
            assert refused.status == 429 and refused.headers["retry-after"] == "5"
            async with WsClient(door, client=there) as c:  # another address is not affected
                await _usable(c)
        for _ in range(100):  # the server sees each socket end just after the client does
            if not app.extensions["guard"].per_ip:
                break
            await asyncio.sleep(0.01)
        assert app.extensions["guard"].per_ip == {}  # every slot given back
        async with WsClient(door, client=here) as d:
            await _usable(d)
