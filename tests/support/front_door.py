"""In-process WebSocket tests through the production path: the app's own front door (gateway/frontdoor.py) on a
real socket on 127.0.0.1, and a small client over the one RFC 6455 codec (gateway/frames.py).

``async with app.test_app(), front_door(app) as door:`` runs the app's start-up (services, hub) and opens a
:class:`~gateway.frontdoor.FrontDoor` for its gateway and handshake guard on a free port; REST calls keep
using Quart's test client.  ``async with WsClient(door, origin=..., client="127.0.0.2") as ws:`` opens a
WebSocket from that local address (the guard counts per peer address: any of 127.0.0.0/8 works on Linux),
raising :class:`Refused` when the upgrade is answered with an HTTP status instead of 101.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from gateway import frames as f
from gateway.frontdoor import FrontDoor


class Refused(Exception):
    def __init__(self, status: int, headers: dict[str, str]) -> None:
        super().__init__(status)
        self.status = status
        self.headers = headers


class Closed(Exception):
    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(code)
        self.code = code
        self.reason = reason


@contextlib.asynccontextmanager
async def front_door(app: Any) -> AsyncIterator[FrontDoor]:
    """The app's front door on 127.0.0.1, any free port; call inside ``app.test_app()`` (the gateway runs)."""
    door = FrontDoor(app.extensions["gateway"], app.extensions["guard"], str(Path("/nonexistent/http.sock")),
                     host="127.0.0.1", port=0)
    await door.start()
    try:
        yield door
    finally:
        await door.close()


class WsClient:
    def __init__(self, door: FrontDoor, *, path: str = "/ws", origin: str | None = None, client: str = "127.0.0.1",
                 host: str = "127.0.0.1:8000") -> None:
        self._door = door
        self._path = path
        self._origin = origin
        self._client = client
        self._host = host
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._frames = f.FrameReader(1 << 24, masked=False)
        self._ready: collections.deque[f.Message] = collections.deque()
        self.accepted = False

    async def __aenter__(self) -> WsClient:
        self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self._door.port,
                                                                   local_addr=(self._client, 0))
        key = f.new_key()
        headers = (("Origin", self._origin),) if self._origin is not None else ()
        self._writer.write(f.upgrade_request(self._path, self._host, key, headers))
        head = await asyncio.wait_for(self._reader.readuntil(b"\r\n\r\n"), 5)
        response = f.parse_response_head(head[:-4])
        if not response.upgraded(key):
            self._writer.close()
            raise Refused(response.status, response.headers)
        self.accepted = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._reader is not None and self._writer is not None
        if not self._writer.is_closing():
            with contextlib.suppress(ConnectionError):
                self._writer.write(f.client_frame(f.OP_CLOSE, f.close_payload(1000)))
                with contextlib.suppress(TimeoutError):  # the server answers, then ends the TCP connection
                    while await asyncio.wait_for(self._reader.read(65536), 5):
                        pass
        self._writer.close()

    async def send(self, frame: dict[str, Any] | str) -> None:
        assert self._writer is not None
        text = frame if isinstance(frame, str) else json.dumps(frame)
        self._writer.write(f.client_frame(f.OP_TEXT, text.encode()))

    async def _message(self) -> f.Message:
        assert self._reader is not None
        while not self._ready:
            data = await self._reader.read(65536)
            if not data:
                raise Closed(1006, "the connection ended without a close frame")
            self._ready.extend(self._frames.feed(data))
        return self._ready.popleft()

    async def receive(self, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The events of the next text frame; raises Closed when the server closes instead."""
        while True:
            message = await asyncio.wait_for(self._message(), timeout)
            if message.opcode == f.OP_CLOSE:
                raise Closed(message.close_code or 1005, str(message.data))
            if message.opcode == f.OP_TEXT:
                return [json.loads(part) for part in str(message.data).split("\n")]

    async def event(self, timeout: float = 5.0) -> dict[str, Any]:
        return (await self.receive(timeout))[0]

    async def close_code(self, within: float) -> int:
        """Read until the server closes; it must close within ``within`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            try:
                await self.receive(max(0.001, deadline - loop.time()))
            except Closed as closed:
                return closed.code
