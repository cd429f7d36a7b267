"""Every catalogue metric really arrives, with its tags, from the processes that own it (docs/observability.md).

Runs the gateway (two of them), the tenants API and the consumers as ``storm serve`` processes on the real
services (PostgreSQL, Pulsar, Hazelcast; tests/support/topology.py), with DogStatsD pointed at a UDP
receiver in this test, drives connects, publishes, a resume, an auth failure, a rate-limit refusal and an
outgoing-queue overflow over WebSockets, and then checks the points received against
``storm/metrics_catalogue.py``: each metric from each role that emits it, every point with the process tags
and the catalogue's tags and values only, and the driven events counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from db.admin import create_database, drop_database
from storm.metrics_catalogue import CATALOGUE, PROCESS_TAGS
from storm_tools.slo import evaluate, load
from storm_tools.statsd import Collector
from tests.support.topology import READY_TIMEOUT_S, Topology

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

ENV_TAG = "emission-test"


class Receiver:
    """DogStatsD on a UDP port, read by a thread (the topology's calls block the test's thread)."""

    def __init__(self) -> None:
        self.collector = Collector()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.collector.feed(data)

    def snapshot(self) -> Collector:
        with self._lock:
            copy = Collector()
            copy.points.extend(self.collector.points)
            return copy

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@contextlib.contextmanager
def metered_topology(pg_url: str, pulsar_urls: tuple[str, str], hazelcast_members: str,
                     port: int) -> Iterator[Topology]:
    service_url, admin_url = pulsar_urls
    database_url = asyncio.run(create_database(pg_url, f"storm_mx_{uuid.uuid4().hex[:10]}"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "STORM_MODE": "embedded", "STORM_IDENTITY": "dev",
           "STORM_BROKER": "pulsar", "STORM_CACHE": "hazelcast", "STORM_DATABASE_URL": database_url,
           "STORM_PULSAR_URL": service_url, "STORM_PULSAR_ADMIN_URL": admin_url,
           "STORM_HAZELCAST_MEMBERS": hazelcast_members, "STORM_SEED_DEMO": "false", "STORM_DRAIN_TIMEOUT_S": "5",
           "DD_AGENT_HOST": "127.0.0.1", "DD_DOGSTATSD_PORT": str(port), "DD_ENV": ENV_TAG,
           "STORM_METRICS_INTERVAL_S": "0.5",
           "STORM_PUBLISH_RATE": "1", "STORM_PUBLISH_BURST": "5"}  # a connection's 6th quick publish is refused
    env.pop("DD_DOGSTATSD_URL", None)
    env.pop("DD_SERVICE", None)
    topo = Topology(env, database_url, admin_url, Path(tempfile.mkdtemp(prefix="storm-metrics-")))
    # gateway-b queues at most one event and writes every 200 ms: a burst overflows its subscribers (4008)
    topo.procs["gateway-b"].env.update({"STORM_OUTBOX_MAX_EVENTS": "1", "STORM_WRITE_DELAY_S": "0.2"})
    try:
        from db.migrate import upgrade_async

        asyncio.run(upgrade_async(database_url))
        topo.start()
        yield topo
    finally:
        with contextlib.suppress(Exception):
            asyncio.run(topo.delete_workspaces())
        topo.stop()
        with contextlib.suppress(Exception):
            asyncio.run(drop_database(database_url))


class Client:
    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []
        self.next_id = 0

    @classmethod
    async def open(cls, url: str, token: str) -> Client:
        client = cls(await websockets.connect(url))
        await client.send({"op": "auth", "token": token})
        await client.wait(lambda e: e["type"] == "hello")
        return client

    async def send(self, frame: dict[str, Any]) -> int:
        self.next_id += 1
        if frame["op"] != "auth":
            frame = {**frame, "id": self.next_id}
        await self.ws.send(json.dumps(frame))
        return self.next_id

    async def wait(self, predicate: Any, timeout: float = 15.0) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            for event in self.events:
                if predicate(event):
                    self.events.remove(event)
                    return event
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"no matching event within {timeout} s; got {self.events[-5:]}")
            frame = await asyncio.wait_for(self.ws.recv(), remaining)
            self.events.extend(json.loads(line) for line in str(frame).split("\n") if line)

    async def request(self, frame: dict[str, Any], kind: str = "ack") -> dict[str, Any]:
        rid = await self.send(frame)
        return await self.wait(lambda e: e.get("id") == rid and e["type"] in (kind, "error"))


async def drive(topo: Topology) -> None:
    ws = await topo.provision(("alice", "bob"))  # from the pool the consumers know: its messages persist
    a_url, b_url = topo.procs["gateway-a"].ws_url, topo.procs["gateway-b"].ws_url
    alice = await Client.open(a_url, topo.token("alice", ws.slug))
    subscribed = await alice.request({"op": "subscribe", "channel": ws.channel}, "subscribed")
    head = subscribed["offset"]
    for i in range(3):  # three acked publishes: acks, deliveries, broker and cache latencies, a batch persisted
        ack = await alice.request({"op": "publish", "channel": ws.channel, "cmid": f"m-{i}", "text": f"hello {i}"})
        assert ack["type"] == "ack", ack
    # a resume: bob subscribes from the offset before them and gets the three replayed
    bob = await Client.open(a_url, topo.token("bob", ws.slug))
    resumed = await bob.request({"op": "subscribe", "channel": ws.channel, "since": head}, "subscribed")
    assert resumed.get("recovered", True) is True and resumed.get("replayed") == 3, resumed  # omit_defaults
    # a rate-limit refusal: alice has 2 of her 5-burst left, at 1 a second
    refusals = []
    for i in range(4):
        refusals.append(await alice.request({"op": "publish", "channel": ws.channel, "cmid": f"r-{i}", "text": "x"}))
    assert any(r["type"] == "error" and r["code"] == "rate_limited" for r in refusals), refusals
    # an auth failure
    intruder = await websockets.connect(a_url)
    await intruder.send(json.dumps({"op": "auth", "token": "not-a-token"}))
    with contextlib.suppress(websockets.ConnectionClosed):
        while True:
            await asyncio.wait_for(intruder.recv(), 10)
    assert intruder.close_code == 4001
    # an overflow on gateway-b: bob's second connection gets a burst it cannot queue
    slow = await Client.open(b_url, topo.token("bob", ws.slug))
    with contextlib.suppress(websockets.ConnectionClosed):  # the subscribe's own presence.join may overflow it
        await slow.request({"op": "subscribe", "channel": ws.channel}, "subscribed")
    bursts = [bob.send({"op": "publish", "channel": ws.channel, "cmid": f"b-{i}", "text": "burst"}) for i in range(4)]
    await asyncio.gather(*bursts)
    with contextlib.suppress(websockets.ConnectionClosed, TimeoutError, AssertionError):
        await slow.wait(lambda e: False, timeout=10)
    assert slow.ws.close_code == 4008, slow.ws.close_code
    for client in (alice, bob):
        await client.ws.close()


def wait_for_points(receiver: Receiver, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not receiver.snapshot().select(name):
        if time.monotonic() > deadline:
            heard = receiver.snapshot()
            by_service = {svc: sorted({p.name for p in heard.points if p.tag("service") == svc})
                          for svc, _ in heard.processes()}
            raise AssertionError(f"{name} never arrived; heard {by_service}")
        time.sleep(0.25)


def test_every_catalogue_metric_arrives_with_its_tags(pg_url: str, pulsar_urls: tuple[str, str],
                                                      hazelcast_members: str) -> None:
    receiver = Receiver()
    try:
        with metered_topology(pg_url, pulsar_urls, hazelcast_members, receiver.port) as topo:
            try:
                asyncio.run(drive(topo))
                wait_for_points(receiver, "storm.consumer.batch_size", READY_TIMEOUT_S)
                time.sleep(2.0)  # a few more flushes from every process
                collector = receiver.snapshot()
                check_points(collector)
            except BaseException:
                print(topo.logs())
                raise
    finally:
        receiver.close()


def check_points(collector: Collector) -> None:
    missing = []
    for metric in CATALOGUE:
        points = collector.select(metric.name)
        for role in metric.roles:
            if not [p for p in points if p.tag("service") == role]:
                missing.append(f"{metric.name} from {role}")
        for p in points:
            assert p.kind == metric.kind, (metric.name, p)
            for tag in ("service", "instance"):
                assert p.tag(tag), (metric.name, tag, p.tags)
            assert p.tag("env") == ENV_TAG, p.tags
            names = {t.split(":", 1)[0] for t in p.tags} - set(PROCESS_TAGS)
            assert names == set(metric.tag_names), (metric.name, p.tags)
            for tag in metric.tag_names:
                assert p.tag(tag) in metric.allowed(tag), (metric.name, p.tags)
    assert not missing, f"never arrived: {missing}"
    gw = {"service": "gateway"}
    for name, tags in (("storm.gateway.connects", {"result": "ok"}),
                       ("storm.gateway.connects", {"result": "unauthenticated"}),
                       ("storm.auth.failures", {"reason": "invalid_token"}),
                       ("storm.ratelimit.refused", {"scope": "connection"}),
                       ("storm.gateway.resumes", {"recovered": "true"}),
                       ("storm.commands", {"op": "publish", "result": "ok"}),
                       ("storm.commands", {"op": "publish", "result": "rate_limited"}),
                       ("storm.gateway.disconnects", {"code": "4008"}),
                       ("storm.gateway.disconnects", {"code": "4001"}),
                       ("storm.outbox.overflows", {}),
                       ("storm.fanout.deliveries", {})):
        assert collector.total(name, **gw, **tags) > 0, (name, tags)
    assert collector.total("storm.commands", **gw, op="publish", result="ok") >= 3 + 4
    assert collector.values("storm.gateway.resume_gap") and collector.values("storm.publish.ack_latency")
    assert sum(collector.values("storm.consumer.batch_size", service="consumers")) >= 3
    results = {r.id: r for r in evaluate(load(), collector)}
    assert results["connect_success"].value == 100.0  # the refused ones were the clients' fault
    assert results["publish_ack_p99"].value is not None and results["reconnect_steady"].value is not None
