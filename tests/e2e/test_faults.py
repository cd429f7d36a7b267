"""Fault tests on the real services (issue 5, item 6; docs/delivery.md, "Fault tests").

* SIGKILL gateway A while two clients publish 1 000 messages each, restart it: every acknowledged message
  reaches every member once, in order, and is stored once.
* SIGKILL the consumers process while it persists, restart it: the database holds each message once.
* SIGTERM gateway B while a client publishes as fast as it can: the client is closed with 1012 and a
  ``retry_ms`` hint, every publish that reached the log was acknowledged first, and the process exits
  within the drain budget.
* Restart the Pulsar broker while clients publish: publishing resumes and acknowledged messages survive
  (runs last: see conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
import time

import pytest
from storm_sdk import ClientOptions, Message, StormClient

from storm_tools.verify import ROOT, ScenarioOptions, run_gateway_kill, scenario_users
from tests.e2e.test_topology import stored_rows, wait_stored
from tests.support.topology import DRAIN_TIMEOUT_S, Topology

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

MESSAGES = 1000  # per publisher


async def test_gateway_sigkill_midway_loses_duplicates_and_reorders_nothing(live: Topology) -> None:
    ws = await live.provision(scenario_users(1))
    gateway_a = live.procs["gateway-a"]
    pid_before = gateway_a.pid

    async def kill_and_restart() -> None:
        await asyncio.to_thread(gateway_a.kill)
        gateway_a.start()
        await asyncio.to_thread(gateway_a.wait_ready)

    async def stored_log() -> list[tuple[str, str]]:
        rows = await wait_stored(live.database_url, ws.slug, 2 * MESSAGES)
        return [(message_id, cmid) for message_id, cmid, _ in rows]

    result = await run_gateway_kill(ws, {"a": live.procs["gateway-a"].ws_url, "b": live.procs["gateway-b"].ws_url},
                                    kill_and_restart, ScenarioOptions(messages=MESSAGES, rate=200.0, listeners=1),
                                    stored_log)

    assert gateway_a.pid != pid_before, "gateway A was not killed and restarted"
    assert result["acked"] == 2 * MESSAGES, result
    assert result["lost"] == 0, result
    assert result["duplicates"] == 0, result
    assert result["inversions"] == 0, result
    assert result["same_order"], result
    assert result["delivered"] == result["members"] * result["acked"], result
    assert result["not_reconnected"] == 0 and result["reconnect_s_p99"] <= 10, result
    rows = await stored_rows(live.database_url, ws.slug)
    cmids = [cmid for _, cmid, _ in rows]
    missing = sorted({f"{u}-{i:06d}" for u in ("alice", "bob") for i in range(MESSAGES)} - set(cmids))
    assert not missing, f"{len(missing)} acked messages never stored, e.g. {missing[:5]} … {missing[-5:]}; " \
                        f"consumers: {consumers_stats(live)}; topic: {topic_stats(live, ws.slug, ws.channel)}"
    assert len(cmids) == len(set(cmids)) == 2 * MESSAGES, "each message stored once"


async def test_consumers_sigkill_mid_batch_stores_each_message_once(live: Topology) -> None:
    ws = await live.provision(("alice", "bob"))
    consumers = live.procs["consumers"]
    options = ClientOptions(outbox_max=MESSAGES + 10)
    alice = StormClient(live.procs["gateway-a"].ws_url, ws.token_provider("alice"), options)
    bob = StormClient(live.procs["gateway-b"].ws_url, ws.token_provider("bob"), options)
    async with alice, bob:
        pending = []
        for i in range(MESSAGES):
            pending.append(alice.publish(ws.channel, f"a{i}", cmid=f"alice-{i:06d}"))
            pending.append(bob.publish(ws.channel, f"b{i}", cmid=f"bob-{i:06d}"))
        # kill while the worker is part-way through the stream (rows exist, more are coming)
        deadline = time.monotonic() + 60
        while len(await stored_rows(live.database_url, ws.slug)) < 100:
            assert time.monotonic() < deadline, f"the consumers never started persisting: {consumers_stats(live)}"
            await asyncio.sleep(0.05)
        await asyncio.to_thread(consumers.kill)
        at_kill = len(await stored_rows(live.database_url, ws.slug))
        acked = [await p.wait(timeout=60) for p in pending]
    assert at_kill < 2 * MESSAGES, "the consumers had stored everything before the kill: nothing was tested"

    consumers.start()
    await asyncio.to_thread(consumers.wait_ready)
    rows = await wait_stored(live.database_url, ws.slug, 2 * MESSAGES, timeout=90)

    assert sorted(r[0] for r in rows) == sorted(str(p.message_id) for p in acked)
    assert len({r[1] for r in rows}) == len(rows) == 2 * MESSAGES
    assert len({r[2] for r in rows}) == len(rows)


async def test_gateway_sigterm_drains_finishing_in_flight_acks_with_1012_and_a_retry_hint(live: Topology) -> None:
    import websockets

    from storm.adapters.pulsar_broker import PulsarBroker
    from storm.bootstrap import pulsar_settings
    from storm.config import Config
    from storm.ports.clock import SystemClock
    from storm_tools.verify import read_channel_log

    ws = await live.provision(("alice", "bob"))
    gateway_b = live.procs["gateway-b"]
    conn = await websockets.connect(gateway_b.ws_url)
    await conn.send(json.dumps({"op": "auth", "token": ws.token_provider("alice")()}))
    acked: set[str] = set()
    sent = 0
    window = 20  # publishes in flight: some are always between the gateway and Pulsar
    close: list[tuple[int, str]] = []

    async def read() -> None:
        try:
            async for frame in conn:
                for line in str(frame).split("\n"):
                    event = json.loads(line)
                    if event["type"] == "ack" and event.get("cmid"):
                        acked.add(event["cmid"])
        except websockets.ConnectionClosed:
            pass
        close.append((conn.close_code or 0, conn.close_reason or ""))

    reader = asyncio.create_task(read())
    signalled_at = 0.0
    while not close and sent < 5000:
        if sent - len(acked) >= window:
            await asyncio.sleep(0.001)
            continue
        try:
            await conn.send(json.dumps({"op": "publish", "id": sent + 1, "channel": ws.channel,
                                        "cmid": f"drain-{sent:05d}", "text": f"m{sent}"}))
        except websockets.ConnectionClosed:
            break
        sent += 1
        if sent == 200:
            signalled_at = time.monotonic()
            gateway_b.signal(signal.SIGTERM)
    await asyncio.wait_for(reader, 30)
    exit_code = await asyncio.to_thread(gateway_b.popen.wait, 30)  # type: ignore[union-attr]
    exited_after = time.monotonic() - signalled_at

    code, reason = close[0]
    assert code == 1012, close
    hint = re.search(r"retry_ms=(\d+)", reason)
    assert hint and 0 <= int(hint.group(1)) <= 5000, reason  # STORM_DRAIN_RECONNECT_SPREAD_S default: 5 s
    assert exit_code == 0, gateway_b.log_tail(30)
    assert exited_after < DRAIN_TIMEOUT_S + 10, f"took {exited_after:.1f} s to exit"

    broker = PulsarBroker(pulsar_settings(Config.from_env(live.env)), SystemClock())
    await broker.start()
    try:
        in_log = {cmid for _, cmid in await read_channel_log(broker, ws.slug, ws.channel)}
    finally:
        await broker.stop()
    assert len(acked) >= 200 - window, "the drain began before the publishes it should finish"
    assert in_log == acked, (f"in the log without an ack: {sorted(in_log - acked)[:5]}; "
                             f"acked but not in the log: {sorted(acked - in_log)[:5]}")


def consumers_stats(live: Topology) -> str:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{live.procs['consumers'].http_url}/healthz", timeout=5) as response:
            return response.read().decode()
    except OSError as exc:
        return repr(exc)


def topic_stats(live: Topology, slug: str, channel: str) -> str:
    """The persistence subscription's view of a channel topic, from Pulsar's admin API (for failure reports)."""
    import json
    import urllib.request

    url = f"{live.pulsar_admin_url}/admin/v2/persistent/{slug}/channels/{channel}/stats"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            stats = json.loads(response.read())
    except OSError as exc:
        return repr(exc)
    keep = ("msgBacklog", "unackedMessages", "type", "blockedSubscriptionOnUnackedMsgs",
            "lastMarkDeleteAdvancedTimestamp", "consumers", "keySharedMode", "consumersAfterMarkDeletePosition",
            "msgInCounter")
    subs = {name: {k: v for k, v in sub.items() if k in keep} for name, sub in stats.get("subscriptions", {}).items()}
    return json.dumps({"msgInCounter": stats.get("msgInCounter"), "publishers": len(stats.get("publishers", [])),
                       "subscriptions": subs})


def _services(action: str) -> None:
    subprocess.run(["bash", str(ROOT / "scripts" / "services.sh"), action, "pulsar"], cwd=ROOT, check=True,
                   timeout=300, stdout=subprocess.DEVNULL)


async def _collect(client: StormClient, into: list[Message]) -> None:
    async for event in client.events():
        if isinstance(event, Message):
            into.append(event)


async def test_pulsar_restart_publishing_resumes_and_acked_messages_survive(live: Topology) -> None:
    ws = await live.provision(("alice", "bob"))
    options = ClientOptions(outbox_max=500, request_timeout_s=120)
    alice = StormClient(live.procs["gateway-a"].ws_url, ws.token_provider("alice"), options)
    bob = StormClient(live.procs["gateway-b"].ws_url, ws.token_provider("bob"), options)
    got: list[Message] = []
    try:
        async with alice, bob:
            task = asyncio.create_task(_collect(bob, got))
            await alice.subscribe(ws.channel)
            await bob.subscribe(ws.channel)
            before = [alice.publish(ws.channel, f"before {i}", cmid=f"before-{i:04d}") for i in range(100)]
            before_acked = [await p.wait(timeout=30) for p in before]

            await asyncio.to_thread(_services, "down")
            during = [alice.publish(ws.channel, f"during {i}", cmid=f"during-{i:04d}") for i in range(50)]
            await asyncio.to_thread(_services, "up")
            restarted_at = time.monotonic()
            after = [alice.publish(ws.channel, f"after {i}", cmid=f"after-{i:04d}") for i in range(50)]
            resumed = [await p.wait(timeout=120) for p in during + after]
            resume_s = time.monotonic() - restarted_at
            ids = {p.message_id for p in before_acked + resumed}
            deadline = time.monotonic() + 60
            while not ids <= {m.id for m in got} and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            task.cancel()
    finally:
        with contextlib.suppress(Exception):
            await asyncio.to_thread(_services, "up")  # whatever happened, Pulsar runs again

    assert len(ids) == 200, "a message was acknowledged twice under different ids"
    assert ids <= {m.id for m in got}, f"{len(ids - {m.id for m in got})} acked messages never reached bob"
    offsets = [m.offset for m in got]
    assert offsets == sorted(set(offsets)), "bob's offsets are not strictly increasing"
    # the messages acked before the restart are still in the broker's log: a new client replays them
    carol = StormClient(live.procs["gateway-b"].ws_url, ws.token_provider("bob"), ClientOptions())
    replayed: list[Message] = []
    async with carol:
        task = asyncio.create_task(_collect(carol, replayed))
        sub = await carol.subscribe(ws.channel, since=min(p.offset for p in before_acked) - 1)
        deadline = time.monotonic() + 30
        while len(replayed) < 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        task.cancel()
    assert sub.recovered
    assert {m.id for m in replayed} == ids
    rows = await wait_stored(live.database_url, ws.slug, 200)
    assert sorted(r[0] for r in rows) == sorted(str(i) for i in ids)
    assert resume_s < 120
