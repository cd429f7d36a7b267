"""End to end over real sockets against a `storm dev` process (fixture in tests/e2e/conftest.py)."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from typing import Any

import pytest
import websockets

from storm_tools.seed import channel_id
from tests.support.asyncapi import validate_server_event

pytestmark = pytest.mark.e2e
GENERAL = channel_id("demo", "general")


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read()


def _token(base: str, user: str) -> str:
    return json.loads(_get(f"{base}/dev/token?user={user}&workspace=demo")[1])["token"]


class Client:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []

    @classmethod
    async def connect(cls, base: str, user: str) -> Client:
        ws = await websockets.connect(base.replace("http", "ws") + "/ws")
        c = cls(ws)
        await c.send(op="auth", token=_token(base, user))
        await c.wait_for("hello")
        return c

    async def send(self, **frame: Any) -> None:
        await self.ws.send(json.dumps(frame))

    async def wait_for_user(self, type_: str, name: str, timeout: float = 5.0) -> dict[str, Any]:
        """A presence.join/leave listing ``name`` (they are coalesced: one event may list several users)."""
        deadline = time.monotonic() + timeout
        while True:
            ev = await self.wait_for(type_, max(0.01, deadline - time.monotonic()))
            if name in {u["name"] for u in ev["users"]}:
                return ev

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
            for part in frame.split("\n"):
                ev = json.loads(part)
                validate_server_event(ev)
                self.events.append(ev)


async def test_two_clients_see_messages_presence_and_typing(storm_dev_server):
    alice = await Client.connect(storm_dev_server, "alice")
    bob = await Client.connect(storm_dev_server, "bob")
    try:
        await alice.send(op="subscribe", id=1, channel=GENERAL)
        await alice.wait_for("subscribed", id=1)
        await bob.send(op="subscribe", id=1, channel=GENERAL)
        await bob.wait_for("subscribed", id=1)
        await alice.wait_for_user("presence.join", "Bob")

        await bob.send(op="typing", channel=GENERAL)
        await alice.wait_for("typing", name="Bob")

        await alice.send(op="publish", id=2, channel=GENERAL, cmid="e2e-1", text="hello bob")
        ack = await alice.wait_for("ack", id=2)
        got = await bob.wait_for("message", id=ack["message_id"])
        assert got["text"] == "hello bob" and got["offset"] == ack["offset"]

        await bob.send(op="publish", id=3, channel=GENERAL, cmid="e2e-2", text="hi alice")
        back = await alice.wait_for("message", text="hi alice")
        assert back["offset"] == ack["offset"] + 1

        await alice.send(op="presence", id=4, channel=GENERAL)
        names = {u["name"] for u in (await alice.wait_for("presence", id=4))["users"]}
        assert {"Alice", "Bob"} <= names

        for _ in range(50):  # the persistence consumer stores them shortly after the ack
            await alice.send(op="history", id=5, channel=GENERAL, limit=5)
            page = await alice.wait_for("history", id=5)
            if {m["text"] for m in page["messages"]} >= {"hello bob", "hi alice"}:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("messages never reached history")
    finally:
        await bob.ws.close()
    await alice.wait_for_user("presence.leave", "Bob")
    await alice.ws.close()


async def test_bad_token_closes_4001(storm_dev_server):
    ws = await websockets.connect(storm_dev_server.replace("http", "ws") + "/ws")
    await ws.send(json.dumps({"op": "auth", "token": "forged"}))
    with pytest.raises(websockets.ConnectionClosed) as info:
        while True:
            await asyncio.wait_for(ws.recv(), 5)
    assert info.value.rcvd is not None and info.value.rcvd.code == 4001


async def test_silent_socket_is_closed_4003_after_the_auth_timeout(storm_dev_server):
    ws = await websockets.connect(storm_dev_server.replace("http", "ws") + "/ws")
    started = time.monotonic()
    with pytest.raises(websockets.ConnectionClosed) as info:
        while True:
            await asyncio.wait_for(ws.recv(), 10)
    assert info.value.rcvd is not None and info.value.rcvd.code == 4003
    assert 4.5 <= time.monotonic() - started <= 7.0


async def test_oversized_frames(storm_dev_server):
    c = await Client.connect(storm_dev_server, "carol")
    await c.ws.send("x" * (64 * 1024 + 10))
    assert (await c.wait_for("error"))["code"] == "too_large"
    await c.send(op="ping", id=1)
    await c.wait_for("pong", id=1)  # the session survived
    await c.ws.send("x" * (128 * 1024 + 10))
    with pytest.raises(websockets.ConnectionClosed) as info:
        while True:
            await asyncio.wait_for(c.ws.recv(), 5)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009


def test_http_surface(storm_dev_server):
    status, body = _get(f"{storm_dev_server}/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, body = _get(f"{storm_dev_server}/")
    assert status == 200 and b"<html" in body.lower()
    status, body = _get(f"{storm_dev_server}/openapi.json")
    assert status == 200 and "/v1/workspaces" in json.loads(body)["paths"]
    with pytest.raises(urllib.error.HTTPError) as info:
        _get(f"{storm_dev_server}/dev/token?user=../../etc")
    assert info.value.code == 400
    info.value.close()


@pytest.mark.parametrize("signame", ["SIGINT", "SIGTERM"])
async def test_a_signal_drains_with_1012_and_a_retry_hint_and_exits_within_the_budget(tmp_path, signame):
    """A dedicated server: Ctrl-C or a deploy's SIGTERM tells connected clients to reconnect elsewhere
    (1012, ``retry_ms`` within STORM_DRAIN_RECONNECT_SPREAD_S), refuses new sockets, and exits in time."""
    import os
    import re
    import signal
    import subprocess
    import sys
    import time

    from tests.support.dev_server import ROOT, free_port, healthy

    port = free_port()
    env = {**os.environ, "STORM_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/d.db",
           "STORM_DRAIN_TIMEOUT_S": "4", "STORM_DRAIN_RECONNECT_SPREAD_S": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "storm_cli", "dev", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            if healthy(f"{base}/healthz"):
                break
            await asyncio.sleep(0.1)
        clients = [await Client.connect(base, user) for user in ("alice", "bob", "dave")]
        signalled = time.monotonic()
        proc.send_signal(getattr(signal, signame))
        hints = []
        for c in clients:
            with pytest.raises(websockets.ConnectionClosed) as info:
                while True:
                    await asyncio.wait_for(c.ws.recv(), 5)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1012
            hint = re.search(r"retry_ms=(\d+)", info.value.rcvd.reason)
            assert hint, info.value.rcvd.reason
            hints.append(int(hint.group(1)))
        assert all(0 <= h <= 2000 for h in hints), hints
        assert proc.wait(timeout=15) == 0
        assert time.monotonic() - signalled < 4 + 6  # the budget, plus interpreter shutdown
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_a_handshake_dribbled_byte_by_byte_is_dropped(storm_dev_server):
    """Slowloris: an HTTP upgrade that never completes is dropped after STORM_HANDSHAKE_TIMEOUT_S (5 s),
    however steadily its bytes trickle in; the gateway keeps serving others."""
    import time

    host, port = storm_dev_server.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    request = (b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               + b"X-Slow: " + b"a" * 200)
    started = time.monotonic()
    dropped = False
    try:
        for byte in request:
            writer.write(bytes([byte]))
            await writer.drain()
            try:
                if await asyncio.wait_for(reader.read(1), 0.25) == b"":
                    dropped = True
                    break
            except TimeoutError:
                continue
    except (ConnectionResetError, BrokenPipeError):
        dropped = True
    finally:
        writer.close()
    assert dropped, "the server kept a never-finishing handshake open"
    assert time.monotonic() - started < 5 + 5
    c = await Client.connect(storm_dev_server, "carol")  # others are served meanwhile
    await c.ws.close()


async def test_a_client_that_stops_reading_is_closed_4008_while_a_reader_gets_everything(tmp_path):
    """Over real sockets (docs/delivery.md, slow consumers): frames fill the non-reader's socket buffers,
    then its outbox; past STORM_OUTBOX_MAX_EVENTS it is closed with 4008, while a client that reads in the
    same channel receives every message in order."""
    import os
    import subprocess
    import sys

    from tests.support.dev_server import ROOT, free_port, healthy

    total, body = 2500, "x" * 4000  # ≈ 10 MB: more than the kernel buffers of one loopback socket hold
    port = free_port()
    env = {**os.environ, "STORM_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/d.db",
           "STORM_OUTBOX_MAX_EVENTS": "200", "STORM_PUBLISH_RATE": "100000", "STORM_PUBLISH_BURST": "100000",
           "STORM_USER_PUBLISH_RATE": "100000", "STORM_USER_PUBLISH_BURST": "100000",
           "STORM_WORKSPACE_PUBLISH_RATE": "100000"}
    proc = subprocess.Popen([sys.executable, "-m", "storm_cli", "dev", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            if healthy(f"{base}/healthz"):
                break
            await asyncio.sleep(0.1)
        url = base.replace("http", "ws") + "/ws"

        async def subscriber(user: str, **kw: Any) -> Any:
            ws = await websockets.connect(url, **kw)
            await ws.send(json.dumps({"op": "auth", "token": _token(base, user)}))
            await ws.send(json.dumps({"op": "subscribe", "id": 1, "channel": GENERAL}))
            while '"subscribed"' not in await asyncio.wait_for(ws.recv(), 10):
                pass
            return ws

        slow = await subscriber("carol", max_queue=1)  # the library stops reading once one frame waits
        fast = await subscriber("bob")
        offsets: list[int] = []

        async def read_fast() -> None:
            while len(offsets) < total:
                for part in (await fast.recv()).split("\n"):
                    event = json.loads(part)
                    if event["type"] == "message":
                        offsets.append(event["offset"])

        reader = asyncio.get_running_loop().create_task(read_fast())
        pub = await Client.connect(base, "alice")
        acks = 0

        async def read_acks() -> None:
            nonlocal acks
            while acks < total:
                acks += (await pub.ws.recv()).count('"type":"ack"')

        ack_reader = asyncio.get_running_loop().create_task(read_acks())
        window = 50  # in flight at most: the reader, in this busy test process, never lags 200 events behind
        for i in range(total):
            while i - len(offsets) >= window and not reader.done():
                await asyncio.sleep(0.002)
            await pub.send(op="publish", id=i + 10, channel=GENERAL, cmid=f"slow-{i}", text=body)
        await asyncio.wait_for(asyncio.gather(reader, ack_reader), 120)
        assert offsets == sorted(offsets) and len(set(offsets)) == total

        with pytest.raises(websockets.ConnectionClosed) as info:
            while True:
                await asyncio.wait_for(slow.recv(), 30)
        assert info.value.rcvd is not None and info.value.rcvd.code == 4008
        await fast.close()
        await pub.ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
