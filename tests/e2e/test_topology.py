"""Two gateway processes, one consumers process and the tenants API on Pulsar, Hazelcast and PostgreSQL
(issue 3, item 6).  The only path between gateway A and gateway B is Pulsar; presence crosses through
Hazelcast.  See docs/delivery.md ("Fault tests") and tests/support/topology.py.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from storm_sdk import ClientOptions, Message, StormClient

from storm_tools.verify import Provisioned
from tests.support.topology import Topology, pulsar_tenant_status

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

PER_CLIENT = 40
SETTLE_S = 30.0
PERSIST_TIMEOUT_S = 60.0  # the consumers process finds a new workspace at its next tenant discovery


async def _messages(client: StormClient, into: list[Message]) -> None:
    async for event in client.events():
        if isinstance(event, Message):
            into.append(event)


async def stored_rows(database_url: str, slug: str) -> list[tuple[str, str, int]]:
    """(message id, cmid, offset) of every stored message of workspace ``slug``."""
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(text(
                'SELECT m.id, m.client_msg_id, m."offset" FROM messages m JOIN workspaces w ON w.id = m.workspace_id '
                "WHERE w.slug = :slug ORDER BY m.\"offset\""), {"slug": slug})).all()
    finally:
        await engine.dispose()
    return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]


async def wait_stored(database_url: str, slug: str, count: int, timeout: float = PERSIST_TIMEOUT_S
                      ) -> list[tuple[str, str, int]]:
    deadline = time.monotonic() + timeout
    rows = await stored_rows(database_url, slug)
    while len(rows) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        rows = await stored_rows(database_url, slug)
    await asyncio.sleep(1.0)  # anything beyond `count` (a duplicate) has a moment to show up too
    return await stored_rows(database_url, slug)


def clients(live: Topology, ws: Provisioned) -> tuple[StormClient, StormClient]:
    options = ClientOptions(outbox_max=PER_CLIENT + 10)
    alice = StormClient(live.procs["gateway-a"].ws_url, ws.token_provider("alice"), options)
    bob = StormClient(live.procs["gateway-b"].ws_url, ws.token_provider("bob"), options)
    return alice, bob


async def test_members_on_both_gateways_get_every_message_in_the_same_order_stored_once(live: Topology) -> None:
    ws = await live.provision(("alice", "bob"))
    alice, bob = clients(live, ws)
    got: dict[str, list[Message]] = {"alice": [], "bob": []}
    async with alice, bob:
        tasks = [asyncio.create_task(_messages(c, got[n])) for n, c in (("alice", alice), ("bob", bob))]
        await alice.subscribe(ws.channel)
        await bob.subscribe(ws.channel)
        sent = []
        for i in range(PER_CLIENT):  # interleaved, from both gateways at once
            sent.append(alice.publish(ws.channel, f"a{i}", cmid=f"alice-{i:04d}"))
            sent.append(bob.publish(ws.channel, f"b{i}", cmid=f"bob-{i:04d}"))
        acked = [await p.wait(timeout=SETTLE_S) for p in sent]
        ids = {p.message_id for p in acked}
        deadline = time.monotonic() + SETTLE_S
        while time.monotonic() < deadline and not all(ids <= {m.id for m in g} for g in got.values()):
            await asyncio.sleep(0.1)
        for task in tasks:
            task.cancel()

    offsets = {name: [m.offset for m in msgs] for name, msgs in got.items()}
    assert len(ids) == 2 * PER_CLIENT
    assert {m.id for m in got["alice"]} == ids and {m.id for m in got["bob"]} == ids
    assert offsets["alice"] == offsets["bob"], "the two gateways delivered the channel in different orders"
    assert offsets["alice"] == sorted(set(offsets["alice"])), "offsets not strictly increasing"
    assert [m.id for m in got["alice"]] == [m.id for m in got["bob"]]
    assert sorted(offsets["alice"]) == sorted(p.offset for p in acked), "delivered offsets are not the acked ones"

    rows = await wait_stored(live.database_url, ws.slug, len(ids))
    assert sorted(r[0] for r in rows) == sorted(str(i) for i in ids), "each message stored exactly once"
    assert [r[2] for r in rows] == offsets["alice"], "stored offsets are the delivered ones"


async def test_presence_lists_the_users_of_both_gateways(live: Topology) -> None:
    ws = await live.provision(("alice", "bob"))
    alice, bob = clients(live, ws)
    async with alice, bob:
        await alice.subscribe(ws.channel)
        await bob.subscribe(ws.channel)
        seen: dict[str, set[str]] = {}
        for name, client in (("alice", alice), ("bob", bob)):
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                seen[name] = {u.name for u in (await client.presence(ws.channel)).users}
                if seen[name] >= {"Alice", "Bob"}:
                    break
                await asyncio.sleep(0.2)
        api = await live.api("GET", f"/v1/workspaces/{ws.slug}/channels/{ws.channel}/presence",
                             token=live.token("alice", ws.slug))

    assert seen == {"alice": {"Alice", "Bob"}, "bob": {"Alice", "Bob"}}
    assert api.status_code == 200 and {u["name"] for u in api.json()["users"]} == {"Alice", "Bob"}


async def _cache_entries(members: str, slug: str) -> int:
    """Entries of workspace ``slug`` in every STORM map of Hazelcast (storm/adapters/hazelcast_cache.py)."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        from hazelcast.asyncio import HazelcastClient
        from hazelcast.config import Config as HzConfig

    from storm.adapters import hazelcast_cache as hc

    config = HzConfig()
    config.cluster_name = "storm"
    config.cluster_members = members.split(",")
    client = await HazelcastClient.create_and_start(config)
    try:
        total = 0
        for name in (hc.MAP_DIRECTORY, hc.MAP_KV, hc.MAP_PRESENCE, hc.MAP_COUNTERS, hc.MAP_RATE, hc.MAP_REVOKED):
            m = await client.get_map(name)
            if name == hc.MAP_PRESENCE:
                from hazelcast.predicate import equal

                total += len(await m.key_set(equal("ws", slug)))
            else:
                total += len(await m.key_set(hc._in_workspace(slug)))
        return total
    finally:
        await client.shutdown()


