"""`storm bench e2e`: publish -> ack -> delivery on the real services, many channels at once.

    storm bench e2e --connections 2000 --rate 5000 --duration 30 [--members 10] [--gateways 2] [--json]

What it does (docs/benchmarks.md, "End to end on the real services"):

1. settings from the environment, else ``scripts/services.sh env`` (database ``storm_cluster``, as
   ``storm cluster`` and ``storm verify`` use), migrated;
2. a throwaway workspace ``e2e-<hex>`` on the ``enterprise`` plan through tenants/service.py (Pulsar tenant
   and namespaces included), then ``--connections`` users, their memberships, ``connections / members``
   private channels and their channel memberships inserted in bulk, and the channel topics created;
3. ``--gateways`` gateway processes and one consumers process (``storm serve``, storm_cli/cluster.py) on
   Pulsar + Hazelcast + PostgreSQL;
4. client child processes (``python -m storm_tools.bench.e2e --child``, one source address each) open one
   connection per user, spread over the gateways and the client processes, authenticate with a dev token
   and subscribe to the user's channel;
5. open-loop publishing: each client process publishes its share of ``--rate`` on a fixed schedule, round
   robin over its connections, and never waits for acks.  The first ``--warmup`` seconds are not counted
   (first-use costs: Pulsar producers, SQL statements, JIT-less Python caches);
6. each publish carries ``e2e:<sender>:<seq>:<time.monotonic_ns()>`` in its text (CLOCK_MONOTONIC is one
   clock for every process of the machine): ack latency is measured at the sender (send -> ``ack``),
   delivery latency at each of the other members (send -> arrival);
7. after the last publish, waits until every acked message reached every other connected member (or
   nothing moved for ``--settle-s``), then checks per (receiver, sender, seq) that every acked message was
   delivered, and deletes the workspace (Pulsar tenant, rows, cache) and its users.

CPU: every role's CPU (gateways, Pulsar, Hazelcast, PostgreSQL, consumers, the clients) from the first counted
publish to the end of the settle, divided by the messages acked: ``cpu_us_per_msg`` (docs/benchmarks.md).
Limits: the workspace's bucket is its plan's quota (``BENCH_PLAN``), well above ``--rate`` unless
``--workspace-rate`` says otherwise; ``limits`` in the output says which applied.

Result: one JSON object (printed by storm_cli/main.py).  ``failed`` when an acked message is missing somewhere,
a connection failed or no message was acked.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from storm_tools.bench.procs import (
    ClientProcess,
    Progress,
    child_channel,
    cpu_seconds,
    open_all,
    raise_nofile,
    source_address,
)
from storm_tools.bench.wsclient import SubscribingClient, connect

if TYPE_CHECKING:
    from storm.bootstrap import Services

HOST = "127.0.0.1"
PER_PROCESS_MAX = 9000
BUCKET_NS = 100_000  # latency histograms: 0.1 ms buckets
SLOW_NS = 250_000_000  # deliveries slower than this are also counted by the second they were sent
MARK = b'"text":"e2e:'
_STAMP = re.compile(rb'"text":"e2e:(\d+):(\d+):(\d+)"')
_ACK = re.compile(rb'"type":"ack","id":(\d+)')
_ERROR_CODE = re.compile(rb'"type":"error","code":"([a-z_]+)"')
_ERROR_ID = re.compile(rb'"type":"error"[^\n]*?"id":(\d+)')
BENCH_PLAN = "enterprise"  # the plan of the workspace the bench creates (storm.domain.PLANS)
ROLES = ("gateways", "pulsar", "hazelcast", "consumers", "postgres", "clients")
REQUIRED_KEYS = ("published", "acked", "delivered", "ack_p50_ms", "ack_p99_ms", "deliver_p50_ms", "deliver_p99_ms")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("e2e", help="publish -> ack -> delivery latency on Pulsar + Hazelcast + PostgreSQL")
    p.add_argument("--connections", type=int, default=2000, help="WebSocket connections, one user each "
                                                                  "(default 2000)")
    p.add_argument("--members", type=int, default=10, help="members per channel (default 10)")
    p.add_argument("--rate", type=float, default=5000.0, help="messages published per second in total "
                                                              "(default 5000)")
    p.add_argument("--duration", type=float, default=30.0, help="measured seconds of publishing (default 30)")
    p.add_argument("--warmup", type=float, default=3.0,
                   help="seconds of publishing at --rate before the measurement, not counted (default 3)")
    p.add_argument("--gateways", type=int, default=2, help="gateway processes (default 2)")
    p.add_argument("--client-procs", type=int, default=0, help="client processes (default 2, more past "
                                                               f"{PER_PROCESS_MAX} connections each)")
    p.add_argument("--no-consumers", action="store_true", help="do not run the persistence consumers process")
    p.add_argument("--settle-s", type=float, default=10.0,
                   help="after the last publish, give up when no delivery arrived for this long (default 10)")
    p.add_argument("--settle-timeout", type=float, default=60.0,
                   help="after the last publish, wait at most this long for missing deliveries (default 60)")
    p.add_argument("--start-timeout", type=float, default=120.0, help="seconds for a STORM process to get ready")
    p.add_argument("--log-dir", default=None, help="keep the STORM processes' logs here (default: a temp dir, "
                                                   "removed)")
    p.add_argument("--keep", action="store_true", help="keep the workspace afterwards")
    p.add_argument("--workspace-rate", type=float, default=0.0,
                   help="publishes per second the bench's workspace may make (STORM_WORKSPACE_PUBLISH_RATE); "
                        f"default 0 = the {BENCH_PLAN!r} plan's quota, which must be above --rate")
    p.add_argument("--json", action="store_true", help="compact JSON on one line")


def validate(args: argparse.Namespace) -> None:
    if args.members < 2 or args.connections < args.members or args.connections % args.members:
        raise SystemExit("storm bench e2e: --members must be >= 2 and --connections a multiple of it")
    if args.rate <= 0 or args.duration <= 0 or args.warmup < 0 or args.gateways < 1 or args.client_procs < 0:
        raise SystemExit("storm bench e2e: --rate, --duration and --gateways must be > 0, --warmup >= 0")
    if args.settle_s <= 0 or args.settle_timeout <= 0:
        raise SystemExit("storm bench e2e: --settle-s and --settle-timeout must be > 0")
    if args.workspace_rate < 0:
        raise SystemExit("storm bench e2e: --workspace-rate must be >= 0")
    plan_rate = _plan_rate()
    if not args.workspace_rate and args.rate * 2 > plan_rate:
        raise SystemExit(f"storm bench e2e: --rate {args.rate:g} is not well below the {BENCH_PLAN!r} plan's "
                         f"{plan_rate} messages/s; pass --workspace-rate to set the workspace's limit")


def failed(result: dict[str, Any]) -> bool:
    return bool(result.get("error") or result.get("missing") or result.get("connect_failures")
                or not result.get("acked"))


# ---- client child -------------------------------------------------------------------------------------
class Shared:
    """Per client process: counters and histograms of every connection."""

    def __init__(self) -> None:
        self.deliver_hist: dict[int, int] = {}
        self.ack_hist: dict[int, int] = {}
        self.lag_hist: dict[int, int] = {}
        self.slow_by_second: dict[int, int] = {}  # send second (monotonic) -> deliveries slower than SLOW_NS
        self.deliveries = 0  # counted (not warm-up) message events from another member
        self.duplicates = 0
        self.misordered = 0
        self.self_echoes = 0
        self.acked = 0
        self.rejected = 0  # counted publishes answered with an error (rate_limited, unavailable, ...)
        self.published = 0
        self.errors = 0
        self.first_error = ""
        self.closed = 0
        self.stopping = False
        self.errors_by_code: dict[str, int] = {}

    def error(self, payload: bytes) -> None:
        self.errors += payload.count(b'"type":"error"')
        for m in _ERROR_CODE.finditer(payload):
            self.errors_by_code[m[1].decode()] = self.errors_by_code.get(m[1].decode(), 0) + 1
        if not self.first_error:
            at = payload.find(b'{"type":"error"')  # the error event, not the events coalesced before it
            self.first_error = payload[max(0, at):][:300].decode(errors="replace")


class Member(SubscribingClient):
    """One user: auth -> hello -> subscribe its channel -> subscribed; then publishes and receives."""

    def __init__(self, host: str, port: int, index: int, token: str, channel: str, shared: Shared) -> None:
        super().__init__(host, port, b'{"op":"auth","token":"%s"}' % token.encode(), shared)
        self.index = index
        self.channel = channel.encode()
        self.next_id = 1
        self.seq = 0  # counted publishes so far
        self.pending: dict[int, tuple[int, int]] = {}  # request id -> (seq or -1 for warm-up, send ns)
        self.acked = 0  # bitmap of acked seqs
        self.received: dict[int, int] = {}  # sender index -> bitmap of seqs delivered here
        self.last_seq: dict[int, int] = {}

    def subscribe_frame(self) -> bytes:
        frame = b'{"op":"subscribe","id":%d,"channel":"%s"}' % (self.next_id, self.channel)
        self.next_id += 1
        return frame

    def publish(self, counted: bool, now_ns: int) -> None:
        rid = self.next_id
        self.next_id += 1
        if counted:
            seq = self.seq
            self.seq += 1
            frame = (b'{"op":"publish","id":%d,"channel":"%s","cmid":"%d-%d","text":"e2e:%d:%d:%d"}'
                     % (rid, self.channel, self.index, seq, self.index, seq, now_ns))
        else:
            seq = -1
            frame = (b'{"op":"publish","id":%d,"channel":"%s","cmid":"w%d-%d","text":"e2w:%d"}'
                     % (rid, self.channel, self.index, rid, rid))
        self.pending[rid] = (seq, now_ns)
        self.send_text(frame)

    def on_live(self, payload: bytes) -> None:
        sh = self.stats
        now = time.monotonic_ns()
        if MARK in payload:
            hist = sh.deliver_hist
            for m in _STAMP.finditer(payload):
                sender = int(m[1])
                if sender == self.index:
                    sh.self_echoes += 1
                    continue
                seq = int(m[2])
                bits = self.received.get(sender, 0)
                if bits >> seq & 1:
                    sh.duplicates += 1
                    continue
                self.received[sender] = bits | (1 << seq)
                if seq < self.last_seq.get(sender, -1):
                    sh.misordered += 1
                self.last_seq[sender] = seq
                sh.deliveries += 1
                sent_ns = int(m[3])
                bucket = (now - sent_ns) // BUCKET_NS
                hist[bucket] = hist.get(bucket, 0) + 1
                if now - sent_ns > SLOW_NS:
                    second = sent_ns // 1_000_000_000
                    sh.slow_by_second[second] = sh.slow_by_second.get(second, 0) + 1
        if b'"type":"ack"' in payload:
            for m in _ACK.finditer(payload):
                entry = self.pending.pop(int(m[1]), None)
                if entry is None or entry[0] < 0:
                    continue
                self.acked |= 1 << entry[0]
                sh.acked += 1
                bucket = (now - entry[1]) // BUCKET_NS
                sh.ack_hist[bucket] = sh.ack_hist.get(bucket, 0) + 1
        if b'"type":"error"' in payload:
            sh.error(payload)
            for m in _ERROR_ID.finditer(payload):
                entry = self.pending.pop(int(m[1]), None)
                if entry is not None and entry[0] >= 0:
                    sh.rejected += 1


async def _open_all(cfg: dict[str, Any], shared: Shared, chan: Any) -> tuple[list[Member], list[str]]:
    sources, specs = cfg["sources"], cfg["conns"]

    async def open_one(i: int) -> Member:
        index, port, token, channel = specs[i]
        return await connect(lambda: Member(HOST, port, index, token, channel, shared), HOST, port,
                             source=sources[i % len(sources)], timeout=cfg["connect_timeout"])

    return await open_all(len(specs), open_one, concurrency=cfg["connect_concurrency"],
                          timeout=cfg["connect_timeout"], chan=chan, name=lambda i: f"connection {specs[i][0]}")


async def _prime(conns: list[Member], cfg: dict[str, Any]) -> int:
    """One uncounted publish per connection, a few at a time, each waited for: it fills the gateways' caches
    (channel, membership, rate buckets) and opens their Pulsar producers, so the measurement sees the steady
    state and not a thundering herd of cache misses.  Returns how many were answered (ack or error)."""
    sem = asyncio.Semaphore(cfg["prime_concurrency"])
    answered = 0

    async def one(conn: Member) -> None:
        nonlocal answered
        async with sem:
            rid = conn.next_id
            conn.publish(False, time.monotonic_ns())
            deadline = time.monotonic() + cfg["connect_timeout"]
            while rid in conn.pending and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            answered += rid not in conn.pending

    await asyncio.gather(*(one(c) for c in conns if c.transport is not None and not c.transport.is_closing()))
    return answered


async def _publish(conns: list[Member], cfg: dict[str, Any], shared: Shared, go_ns: int) -> None:
    """Open loop: message k is due at go_ns + k / rate; whatever is due is sent at once, late or not."""
    if not conns:
        return
    interval = 1e9 / cfg["rate"]
    warm = int(cfg["warmup"] * cfg["rate"])
    total = warm + int(cfg["duration"] * cfg["rate"])
    n, k = len(conns), 0
    offset = cfg["rotate"] % n
    lag = shared.lag_hist
    while k < total:
        now = time.monotonic_ns()
        due = min(total, int((now - go_ns) / interval) + 1)
        while k < due:
            counted = k >= warm
            conn = conns[(k + offset) % n]
            if conn.transport is not None and not conn.transport.is_closing():
                stamp = time.monotonic_ns()
                conn.publish(counted, stamp)
                if counted:
                    shared.published += 1
                    bucket = (stamp - go_ns - int(k * interval)) // BUCKET_NS
                    lag[bucket] = lag.get(bucket, 0) + 1
            k += 1
        wait = go_ns + k * interval - time.monotonic_ns()
        await asyncio.sleep(max(0.0, wait / 1e9))


async def child_main() -> None:
    chan, cfg = await child_channel()
    raise_nofile()
    shared = Shared()
    conns, failures = await _open_all(cfg, shared, chan)
    chan.emit("ready", connected=len(conns), failed=len(failures), failure=failures[0] if failures else "")
    cmd = await chan.command()
    if cmd is not None and cmd.get("cmd") == "prime":
        answered = await _prime(conns, cfg)
        chan.emit("primed", answered=answered)
        cmd = await chan.command()
    if cmd is None or cmd.get("cmd") != "go":
        return
    loop = asyncio.get_running_loop()

    async def report() -> None:
        while True:
            await asyncio.sleep(0.5)
            chan.emit("progress", published=shared.published, acked=shared.acked, rejected=shared.rejected,
                      deliveries=shared.deliveries)

    reporter = loop.create_task(report())
    cpu0 = time.process_time()
    go_ns = int(cmd["go_ns"])
    await asyncio.sleep(max(0.0, (go_ns - time.monotonic_ns()) / 1e9))
    try:
        await _publish(conns, cfg, shared, go_ns)
        chan.emit("published", published=shared.published)
        cmd = await chan.command()  # the parent says when deliveries have settled
    finally:
        reporter.cancel()
    shared.stopping = True
    chan.emit(
        "result", connected=len(conns), failures=failures[:5], published=shared.published,
        acked=shared.acked, rejected=shared.rejected, deliveries=shared.deliveries, duplicates=shared.duplicates,
        misordered=shared.misordered, self_echoes=shared.self_echoes, errors=shared.errors,
        first_error=shared.first_error, errors_by_code=shared.errors_by_code, closed=shared.closed,
        client_cpu_s=time.process_time() - cpu0,
        sent={c.index: c.seq for c in conns},
        acked_bits={c.index: format(c.acked, "x") for c in conns},
        received={c.index: {s: format(b, "x") for s, b in c.received.items()} for c in conns},
        deliver_hist=shared.deliver_hist, ack_hist=shared.ack_hist, lag_hist=shared.lag_hist,
        slow_by_second=shared.slow_by_second,
    )
    for c in conns:
        c.close()
    await asyncio.sleep(0.2)


# ---- parent: setup -------------------------------------------------------------------------------------
def _say(*parts: str) -> None:
    """``_say(text)`` or ``_say(bench, text)``: one line on stderr."""
    bench, text = parts if len(parts) == 2 else ("e2e", parts[0])
    sys.stderr.write(f"bench {bench}: {text}\n")
    sys.stderr.flush()


def storm_env(args: argparse.Namespace) -> dict[str, str]:
    """The STORM processes' settings: the services', with the per-connection and per-user buckets out of the
    bench's way.  The workspace's own bucket is its plan's quota (``BENCH_PLAN``, set when the bench creates
    the workspace through tenants/service.py, as any owner would), unless ``--workspace-rate`` overrides it."""
    from storm_tools.verify import _service_env

    env = _service_env()
    env.update(bench_limits_env(args.rate, args.connections, args.client_procs))
    env.pop("STORM_WORKSPACE_PUBLISH_RATE", None)
    if args.workspace_rate:
        env["STORM_WORKSPACE_PUBLISH_RATE"] = str(args.workspace_rate)
    env.update({
        "STORM_BROKER": "pulsar", "STORM_CACHE": "hazelcast", "STORM_SEED_DEMO": "false", "PYTHONUNBUFFERED": "1",
        "STORM_MAX_CONNECTIONS_PER_IP": "100000",  # a client process holds thousands of sockets per address
        "STORM_IDLE_TIMEOUT_S": "900", "STORM_HEARTBEAT_S": "300", "STORM_AUTH_TIMEOUT_S": "120",
        "STORM_PRESENCE_TTL_S": "900",  # the bench's clients do not ping
    })
    return env


def bench_limits_env(rate: float, connections: int, client_procs: int) -> dict[str, str]:
    """Per-connection and per-user buckets a few times above what the open-loop schedule asks of each."""
    per_conn = rate * max(1, client_procs or 2) / connections  # per connection, with slack
    return {
        "STORM_PUBLISH_RATE": str(max(20.0, per_conn * 4)), "STORM_PUBLISH_BURST": str(int(max(40, per_conn * 8))),
        "STORM_USER_PUBLISH_RATE": str(max(30.0, per_conn * 4)),
        "STORM_USER_PUBLISH_BURST": str(int(max(60, per_conn * 8))),
    }


def _plan_rate() -> int:
    from storm.domain import PLANS

    return PLANS[BENCH_PLAN].messages_per_second


def limits(args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    """The STORM limits the load meets, for the output: whether the bench's own buckets can refuse it."""
    ws_rate = args.workspace_rate or _plan_rate()
    per_conn = args.rate / args.connections
    return {
        "workspace_plan": BENCH_PLAN,
        "workspace_publish_rate": ws_rate,
        "workspace_source": "--workspace-rate" if args.workspace_rate else f"plan {BENCH_PLAN!r}",
        "user_publish_rate": float(env["STORM_USER_PUBLISH_RATE"]),
        "connection_publish_rate": float(env["STORM_PUBLISH_RATE"]),
        "above_offered": ws_rate > args.rate and float(env["STORM_PUBLISH_RATE"]) > per_conn,
    }


