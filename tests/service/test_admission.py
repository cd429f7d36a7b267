"""Admission control (gateway/guard.py, issue 11): a gateway holds at most STORM_MAX_HANDSHAKES handshakes in
progress (upgraded, not yet past `auth`); a flood beyond it is answered HTTP 503 with Retry-After at once,
before the upgrade, instead of queueing handshakes until they time out."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from storm.adapters.dev_identity import DevIdentity
from storm.bootstrap import build_services
from storm.config import Config
from storm_cli.apps import dev_app
from tests.support.front_door import Refused, WsClient, front_door

pytestmark = pytest.mark.security

SLUG = "admit"


async def _attempt(door: Any) -> int:
    """The status of one upgrade: 101, or the refusal's."""
    try:
        async with WsClient(door):
            return 101
    except Refused as refused:
        assert refused.status != 503 or refused.headers["retry-after"] == "2"
        return refused.status


async def _until(predicate: Any) -> None:
    for _ in range(200):  # the server sees a socket end just after the client does
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not reached")


async def test_a_handshake_flood_is_answered_503_with_retry_after_and_slots_come_back() -> None:
    cfg = Config.from_env({}, store="memory", max_handshakes=3, handshake_retry_after_s=2)
    app = dev_app(build_services(cfg), page=False, consumers=False)
    identity = DevIdentity(cfg.dev_secret)
    guard = app.extensions["guard"]
    async with app.test_app() as test_app, front_door(app) as door:
        client = test_app.test_client()
        answer = await client.post("/v1/workspaces", json={"slug": SLUG, "name": "Admit"},
                                   headers={"Authorization": f"Bearer {identity.issue('dev|ann', '*')}"})
        assert answer.status_code == 201
        held = [WsClient(door) for _ in range(3)]
        for sock in held:  # three handshakes in progress: upgraded, no auth yet
            await sock.__aenter__()
        assert guard.handshakes == 3
        flood = await asyncio.gather(*(_attempt(door) for _ in range(40)))
        assert flood == [503] * 40 and guard.refused["overload"] == 40
        assert guard.per_ip == {"127.0.0.1": 3}  # a refused upgrade holds nothing

        await held[0].send({"op": "auth", "token": identity.issue("dev|ann", SLUG)})
        assert (await held[0].event())["type"] == "hello"
        await _until(lambda: guard.handshakes == 2)  # past auth: no longer a handshake
        await held[1].send(json.dumps({"op": "auth", "token": "not-a-token"}))
        assert (await held[1].event())["code"] == "unauthenticated"
        await _until(lambda: guard.handshakes == 1)  # refused auth: over too
        assert await _attempt(door) == 101
        await held[2].__aexit__(None, None, None)  # left before auth
        await _until(lambda: guard.handshakes == 0)
        for sock in held[:2]:
            await sock.__aexit__(None, None, None)
        await _until(lambda: not guard.per_ip)
    assert guard.handshakes == 0


async def test_the_overload_body_names_the_code() -> None:
    from gateway.guard import Refusal

    refusal = Refusal(503, "too many handshakes in progress; retry later", 2)
    assert json.loads(refusal.body)["error"]["code"] == "unavailable"
    assert refusal.headers == (("Retry-After", "2"),)
