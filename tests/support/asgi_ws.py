"""A WebSocket client that talks ASGI to the app directly (as Hypercorn would), without a socket.

Quart's test client does not send ``websocket.connect``, which the gateway's raw ASGI endpoint waits for,
so the security tests drive the app with this small harness instead.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any


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


class AsgiWs:
    def __init__(self, app: Any, *, path: str = "/ws", origin: str | None = None, client: str = "127.0.0.1",
                 host: str = "127.0.0.1:8000") -> None:
        headers = [(b"host", host.encode())]
        if origin is not None:
            headers.append((b"origin", origin.encode()))
        self.scope = {
            "type": "websocket", "asgi": {"version": "3.0"}, "http_version": "1.1", "scheme": "ws", "path": path,
            "raw_path": path.encode(), "query_string": b"", "root_path": "", "headers": headers,
            "client": (client, 50000), "server": ("127.0.0.1", 8000), "subprotocols": [],
            "extensions": {"websocket.http.response": {}},
        }
        self._app = app
        self._in: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._out: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.accepted = False

    async def __aenter__(self) -> AsgiWs:
        await self._in.put({"type": "websocket.connect"})
        self._task = asyncio.create_task(self._app(self.scope, self._in.get, self._out.put))
        first = await asyncio.wait_for(self._out.get(), 5)
        if first["type"] == "websocket.http.response.start":
            headers = {k.decode(): v.decode() for k, v in first.get("headers", [])}
            await asyncio.wait_for(self._out.get(), 5)  # the body
            raise Refused(first["status"], headers)
        if first["type"] == "websocket.close":
            raise Closed(first.get("code", 1000), first.get("reason", ""))
        assert first["type"] == "websocket.accept", first
        self.accepted = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._in.put({"type": "websocket.disconnect", "code": 1000})
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 5)
            except (asyncio.CancelledError, TimeoutError):
                pass

    async def send(self, frame: dict[str, Any] | str) -> None:
        text = frame if isinstance(frame, str) else json.dumps(frame)
        await self._in.put({"type": "websocket.receive", "text": text})

    async def receive(self, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The events of the next text frame; raises Closed when the server closes instead."""
        message = await asyncio.wait_for(self._out.get(), timeout)
        if message["type"] == "websocket.close":
            raise Closed(message.get("code", 1000), message.get("reason", ""))
        return [json.loads(part) for part in message["text"].split("\n")]

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
