"""Admission control (gateway/guard.py, issue 11): a gateway holds at most STORM_MAX_HANDSHAKES handshakes in
progress (upgraded, not yet past `auth`); a flood beyond it is answered HTTP 503 with Retry-After at once,
before the upgrade, instead of queueing handshakes until they time out."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator
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


@contextlib.asynccontextmanager
async def _gateway(**settings: Any) -> AsyncIterator[tuple[Any, Any, DevIdentity]]:
    """A dev gateway behind its front door (``Retry-After: 2``), with the workspace SLUG created: (the door,
    its handshake guard, the identity that issues tokens)."""
    cfg = Config.from_env({}, store="memory", handshake_retry_after_s=2, **settings)
    app = dev_app(build_services(cfg), page=False, consumers=False)
    identity = DevIdentity(cfg.dev_secret)
    async with app.test_app() as test_app, front_door(app) as door:
        answer = await test_app.test_client().post(
            "/v1/workspaces", json={"slug": SLUG, "name": "Admit"},
            headers={"Authorization": f"Bearer {identity.issue('dev|ann', '*')}"})
        assert answer.status_code == 201
        yield door, app.extensions["guard"], identity


async def test_a_handshake_flood_is_answered_503_with_retry_after_and_slots_come_back() -> None:
    async with _gateway(max_handshakes=3) as (door, guard, identity):
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


async def test_a_full_gateway_answers_503_instead_of_failing_accept_and_makes_room_as_sockets_end() -> None:
    """At the open-file limit a gateway used to fail accept() with EMFILE: the client's socket was cut during
    the handshake with no answer (`storm bench connect --connections 20000`, one process).  A gateway at
    STORM_MAX_CONNECTIONS answers 503 + Retry-After, and a slot is free again when a socket ends."""
    async with _gateway(max_connections=2) as (door, guard, identity):
        held = [WsClient(door) for _ in range(2)]
        for sock in held:
            await sock.__aenter__()
        await held[0].send({"op": "auth", "token": identity.issue("dev|ann", SLUG)})
        assert (await held[0].event())["type"] == "hello"  # past its handshake: still held
        try:
            async with WsClient(door):
                raise AssertionError("a third connection was upgraded")
        except Refused as refused:
            assert refused.status == 503 and refused.headers["retry-after"] == "2"
        assert guard.refused["full"] == 1 and guard.connections == 2
        await held[1].__aexit__(None, None, None)
        await _until(lambda: guard.connections == 1)
        assert await _attempt(door) == 101  # room again
        await held[0].__aexit__(None, None, None)
        await _until(lambda: guard.connections == 0)


def test_the_connection_cap_follows_the_open_file_limit() -> None:
    from gateway.guard import connection_cap

    assert connection_cap(0, nofile=20_000) == 19_600  # 2 % kept for the gateway's own files
    assert connection_cap(0, nofile=1024) == 768  # at least 256 kept
    assert connection_cap(5000, nofile=20_000) == 5000  # STORM_MAX_CONNECTIONS, when set, is the cap
    assert connection_cap(0) > 0  # this process's own limit
    with pytest.raises(Exception, match="STORM_MAX_CONNECTIONS"):
        Config.from_env({"STORM_MAX_CONNECTIONS": "-1"}, store="memory")


async def test_the_overload_body_names_the_code() -> None:
    from gateway.guard import Refusal

    refusal = Refusal(503, "too many handshakes in progress; retry later", 2)
    assert json.loads(refusal.body)["error"]["code"] == "unavailable"
    assert refusal.headers == (("Retry-After", "2"),)


def test_the_sdk_waits_retry_after_plus_jitter_on_overload() -> None:
    from storm_sdk import Backoff, BackoffPolicy

    backoff = Backoff(BackoffPolicy(initial_s=0.5, max_s=30.0, hint_jitter_s=1.0), random.Random(7))
    delays = [backoff.next_delay(retry_after_s=2.0) for _ in range(400)]
    assert all(2.0 <= d <= 4.0 for d in delays)
    assert min(delays) < 2.2 and max(delays) > 3.8  # spread over the whole window, not bunched at 2 s
    short = [backoff.next_delay(close_code=1013, reason="overloaded retry_ms=200") for _ in range(200)]
    assert all(0.2 <= d <= 1.2 for d in short)  # at least hint_jitter_s of spread for a short hint


async def test_the_sdk_comes_back_after_a_503() -> None:
    from storm_sdk import BackoffPolicy, ClientOptions, StormClient
    from storm_sdk import events as ev

    cfg = Config.from_env({}, store="memory", max_handshakes=1, handshake_retry_after_s=1)
    app = dev_app(build_services(cfg), page=False, consumers=False)
    identity = DevIdentity(cfg.dev_secret)
    async with app.test_app() as test_app, front_door(app) as door:
        answer = await test_app.test_client().post(
            "/v1/workspaces", json={"slug": SLUG, "name": "Admit"},
            headers={"Authorization": f"Bearer {identity.issue('dev|ann', '*')}"})
        assert answer.status_code == 201
        blocker = WsClient(door)
        await blocker.__aenter__()  # the one handshake slot, held
        client = StormClient(f"ws://127.0.0.1:{door.port}/ws", lambda: identity.issue("dev|ann", SLUG),
                             ClientOptions(backoff=BackoffPolicy(initial_s=0.05, max_s=5.0)))
        async with client:
            events = client.events()
            while True:
                event = await asyncio.wait_for(anext(events), 10)
                if isinstance(event, ev.StateChanged) and event.state is ev.ConnectionState.RECONNECTING:
                    break
            assert event.retry_in is not None and 1.0 <= event.retry_in <= 2.0  # Retry-After 1 + jitter
            assert "503" in (event.reason or "")
            await blocker.__aexit__(None, None, None)
            hello = await client.wait_online(timeout=10)
            assert hello.workspace == SLUG
