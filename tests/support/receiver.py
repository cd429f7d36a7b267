"""A real HTTP receiver for webhook tests: an asyncio server on 127.0.0.1 that verifies each request's
signature the way docs/security.md tells receivers to, and answers as each path is told to."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from storm.webhooks import HEADER_ID, verify


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    valid: bool  # the signature checked out with the path's secret
    at: float = field(default_factory=time.monotonic)

    @property
    def event_id(self) -> str:
        return self.headers.get(HEADER_ID.lower(), "")


Behaviour = Callable[[int], Any]  # the n-th request (1-based) to the path -> status, or (status, delay_s)


def _accept(n: int) -> int:
    return 200


@dataclass
class Receiver:
    secrets: dict[str, str] = field(default_factory=dict)  # path -> secret
    behaviours: dict[str, Behaviour] = field(default_factory=dict)  # path -> answer (default 200)
    received: list[Received] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> Receiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    async def wait(self, path: str, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.at(path)) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{path}: {len(self.at(path))} of {count} requests within {timeout}s")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), remaining)
        return self.at(path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            secret = self.secrets.get(path, "")
            valid = method == "POST" and bool(secret) and verify(secret, headers, body, time.time())
            self.received.append(Received(path, headers, body, valid))
            self._arrived.set()
            answer = self.behaviours.get(path, _accept)(len(self.at(path)))
            status, delay = answer if isinstance(answer, tuple) else (answer, 0.0)
            if not valid:
                status = 401  # what a receiver does with a bad signature
            if delay:
                await asyncio.sleep(delay)
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
