"""`storm cluster` on the real services: a message published through gateway-1 reaches a client of
gateway-2 (a different process: the only path between them is Pulsar) and the consumers process writes it
to PostgreSQL.  See docs/operations.md ("`make run-cluster`").

Needs PostgreSQL, Pulsar and Hazelcast (fixtures in tests/conftest.py: skipped locally when missing, failed
under CI=true) and the Pulsar broker adapter in storm/bootstrap.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from storm_tools.seed import channel_id
from storm_tools.verify import free_ports

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 120.0
GENERAL = channel_id("demo", "general")


@pytest.fixture
def cluster(pg_url: str, pulsar_urls: tuple[str, str], hazelcast_members: str) -> Iterator[dict[str, int]]:
    gw1, gw2, api, consumers = free_ports(4)
    service_url, admin_url = pulsar_urls
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "STORM_PULSAR_URL": service_url,
           "STORM_PULSAR_ADMIN_URL": admin_url, "STORM_HAZELCAST_MEMBERS": hazelcast_members}
    proc = subprocess.Popen(
        [sys.executable, "-m", "storm_cli", "cluster", "--no-services", "--database-url", pg_url,
         "--gateway-ports", f"{gw1},{gw2}", "--api-port", str(api), "--consumers-port", str(consumers)],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    seen: list[str] = []
    running = threading.Event()

    def read() -> None:  # keep reading: a full pipe would block `storm cluster` and its children
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if "press Ctrl-C" in line:
                running.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if not running.wait(READY_TIMEOUT_S):
            pytest.fail("storm cluster did not start:\n" + "".join(seen[-80:]))
        yield {"gateway-1": gw1, "gateway-2": gw2, "api": api, "consumers": consumers}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=5)
        proc.stdout.close()


def _token(port: int, user: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/dev/token?user={user}&workspace=demo", timeout=5) as r:
        return str(json.loads(r.read())["token"])


class Client:
    def __init__(self, ws: Any) -> None:
        self.ws = ws

    @classmethod
    async def connect(cls, port: int, user: str) -> Client:
        client = cls(await websockets.connect(f"ws://127.0.0.1:{port}/ws", origin=f"http://127.0.0.1:{port}"))
        await client.send(op="auth", token=_token(port, user))
        await client.wait_for("hello")
        return client

    async def send(self, **frame: Any) -> None:
        await self.ws.send(json.dumps(frame))

    async def wait_for(self, type_: str, timeout: float = 20.0, **match: Any) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            frame = await asyncio.wait_for(self.ws.recv(), max(0.01, deadline - time.monotonic()))
            for part in str(frame).split("\n"):
                event = json.loads(part)
                if event["type"] == type_ and all(event.get(k) == v for k, v in match.items()):
                    return event


async def test_a_message_crosses_gateways_through_pulsar_and_is_persisted(cluster: dict[str, int],
                                                                          pg_url: str) -> None:
    alice = await Client.connect(cluster["gateway-1"], "alice")
    bob = await Client.connect(cluster["gateway-2"], "bob")
    try:
        for client in (alice, bob):
            await client.send(op="subscribe", id=1, channel=str(GENERAL))
            await client.wait_for("subscribed", id=1)
        text_sent = f"across gateways {uuid.uuid4().hex[:8]}"

        await alice.send(op="publish", id=2, channel=str(GENERAL), cmid=uuid.uuid4().hex[:16], text=text_sent)
        ack = await alice.wait_for("ack", id=2)
        got = await bob.wait_for("message", id=ack["message_id"])

        assert got["text"] == text_sent
    finally:
        await alice.ws.close()
        await bob.ws.close()

    engine = create_async_engine(pg_url)
    try:
        body = None
        deadline = time.monotonic() + 30
        while body is None and time.monotonic() < deadline:
            async with engine.connect() as conn:
                body = (await conn.execute(text("SELECT body FROM messages WHERE id = :id"),
                                           {"id": uuid.UUID(ack["message_id"])})).scalar()
            if body is None:
                await asyncio.sleep(0.5)
        assert body == text_sent
    finally:
        await engine.dispose()