class Workspace:
    """The bench's workspace: slug, owner principal's subject, channels (ids), users (subjects) and the
    channels every user is a member of (``shared``)."""

    def __init__(self, slug: str, channels: list[str], subjects: list[str], shared: list[str] | None = None) -> None:
        self.slug, self.channels, self.subjects = slug, channels, subjects
        self.shared = shared or []


async def provision(services: Services, connections: int, members: int, run: str, *, shared: int = 0,
                    prefix: str = "e2e") -> Workspace:
    """The workspace through tenants/service.py (Pulsar tenant included, plan ``BENCH_PLAN``), the rest in
    bulk: ``connections`` users, private channels of ``members`` each, and ``shared`` private channels of
    every user (``members`` 0: none of the former)."""
    from datetime import UTC, datetime

    from db import models as m
    from storm.ports.broker import ChannelPreparer
    from storm.ports.identity import Claims
    from storm_tools.bench.database import sql_transaction
    from tenants import service

    slug = f"{prefix}-{run}"
    subjects = [f"dev|{prefix}-{run}-{i}" for i in range(connections)]
    claims = Claims(subject=subjects[0], workspace="*", name="User 0", expires_at=time.time() + 3600,
                    scopes=frozenset({"chat", service.CREATE_SCOPE}), token_id=uuid.uuid4().hex)
    view = await service.create_workspace(services, claims, slug=slug, name=f"e2e bench {run}", plan=BENCH_PLAN)
    ws_id = view.workspace.id
    owner = await services.directory.resolve_user(claims)
    now = datetime.now(UTC)
    user_ids = [owner.id] + [uuid.uuid4() for _ in range(connections - 1)]
    channel_ids = [uuid.uuid4() for _ in range(connections // members)] if members else []
    shared_ids = [uuid.uuid4() for _ in range(shared)]
    async with sql_transaction(services.config.database_url) as conn:
        await conn.execute(m.users.insert(), [{"id": uid, "subject": subjects[i], "name": f"User {i}",
                                               "created_at": now} for i, uid in enumerate(user_ids) if i])
        await conn.execute(m.memberships.insert(), [{"workspace_id": ws_id, "user_id": uid, "role": "member",
                                                     "created_at": now} for uid in user_ids[1:]])
        if channel_ids:
            await conn.execute(m.channels.insert(), [{"id": cid, "workspace_id": ws_id, "name": f"c{c}",
                                                      "kind": "private", "archived": False, "created_by": owner.id,
                                                      "created_at": now} for c, cid in enumerate(channel_ids)])
            await conn.execute(m.channel_members.insert(), [
                {"workspace_id": ws_id, "channel_id": channel_ids[i // members], "user_id": uid}
                for i, uid in enumerate(user_ids)])
        if shared_ids:
            await conn.execute(m.channels.insert(), [{"id": cid, "workspace_id": ws_id, "name": f"shared{c}",
                                                      "kind": "private", "archived": False, "created_by": owner.id,
                                                      "created_at": now} for c, cid in enumerate(shared_ids)])
            for start in range(0, len(user_ids), 5000):
                await conn.execute(m.channel_members.insert(), [
                    {"workspace_id": ws_id, "channel_id": cid, "user_id": uid}
                    for cid in shared_ids for uid in user_ids[start:start + 5000]])
    broker = services.broker
    if isinstance(broker, ChannelPreparer):  # Pulsar: topics up front, not on the first subscribe
        sem = asyncio.Semaphore(16)

        async def one(cid: uuid.UUID) -> None:
            async with sem:
                await broker.ensure_channel(slug, str(cid))

        await asyncio.gather(*(one(c) for c in channel_ids + shared_ids))
    return Workspace(slug, [str(c) for c in channel_ids], subjects, [str(c) for c in shared_ids])


async def unprovision(services: Services, ws: Workspace) -> None:
    """Delete the workspace (rows, Pulsar tenant, cache) as its owner would, then its users."""
    from sqlalchemy import delete

    from db import models as m
    from storm.ports.identity import Claims
    from storm_tools.bench.database import sql_transaction
    from tenants import service

    claims = Claims(subject=ws.subjects[0], workspace=ws.slug, name="User 0", expires_at=time.time() + 3600,
                    scopes=frozenset({"chat"}), token_id=uuid.uuid4().hex)
    owner = await service.authorize(services, claims, ws.slug)
    await service.delete_workspace(services, owner)  # rows, then Pulsar tenant and cache (logged on failure)
    # Another deployment's consumers on the same Pulsar (ADR 0005: work subscriptions cover every tenant)
    # may recreate a topic while it is deleted; one more try, later, then the error is reported.
    with contextlib.suppress(Exception):
        await services.broker.delete_workspace(ws.slug)
        return
    await asyncio.sleep(5.0)
    await services.broker.delete_workspace(ws.slug)
    async with sql_transaction(services.config.database_url) as conn:
        for start in range(0, len(ws.subjects), 1000):
            await conn.execute(delete(m.users).where(m.users.c.subject.in_(ws.subjects[start:start + 1000])))


# ---- parent: measurement -------------------------------------------------------------------------------
def percentile_ms(hist: dict[int, int], q: float) -> float | None:
    """Nearest-rank percentile of a 0.1 ms histogram, as the bucket's upper edge in ms."""
    total = sum(hist.values())
    if not total:
        return None
    rank = max(1, math.ceil(q / 100 * total))
    seen = 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen >= rank:
            return round((bucket + 1) * BUCKET_NS / 1e6, 1)
    return None  # pragma: no cover - unreachable: seen reaches total


def merge(hists: list[dict[Any, int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for h in hists:
        for bucket, count in h.items():
            out[int(bucket)] = out.get(int(bucket), 0) + count
    return out


def _slow_by_second(results: list[dict[str, Any]]) -> dict[str, int]:
    """Deliveries slower than SLOW_NS by the second of the run they were sent in (from the first such
    second): shows whether slowness is steady (overload) or comes in bursts (a stall somewhere)."""
    merged: dict[int, int] = {}
    for r in results:
        for second, n in r.get("slow_by_second", {}).items():
            merged[int(second)] = merged.get(int(second), 0) + n
    if not merged:
        return {}
    first = min(merged)
    return {str(second - first): merged[second] for second in sorted(merged)}


def _sum_counts(tables: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in tables:
        for k, v in t.items():
            out[k] = out.get(k, 0) + v
    return out


def score(results: list[dict[str, Any]], members: int) -> dict[str, int]:
    """Per (receiver, sender): acked seqs of the sender never delivered to the receiver."""
    acked = {int(g): int(bits, 16) for r in results for g, bits in r["acked_bits"].items()}
    received = {int(g): {int(s): int(b, 16) for s, b in rec.items()} for r in results
                for g, rec in r["received"].items()}
    expected = missing = delivered = 0
    for receiver, by_sender in received.items():
        channel = receiver // members
        for sender in range(channel * members, (channel + 1) * members):
            if sender == receiver or sender not in acked:
                continue
            want = acked[sender]
            got = by_sender.get(sender, 0)
            expected += want.bit_count()
            missing += (want & ~got).bit_count()
            delivered += (want & got).bit_count()
    unacked_delivered = sum(b.bit_count() for rec in received.values() for b in rec.values()) - delivered
    return {"expected_deliveries": expected, "missing": missing, "delivered_acked": delivered,
            "delivered_unacked": unacked_delivered}


def service_pids() -> dict[str, int]:
    """PIDs of Pulsar, Hazelcast and PostgreSQL (read only, for their CPU share): those scripts/services.sh
    records (``.services/{pulsar,hazelcast}.pid``, PostgreSQL's ``postmaster.pid``), else found by command
    line.  A service that is found nowhere (e.g. run elsewhere) is left out."""
    import psutil

    from storm_tools.verify import ROOT

    base = Path(os.environ.get("STORM_SERVICES_DIR", ROOT / ".services"))
    found: dict[str, int] = {}
    for name, path in (("pulsar", base / "pulsar.pid"), ("hazelcast", base / "hazelcast.pid"),
                       ("postgres", base / "pg" / "postmaster.pid")):
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(path.read_text().split()[0])
            if psutil.pid_exists(pid):
                found[name] = pid
    with contextlib.suppress(OSError, ValueError, IndexError):  # Pulsar's metadata store (scripts/services.sh)
        pid = int((base / "zookeeper.pid").read_text().split()[0])
        if psutil.pid_exists(pid):
            found["zookeeper"] = pid
    if all(name in found for name in ("pulsar", "hazelcast", "postgres")):
        return found
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(proc.info["cmdline"] or [])
            if "PulsarStandaloneStarter" in cmd:
                found.setdefault("pulsar", proc.info["pid"])
            elif "HazelcastMemberStarter" in cmd:
                found.setdefault("hazelcast", proc.info["pid"])
            elif proc.info["name"] == "postgres" and proc.parent() is not None and \
                    proc.parent().name() != "postgres":
                found.setdefault("postgres", proc.info["pid"])
    return found


def service_roles() -> dict[str, list[int]]:
    """:func:`service_pids` by role: Pulsar's ZooKeeper (its metadata store, a process of its own since
    2026-12-07; inside the broker's JVM before) counts in ``pulsar``."""
    pids = service_pids()
    roles = {name: [pid] for name, pid in pids.items() if name != "zookeeper"}
    if "zookeeper" in pids and "pulsar" in roles:
        roles["pulsar"].append(pids["zookeeper"])
    return roles


def cpu_per_message(cpu_s: dict[str, float], acked: int) -> dict[str, float | None]:
    """Each role's CPU in the window / messages acked, in µs; ``server_total`` is every role but the
    clients.  None where nothing was acked or a role was not measured."""
    out: dict[str, float | None] = {}
    for role in ROLES:
        out[role] = round(cpu_s[role] * 1e6 / acked, 1) if acked and role in cpu_s else None
    server = [cpu_s[r] for r in ROLES if r != "clients" and r in cpu_s]
    out["server_total"] = round(sum(server) * 1e6 / acked, 1) if acked else None
    return out


JIT_THREADS = ("C1 CompilerThre", "C2 CompilerThre")  # HotSpot's JIT compiler threads (comm: 15 chars)


def jit_seconds(pid: int, task_dir: Path = Path("/proc")) -> float:
    """CPU seconds of a JVM's JIT compiler threads (``C1``/``C2 CompilerThread<n>``).  A JVM started minutes
    before the bench spends a large share of its CPU compiling its hot paths (measured: about half of
    Pulsar's CPU in the window of a broker started 5 minutes earlier, 13 % in the next run); a warm one
    no longer does.  Reported apart so a run on fresh services can be read as one on warm services."""
    total = 0
    for task in (task_dir / str(pid) / "task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            if (task / "comm").read_text().strip().startswith(JIT_THREADS):
                total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def without_jit(cpu_s: dict[str, float], jit_s: dict[str, float]) -> dict[str, float]:
    """``cpu_s`` minus each JVM role's JIT compiler time."""
    return {role: max(0.0, seconds - jit_s.get(role, 0.0)) for role, seconds in cpu_s.items()}


class CpuMeter:
    """CPU seconds of named processes (and their children) and of the whole machine over one window;
    ``jvms`` (role -> pid) also get their JIT compiler threads' share (:func:`jit_seconds`)."""

    def __init__(self, pids: dict[str, list[int]], jvms: dict[str, int] | None = None) -> None:
        self.pids = pids
        self.jvms = jvms or {}
        self._jit: dict[str, float] = {}
        self._start: dict[str, float] = {}
        self._machine: Any = None
        self._wall = 0.0

    def _read(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, pids in self.pids.items():
            total = 0.0
            for pid in pids:
                with contextlib.suppress(Exception):
                    total += cpu_seconds(pid)
            out[name] = total
        return out

    def start(self) -> None:
        import psutil

        self._start = self._read()
        self._jit = self._read_jit()
        self._machine = psutil.cpu_times()
        self._wall = time.monotonic()

    def stop(self) -> dict[str, Any]:
        import psutil

        end = self._read()
        jit = self._read_jit()
        machine = psutil.cpu_times()
        wall = time.monotonic() - self._wall
        idle = (machine.idle + getattr(machine, "iowait", 0.0)) - (self._machine.idle +
                                                                   getattr(self._machine, "iowait", 0.0))
        total = sum(machine) - sum(self._machine)
        return {
            "cpu_s": {name: round(end[name] - self._start.get(name, 0.0), 3) for name in end},
            "jit_cpu_s": {name: round(jit[name] - self._jit[name], 3) for name in jit if name in self._jit},
            "machine_busy": round(1 - idle / total, 2) if total > 0 else None,
            "cores": psutil.cpu_count(),
            "window_s": round(wall, 1),
        }

    def _read_jit(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, pid in self.jvms.items():
            with contextlib.suppress(OSError):
                out[name] = jit_seconds(pid)
        return out


def _assign(args: argparse.Namespace, ws: Workspace, ports: list[int], tokens: list[str]
            ) -> list[list[list[Any]]]:
    """Connection g: channel g // members, client process g % procs, gateway (g // procs) % gateways, so a
    channel's members sit on every gateway and every client process."""
    procs = args.client_procs or max(2, math.ceil(args.connections / PER_PROCESS_MAX))
    per: list[list[list[Any]]] = [[] for _ in range(procs)]
    for g in range(args.connections):
        per[g % procs].append([g, ports[(g // procs) % len(ports)], tokens[g], ws.channels[g // args.members]])
    return per


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import logging

    # This process only sets up and cleans up: its per-request INFO lines (httpx, hazelcast) are noise.
    loggers = [logging.getLogger(name) for name in ("storm", "httpx", "hazelcast")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        return await _run(args)
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


class Topology:
    """What :func:`real_topology` yields: the settings, the bench's services (set-up and clean-up only), the
    workspace, the STORM processes, and what happened at the end (``outcome``: cleanup, workspace)."""

    def __init__(self, env: dict[str, str], cfg: Any, services: Services, ws: Workspace, procs: list[Any],
                 run_id: str, log_dir: Path) -> None:
        self.env, self.cfg, self.services, self.ws, self.procs = env, cfg, services, ws, procs
        self.run_id, self.log_dir = run_id, log_dir
        self.outcome: dict[str, Any] = {}

    @property
    def gateways(self) -> list[Any]:
        return [p for p in self.procs if p.role == "gateway"]

    def tokens(self) -> list[str]:
        """A dev token per user (HS256 with the deployment's dev secret; the benches do not use RS256/JWKS)."""
        from storm.adapters.dev_identity import DevIdentity

        issuer = DevIdentity(self.cfg.dev_secret, ttl_s=3600)
        return [issuer.issue(subject, self.ws.slug, f"User {i}") for i, subject in enumerate(self.ws.subjects)]


@contextlib.asynccontextmanager
async def real_topology(env: dict[str, str], *, connections: int, members: int, shared: int = 0, gateways: int,
                        consumers: bool, log_dir: str | None, start_timeout: float, keep: bool = False,
                        prefix: str = "e2e") -> AsyncIterator[Topology]:
    """The real topology of the benches (``storm bench e2e`` and ``storm bench connect --services real``):
    the schema migrated, a workspace provisioned (:func:`provision`), ``gateways`` gateway processes and,
    with ``consumers``, one consumers process on Pulsar + Hazelcast + PostgreSQL.  On exit the processes are
    stopped and the workspace deleted (unless ``keep``); ``Topology.outcome`` says how that went."""
    from db.admin import ensure_database
    from db.migrate import upgrade_async
    from storm.bootstrap import build_services
    from storm.config import Config
    from storm_tools.verify import StormProcess, free_ports

    cfg = Config.from_env(env)
    if cfg.database_url.startswith("postgresql"):
        await ensure_database(cfg.database_url)
    await upgrade_async(cfg.database_url)
    run_id = uuid.uuid4().hex[:10]
    tmp = tempfile.TemporaryDirectory(prefix=f"storm-bench-{prefix}-")
    logs = Path(log_dir) if log_dir else Path(tmp.name)
    logs.mkdir(parents=True, exist_ok=True)
    services = build_services(cfg)
    await services.start()
    procs: list[StormProcess] = []
    ws: Workspace | None = None
    topo: Topology | None = None
    try:
        t = time.monotonic()
        ws = await provision(services, connections, members, run_id, shared=shared, prefix=prefix)
        _say(prefix, f"workspace {ws.slug}: {connections} users, {len(ws.channels)} private channels of "
             f"{members}" + (f", {shared} channels of everyone" if shared else "")
             + f" ({time.monotonic() - t:.1f} s); logs in {logs}")
        ports = free_ports(gateways + 1)
        for i, port in enumerate(ports[:-1], start=1):
            procs.append(StormProcess(f"gateway-{i}", "gateway", port,
                                      {**env, "STORM_GATEWAY_ID": f"{prefix}-{run_id}-{i}"}, logs))
        if consumers:
            procs.append(StormProcess("consumers", "consumers", ports[-1], env, logs))
        for p in procs:
            p.start()
        for p in procs:
            await asyncio.to_thread(p.wait_ready, start_timeout)
        _say(prefix, "ready: " + ", ".join(f"{p.name} pid {p.pid}" for p in procs))
        topo = Topology(env, cfg, services, ws, procs, run_id, logs)
        yield topo
    finally:
        outcome: dict[str, Any] = {}
        for p in procs:
            await asyncio.to_thread(p.stop, cfg.drain_timeout_s + 5)
        if ws is not None and not keep:
            try:
                await unprovision(services, ws)
                outcome["cleanup"] = "deleted"
                _say(prefix, f"workspace {ws.slug} deleted")
            except Exception as exc:  # reported; the next run uses another workspace anyway
                outcome["cleanup"] = f"failed: {exc!r}"[:300]
                _say(prefix, f"could not delete workspace {ws.slug}: {exc!r}")
        if ws is not None:
            outcome["workspace"] = ws.slug
        if topo is not None:
            topo.outcome = outcome
        await services.stop()
        if not log_dir:
            tmp.cleanup()


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    env = storm_env(args)
    result: dict[str, Any] = {}
    async with real_topology(env, connections=args.connections, members=args.members, gateways=args.gateways,
                             consumers=not args.no_consumers, log_dir=args.log_dir,
                             start_timeout=args.start_timeout, keep=args.keep) as topo:
        result = await _measure(args, topo)
    result.update(topo.outcome)
    return result


async def _measure(args: argparse.Namespace, topo: Topology) -> dict[str, Any]:
    procs, ws = topo.procs, topo.ws
    clients: list[ClientProcess] = []
    progress = Progress()
    try:
        tokens = topo.tokens()
        plan = _assign(args, ws, [p.port for p in topo.gateways], tokens)
        for i, conns in enumerate(plan):
            cfg_child = {"conns": conns, "sources": [source_address(i)], "rate": args.rate / len(plan),
                         "warmup": args.warmup, "duration": args.duration, "rotate": i * 7919,
                         "connect_timeout": 60.0, "connect_concurrency": 64, "prime_concurrency": 32}
            client = ClientProcess(f"client-{i}", "storm_tools.bench.e2e", cfg_child)
            clients.append(client)
            await client.start()
        status: dict[str, dict[str, Any]] = {}

        def on_progress(client: ClientProcess, event: dict[str, Any]) -> None:
            status[client.name] = event
            if "connected" in event:
                done = sum(s.get("connected", 0) for s in status.values())
                bad = sum(s.get("failed", 0) for s in status.values())
                progress.update(f"connected {done}/{args.connections}" + (f" ({bad} failed)" if bad else ""),
                                force=False)
            else:
                pub, ack, rej, got = (sum(s.get(k, 0) for s in status.values())
                                      for k in ("published", "acked", "rejected", "deliveries"))
                progress.update(f"published {pub}  acked {ack}  rejected {rej}  delivered {got}", force=False)

        t = time.monotonic()
        ready = await asyncio.gather(*(c.wait_for("ready", args.start_timeout + args.connections / 20,
                                                  on_progress) for c in clients))
        connected = sum(r["connected"] for r in ready)
        failure = next((r["failure"] for r in ready if r["failure"]), "")
        progress.done(f"connected {connected}/{args.connections} in {time.monotonic() - t:.1f} s")
        status.clear()
        t = time.monotonic()
        for c in clients:
            c.send({"cmd": "prime"})
        primed = await asyncio.gather(*(c.wait_for("primed", args.start_timeout + args.connections / 10,
                                                   on_progress) for c in clients))
        _say(f"primed: {sum(r['answered'] for r in primed)}/{connected} first publishes answered "
             f"({time.monotonic() - t:.1f} s)")
        services = service_pids()
        meter = CpuMeter({"gateways": [p.pid for p in topo.gateways],
                          "consumers": [p.pid for p in procs if p.role == "consumers"],
                          "clients": [c.proc.pid for c in clients if c.proc is not None],
                          **service_roles()},
                         jvms={name: pid for name, pid in services.items() if name in ("pulsar", "hazelcast")})
        go_ns = time.monotonic_ns() + 300_000_000
        _say(f"publishing {args.rate:g}/s: {args.warmup:g} s warm-up, then {args.duration:g} s measured")
        for c in clients:
            c.send({"cmd": "go", "go_ns": go_ns})
        # The CPU window: from the first counted publish (the end of the warm-up) to the end of the settle.
        await asyncio.sleep(max(0.0, (go_ns - time.monotonic_ns()) / 1e9) + args.warmup)
        meter.start()
        load_before = os.getloadavg()
        await asyncio.gather(*(c.wait_for("published", args.duration + 120, on_progress) for c in clients))
        settled = await _settle(clients, status, args, on_progress)
        cpu = meter.stop()
        for c in clients:
            c.send({"cmd": "report"})
        results = await asyncio.gather(*(c.wait_for("result", 120, on_progress) for c in clients))
        progress.done()
        load_after = os.getloadavg()
        result = summarize(args, results, connected, failure, settled, cpu, load_before, load_after, procs)
        result["limits"] = limits(args, topo.env)
        return result
    finally:
        progress.done()
        for c in clients:
            await c.stop()


async def _settle(clients: list[ClientProcess], status: dict[str, dict[str, Any]], args: argparse.Namespace,
                  on_progress: Any) -> float:
    """Read progress until every publish is answered (ack or error) and every acked message seems delivered
    to the other members, or nothing moves for --settle-s, or --settle-timeout; the seconds it took."""
    t0 = time.monotonic()
    last: tuple[int, ...] = ()
    last_change = t0
    while True:
        events = await asyncio.gather(*(c.wait_for("progress", 5.0) for c in clients), return_exceptions=True)
        for c, event in zip(clients, events, strict=True):
            if isinstance(event, dict):
                on_progress(c, event)
        published, acked, rejected, got = (sum(s.get(k, 0) for s in status.values())
                                           for k in ("published", "acked", "rejected", "deliveries"))
        now = time.monotonic()
        if acked + rejected >= published and got >= acked * (args.members - 1):
            return now - t0
        if (acked, rejected, got) != last:
            last, last_change = (acked, rejected, got), now
        if now - last_change > args.settle_s or now - t0 > args.settle_timeout:
            return now - t0


def summarize(args: argparse.Namespace, results: list[dict[str, Any]], connected: int, failure: str,
              settled: float, cpu: dict[str, Any], load_before: tuple[float, ...], load_after: tuple[float, ...],
              procs: list[Any]) -> dict[str, Any]:
    scored = score(results, args.members)
    deliver = merge([r["deliver_hist"] for r in results])
    ack = merge([r["ack_hist"] for r in results])
    lag = merge([r["lag_hist"] for r in results])
    published = sum(r["published"] for r in results)
    acked = sum(r["acked"] for r in results)
    out: dict[str, Any] = {
        "published": published,
        "acked": acked,
        "delivered": scored["delivered_acked"],
        "ack_p50_ms": percentile_ms(ack, 50),
        "ack_p99_ms": percentile_ms(ack, 99),
        "deliver_p50_ms": percentile_ms(deliver, 50),
        "deliver_p99_ms": percentile_ms(deliver, 99),
        "expected_deliveries": scored["expected_deliveries"],
        "missing": scored["missing"],
        "deliver_max_ms": round((max(deliver) + 1) * BUCKET_NS / 1e6, 1) if deliver else None,
        "ack_max_ms": round((max(ack) + 1) * BUCKET_NS / 1e6, 1) if ack else None,
        "publish_lag_p99_ms": percentile_ms(lag, 99),
        "rate": args.rate,
        "achieved_rate": round(published / args.duration, 1),
        "duration_s": args.duration,
        "settle_s": round(settled, 2),
        "connections": args.connections,
        "connected": connected,
        "channels": args.connections // args.members,
        "members": args.members,
        "gateways": args.gateways,
        "client_procs": len(results),
        "consumers": not args.no_consumers,
        "cpu_us_per_msg": cpu_per_message(cpu["cpu_s"], acked),
        "cpu_s": cpu["cpu_s"],
        # the JVMs' JIT compiler threads in the window (part of cpu_s), and the per-message CPU without them
        "jit_cpu_s": cpu.get("jit_cpu_s", {}),
        "cpu_us_per_msg_without_jit": cpu_per_message(without_jit(cpu["cpu_s"], cpu.get("jit_cpu_s", {})), acked),
        "cpu_window_s": cpu.get("window_s"),
        "machine_busy": cpu["machine_busy"],
        "cores": cpu["cores"],
        "load_avg_1m": [round(load_before[0], 2), round(load_after[0], 2)],
        "slow_by_second": _slow_by_second(results),
    }
    extra = {
        "connect_failures": args.connections - connected,
        "connect_failure": failure,
        "rejected": sum(r["rejected"] for r in results),
        "unanswered": published - acked - sum(r["rejected"] for r in results),
        "delivered_unacked": scored["delivered_unacked"],
        "duplicates": sum(r["duplicates"] for r in results),
        "misordered": sum(r["misordered"] for r in results),
        "errors": sum(r["errors"] for r in results),
        "first_error": next((r["first_error"] for r in results if r["first_error"]), ""),
        "errors_by_code": _sum_counts([r.get("errors_by_code", {}) for r in results]),
        "closed": sum(r["closed"] for r in results),
    }
    out.update({k: v for k, v in extra.items() if v})
    log_errors = sum(1 for p in procs for line in p.log_tail(100000).splitlines()
                     if " ERROR " in line or line.startswith("Traceback"))
    if log_errors:
        out["server_log_errors"] = log_errors
    return out


def main() -> None:
    if sys.argv[1:] != ["--child"]:
        sys.exit("usage: python -m storm_tools.bench.e2e --child   (run `storm bench e2e` instead)")
    import uvloop

    uvloop.run(child_main())


if __name__ == "__main__":
    main()
