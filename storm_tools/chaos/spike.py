"""A connect spike: many clients of the run's workspace connect (auth -> hello -> subscribe) at once, then
leave; the load a reconnect storm puts on the gateways and the cache (chaos-experiments/connect-spike.json)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from storm_tools.bench.procs import raise_nofile
from storm_tools.bench.wsclient import SubscribingClient, connect
from storm_tools.chaos.driver import Workspace


class _Stats:
    def __init__(self) -> None:
        self.closed = 0
        self.first_error: str | None = None
        self.stopping = False
        self.errors = 0

    def error(self, payload: bytes) -> None:
        self.errors += 1
        self.first_error = self.first_error or payload[:200].decode(errors="replace")


class _Joiner(SubscribingClient):
    def __init__(self, host: str, port: int, token: str, channel: str, stats: _Stats) -> None:
        super().__init__(host, port, b'{"op":"auth","token":"%s"}' % token.encode(), stats)
        self._subscribe = b'{"op":"subscribe","id":1,"channel":"%s"}' % channel.encode()

    def subscribe_frame(self) -> bytes:
        return self._subscribe


async def spike(ws: Workspace, gateways: list[str], count: int, within_s: float) -> dict[str, Any]:
    raise_nofile()
    stats = _Stats()
    tokens = {user: ws.token(user) for user in ws.users}
    opened: list[_Joiner] = []
    latencies: list[float] = []
    failures = 0
    gate = asyncio.Semaphore(200)
    began = time.monotonic()

    async def one(i: int) -> None:
        nonlocal failures
        url = gateways[i % len(gateways)]
        host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
        user = ws.users[i % len(ws.users)]
        channel = ws.channels[(i % len(ws.users)) * len(ws.channels) // len(ws.users)]
        await asyncio.sleep(within_s * i / max(1, count))
        async with gate:
            start = time.monotonic()
            try:
                client = await connect(lambda: _Joiner(host, int(port), tokens[user], channel, stats),
                                       host, int(port), timeout=30)
                opened.append(client)
                await asyncio.wait_for(client.ready, 30)
                latencies.append(time.monotonic() - start)
            except Exception:  # counted: a refused or timed-out join is what the spike measures
                failures += 1

    try:
        await asyncio.gather(*(one(i) for i in range(count)))
    finally:
        stats.stopping = True
        for client in opened:
            with contextlib.suppress(Exception):
                client.close()
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else 0.0
    return {"attempted": count, "joined": len(latencies), "failed": failures, "errors": stats.errors,
            "first_error": stats.first_error, "join_p99_s": round(p99, 3),
            "took_s": round(time.monotonic() - began, 1)}
