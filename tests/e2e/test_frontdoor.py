"""The gateway's front door (gateway/frontdoor.py, ADR 0007) over real sockets, against `storm dev`: HTTP
still reaches Quart through the pipe to Hypercorn, and the WebSocket side keeps the RFC's rules that
Hypercorn and wsproto used to keep for us."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import pytest
import websockets

from gateway.frames import OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT
from tests.e2e.test_gateway_ws import GENERAL, Client, _token
from tests.support.dev_server import ROOT, free_port, healthy
from tests.unit.test_frames import client_frame

pytestmark = pytest.mark.e2e

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def _addr(base: str) -> tuple[str, int]:
    host, port = base.removeprefix("http://").split(":")
    return host, int(port)


async def _http(base: str, raw: bytes, *, read_until_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection(*_addr(base))
    writer.write(raw)
    await writer.drain()
    try:
        if read_until_close:
            return await asyncio.wait_for(reader.read(), 10)
        return await asyncio.wait_for(reader.read(65536), 10)
    finally:
        writer.close()


async def _upgraded(base: str, extra: bytes = b"") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(*_addr(base))
    writer.write(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: " + KEY.encode() + b"\r\nSec-WebSocket-Version: 13\r\n" + extra + b"\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101 ") and b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
    return reader, writer


async def _server_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One server frame, read with a parser of its own (an oracle independent of gateway/frames.py)."""
    first, second = await asyncio.wait_for(reader.readexactly(2), 10)
    assert not second & 0x80, "server frames are never masked"
    size = second & 0x7F
    if size == 126:
        size = int.from_bytes(await reader.readexactly(2), "big")
    elif size == 127:
        size = int.from_bytes(await reader.readexactly(8), "big")
    return first & 0x0F, await reader.readexactly(size)


async def _events(reader: asyncio.StreamReader, until: str) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    while not any(e["type"] == until for e in seen):
        op, payload = await _server_frame(reader)
        assert op == OP_TEXT, (op, payload)
        seen += [json.loads(line) for line in payload.split(b"\n")]
    return seen


# --- HTTP through the pipe ----------------------------------------------------------------------------------