async def test_a_workspace_deleted_through_the_api_is_gone_everywhere(live: Topology, hazelcast_members: str) -> None:
    ws = await live.provision(("alice", "bob"))
    alice, bob = clients(live, ws)
    async with alice, bob:
        await alice.subscribe(ws.channel)
        await bob.subscribe(ws.channel)
        pending = alice.publish(ws.channel, "before the delete", cmid=uuid.uuid4().hex[:16])
        await pending.wait(timeout=SETTLE_S)
        assert pulsar_tenant_status(live.pulsar_admin_url, ws.slug) == 200
        assert await _cache_entries(hazelcast_members, ws.slug) > 0
        assert len(await wait_stored(live.database_url, ws.slug, 1)) == 1

    deleted = await live.api("DELETE", f"/v1/workspaces/{ws.slug}", token=live.token("alice", ws.slug))
    assert deleted.status_code == 204, deleted.text

    assert pulsar_tenant_status(live.pulsar_admin_url, ws.slug) == 404
    assert await stored_rows(live.database_url, ws.slug) == []
    engine = create_async_engine(live.database_url)
    try:
        async with engine.connect() as conn:
            query = text("SELECT count(*) FROM workspaces WHERE slug = :s")
            left = (await conn.execute(query, {"s": ws.slug})).scalar()
    finally:
        await engine.dispose()
    assert left == 0
    assert await _cache_entries(hazelcast_members, ws.slug) == 0
    got = await live.api("GET", f"/v1/workspaces/{ws.slug}", token=live.token("alice", ws.slug))
    assert got.status_code == 404


async def _hello(url: str, token: str) -> object:
    import json

    import websockets

    conn = await websockets.connect(url)
    await conn.send(json.dumps({"op": "auth", "token": token}))
    await _until(conn, "hello")
    return conn


async def _closed_within(conn: object, timeout: float) -> tuple[int | None, float]:
    import websockets

    started = time.monotonic()
    try:
        while True:
            await asyncio.wait_for(conn.recv(), timeout)  # type: ignore[attr-defined]
    except websockets.ConnectionClosed as exc:
        return (exc.rcvd.code if exc.rcvd else None), time.monotonic() - started


@pytest.mark.parametrize("action", ["remove", "ban"])
async def test_removal_and_ban_close_the_users_sockets_on_every_gateway(live: Topology, action: str) -> None:
    """Issue 4: removal or ban through the API process reaches bob's sockets on both gateways (through
    Pulsar's _control topic), with 4010; the ban also refuses his next handshake (Hazelcast's list)."""
    ws = await live.provision(("alice", "bob"))
    owner = live.token("alice", ws.slug)
    members = await live.api("GET", f"/v1/workspaces/{ws.slug}/members", token=owner)
    bob_id = next(m["user_id"] for m in members.json()["members"] if m["name"] == "Bob")
    on_a = await _hello(live.procs["gateway-a"].ws_url, ws.token_provider("bob")())
    on_b = await _hello(live.procs["gateway-b"].ws_url, ws.token_provider("bob")())
    alice = await _hello(live.procs["gateway-b"].ws_url, ws.token_provider("alice")())
    requested = time.monotonic()
    if action == "remove":
        reply = await live.api("DELETE", f"/v1/workspaces/{ws.slug}/members/{bob_id}", token=owner)
    else:
        reply = await live.api("POST", f"/v1/workspaces/{ws.slug}/members/{bob_id}/ban", token=owner)
    assert reply.status_code == 204, reply.text
    (code_a, _), (code_b, _) = await asyncio.gather(_closed_within(on_a, 10), _closed_within(on_b, 10))
    latency = time.monotonic() - requested
    print(f"revocation latency ({action}, API request -> both sockets closed): {latency:.3f} s")  # -rP shows it
    assert (code_a, code_b) == (4010, 4010)
    import json

    await alice.send(json.dumps({"op": "ping", "id": 1}))  # type: ignore[attr-defined]
    assert '"pong"' in await asyncio.wait_for(alice.recv(), 10)  # type: ignore[attr-defined]
    await alice.close()  # type: ignore[attr-defined]
    if action == "ban":  # re-added by mistake: the API process's entry on Hazelcast's list still refuses him
        readded = await live.api("POST", f"/v1/workspaces/{ws.slug}/members", token=owner,
                                 body={"subject": "dev|bob", "name": "Bob"})
        assert readded.status_code == 201, readded.text
    again = await __import__("websockets").connect(live.procs["gateway-a"].ws_url)
    await again.send(json.dumps({"op": "auth", "token": ws.token_provider("bob")()}))
    code, _ = await _closed_within(again, 10)
    assert code == (4001 if action == "remove" else 4010)  # 4001: no longer a member


async def _until(conn: object, kind: str, timeout: float = 10.0) -> dict[str, object]:
    import json

    async with asyncio.timeout(timeout):
        while True:
            for part in (await conn.recv()).split("\n"):  # type: ignore[attr-defined]
                event = json.loads(part)
                if event["type"] == kind:
                    return event  # type: ignore[no-any-return]


async def test_removal_from_a_private_channel_ends_the_subscription_on_every_gateway(live: Topology) -> None:
    """The API process's control event reaches bob's subscriptions on both gateways: each gets
    ``unsubscribed{reason: "removed"}`` and his sockets stay open."""
    import json

    ws = await live.provision(("alice", "bob"))
    owner = live.token("alice", ws.slug)
    members = await live.api("GET", f"/v1/workspaces/{ws.slug}/members", token=owner)
    bob_id = next(m["user_id"] for m in members.json()["members"] if m["name"] == "Bob")
    created = await live.api("POST", f"/v1/workspaces/{ws.slug}/channels", token=owner,
                             body={"name": "secret", "kind": "private", "members": [bob_id]})
    assert created.status_code == 201, created.text
    cid = created.json()["id"]
    socks = [await _hello(live.procs[g].ws_url, ws.token_provider("bob")()) for g in ("gateway-a", "gateway-b")]
    for sock in socks:
        await sock.send(json.dumps({"op": "subscribe", "id": 1, "channel": cid}))  # type: ignore[attr-defined]
        await _until(sock, "subscribed")
    requested = time.monotonic()
    reply = await live.api("DELETE", f"/v1/workspaces/{ws.slug}/channels/{cid}/members/{bob_id}", token=owner)
    assert reply.status_code == 204, reply.text
    ended = await asyncio.gather(*(_until(s, "unsubscribed") for s in socks))
    print(f"channel withdrawal latency (API request -> both subscriptions ended): "
          f"{time.monotonic() - requested:.3f} s")  # -rP shows it
    assert ended == [{"type": "unsubscribed", "channel": cid, "reason": "removed"}] * 2
    for sock in socks:
        await sock.send(json.dumps({"op": "ping", "id": 2}))  # type: ignore[attr-defined]
        assert (await _until(sock, "pong"))["id"] == 2
        await sock.close()  # type: ignore[attr-defined]