async def test_http_requests_reach_quart_through_the_pipe_with_keep_alive(storm_dev_server: str) -> None:
    two = (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
           b"GET /openapi.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer = await _http(storm_dev_server, two)
    assert answer.count(b"HTTP/1.1 200") == 2  # both answered on one connection
    assert b'"status":"ok"' in answer and b'"openapi"' in answer  # the large OpenAPI document came whole


async def test_a_request_body_reaches_the_tenants_api_and_errors_come_back(storm_dev_server: str) -> None:
    token = _token(storm_dev_server, "alice")
    body = json.dumps({"slug": "Not A Slug!", "name": "x"}).encode()
    raw = (b"POST /v1/workspaces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
           b"Authorization: Bearer " + token.encode() + b"\r\nContent-Length: " + str(len(body)).encode()
           + b"\r\n\r\n" + body)
    answer = await _http(storm_dev_server, raw)
    assert answer.startswith(b"HTTP/1.1 400") and b'"field":"slug"' in answer.replace(b" ", b"")


async def test_an_upgrade_on_a_kept_alive_http_connection_is_not_served_by_hypercorn(storm_dev_server: str) -> None:
    """The front door is the only WebSocket path (ADR 0007, amended): an upgrade sent as the second request of
    a piped connection reaches Hypercorn, whose app has no WebSocket route."""
    two = (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
           b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: " + KEY.encode() + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    reader, writer = await asyncio.open_connection(*_addr(storm_dev_server))
    writer.write(two)
    answer = b""
    try:
        while b"HTTP/1.1 404" not in answer:
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            if not chunk:
                break
            answer += chunk
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 404" in answer and b" 101 " not in answer


async def test_malformed_and_oversized_request_heads_are_answered_by_the_front_door(storm_dev_server: str) -> None:
    assert (await _http(storm_dev_server, b"NONSENSE\r\n\r\n")).startswith(b"HTTP/1.1 400")
    big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n"
    assert (await _http(storm_dev_server, big)).startswith(b"HTTP/1.1 431")


# --- the WebSocket handshake --------------------------------------------------------------------------------

@pytest.mark.parametrize(("headers", "status"), [
    (b"Sec-WebSocket-Key: " + KEY.encode() + b"\r\nSec-WebSocket-Version: 8\r\n", b"426"),
    (b"Sec-WebSocket-Version: 13\r\n", b"400"),
])
async def test_bad_upgrades_get_the_status_the_rfc_prescribes(storm_dev_server: str, headers: bytes,
                                                               status: bytes) -> None:
    answer = await _http(storm_dev_server, b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                                           b"Connection: Upgrade\r\n" + headers + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 " + status)
    if status == b"426":
        assert b"Sec-WebSocket-Version: 13" in answer


async def test_a_foreign_origin_is_refused_with_403_before_the_upgrade(storm_dev_server: str) -> None:
    request = (b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Origin: https://evil.example\r\nSec-WebSocket-Key: " + KEY.encode()
               + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    answer = await _http(storm_dev_server, request)
    assert answer.startswith(b"HTTP/1.1 403") and b'"code":"forbidden"' in answer


async def test_connections_per_address_over_the_limit_get_429(tmp_path: Any) -> None:
    port = free_port()
    env = {**os.environ, "STORM_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/l.db",
           "STORM_MAX_CONNECTIONS_PER_IP": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "storm_cli", "dev", "--port", str(port)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            if healthy(f"{base}/healthz"):
                break
            await asyncio.sleep(0.1)
        held = [await _upgraded(base), await _upgraded(base)]
        third = await _http(base, b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                  b"Sec-WebSocket-Key: " + KEY.encode() + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        assert third.startswith(b"HTTP/1.1 429") and b"Retry-After: 5" in third
        held[0][1].close()  # one leaves: a place is free again
        await asyncio.sleep(0.3)
        again = await _upgraded(base)
        again[1].close()
        held[1][1].close()
    finally:
        proc.terminate()
        proc.wait(timeout=15)


# --- frames ------------------------------------------------------------------------------------------------

async def test_ping_gets_pong_and_fragmented_text_is_one_command(storm_dev_server: str) -> None:
    reader, writer = await _upgraded(storm_dev_server)
    try:
        writer.write(client_frame(OP_PING, b"are you there"))
        assert await _server_frame(reader) == (OP_PONG, b"are you there")
        auth = json.dumps({"op": "auth", "token": _token(storm_dev_server, "bob")}).encode()
        half = len(auth) // 2
        writer.write(client_frame(OP_TEXT, auth[:half], fin=False) + client_frame(OP_PING, b"")
                     + client_frame(OP_CONTINUATION, auth[half:]))
        assert (await _server_frame(reader))[0] == OP_PONG  # the ping in the middle is answered at once
        assert any(e["type"] == "hello" for e in await _events(reader, "hello"))
    finally:
        writer.close()


async def test_the_close_handshake_is_answered_with_the_peers_code(storm_dev_server: str) -> None:
    reader, writer = await _upgraded(storm_dev_server)
    writer.write(client_frame(OP_CLOSE, (1000).to_bytes(2, "big") + b"bye"))
    op, payload = await _server_frame(reader)
    assert (op, int.from_bytes(payload[:2], "big")) == (OP_CLOSE, 1000)
    assert await asyncio.wait_for(reader.read(), 5) == b""  # and the server ends the TCP connection
    writer.close()


@pytest.mark.parametrize(("frame", "code"), [
    (bytes((0x81, 0x02)) + b"hi", 1002),  # unmasked
    (client_frame(OP_TEXT, b"\xff\xfe"), 1007),  # not UTF-8
    (client_frame(OP_TEXT, b"x", rsv=0x40), 1002),  # compressed, but nothing was negotiated
])
async def test_protocol_violations_close_with_the_rfc_code(storm_dev_server: str, frame: bytes, code: int) -> None:
    reader, writer = await _upgraded(storm_dev_server)
    try:
        writer.write(frame)
        op, payload = await _server_frame(reader)
        assert (op, int.from_bytes(payload[:2], "big")) == (OP_CLOSE, code)
    finally:
        writer.close()


async def test_a_binary_message_gets_an_error_event_not_a_crash(storm_dev_server: str) -> None:
    c = await Client.connect(storm_dev_server, "dave")
    try:
        await c.ws.send(b"\x00\x01binary")
        error = await c.wait_for("error")
        assert error["code"] in ("malformed", "bad_request")
        await c.send(op="ping", id=5)
        assert (await c.wait_for("pong"))["id"] == 5  # the session goes on
    finally:
        await c.ws.close()


async def test_a_client_can_publish_and_receive_through_the_websockets_library(storm_dev_server: str) -> None:
    """The library's own handshake, masking and permessage-deflate offer (which the front door declines)."""
    a = await Client.connect(storm_dev_server, "alice")
    b = await Client.connect(storm_dev_server, "bob")
    try:
        for c in (a, b):
            await c.send(op="subscribe", id=1, channel=GENERAL)
            await c.wait_for("subscribed")
        await a.send(op="publish", id=2, channel=GENERAL, cmid="fd-1", text="é" * 3000)
        got = await b.wait_for("message")
        assert got["text"] == "é" * 3000
        assert a.ws.protocol.extensions == []  # nothing negotiated
    finally:
        await a.ws.close()
        await b.ws.close()
        with pytest.raises(websockets.ConnectionClosed):
            await b.ws.recv()


async def test_a_deep_tmpdir_does_not_break_hypercorns_unix_socket(tmp_path: Any) -> None:
    """AF_UNIX paths are limited to ~108 bytes: with a deep TMPDIR (CI runners set them) the private socket
    goes under /tmp instead, and HTTP still reaches Quart through the pipe."""
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    port = free_port()
    env = {**os.environ, "STORM_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/t.db", "TMPDIR": str(deep)}
    log = tmp_path / "stderr.log"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "storm_cli", "dev", "--port", str(port)], cwd=ROOT,
                                env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        for _ in range(300):
            if healthy(f"http://127.0.0.1:{port}/healthz") or proc.poll() is not None:
                break
            await asyncio.sleep(0.1)
        assert healthy(f"http://127.0.0.1:{port}/healthz"), log.read_text(errors="replace")[-2000:]
    finally:
        proc.terminate()
        proc.wait(timeout=15)
