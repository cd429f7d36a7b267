"""`storm bench reconnect`: a reconnect storm after a gateway loss, and how long it takes to settle.

    storm bench reconnect --connections 17000 --gateways 3 [--json]

What it does (docs/benchmarks.md, "Reconnect storm"; issue 11 item 5):

1. the real topology of the benches (storm_tools/bench/e2e.py :func:`~storm_tools.bench.e2e.real_topology`,
   as ``storm bench connect --services real``): ``--gateways`` gateway processes on Pulsar + Hazelcast +
   PostgreSQL (no consumers process: the loss check is on deliveries), a throwaway workspace of
   ``--connections`` users in private channels of ``--members`` (dev tokens, HS256);
2. client child processes (``python -m storm_tools.bench.reconnect --child``), each on its own source
   address, open the connections round-robin over the gateways: auth, hello, subscribe to the user's
   channel; every message event's offset is remembered;
3. one SDK publisher (storm_sdk.StormClient, cmids, resend on reconnect) per sampled channel
   (``--sample-channels``), connected to a gateway that will survive, publishes ``--rate`` messages/s from
   before the kill until the storm has settled;
4. the gateway holding the most connections is SIGKILLed.  Every dropped client reconnects as the SDK does:
   it waits the SDK's full-jitter backoff (storm_sdk.backoff.Backoff, the SDK's default policy; reset after a
   resume) and tries a surviving gateway (a load balancer takes the dead one out; a refused attempt tries
   another), then auth, hello and ``subscribe`` with ``since`` = the last offset it saw (resumed at
   ``subscribed``);
5. measured: ``readmit_all_s`` = from the kill to the last dropped client resumed (target <= 10 s), its
   p50/p99 per client, attempts, refusals by reason (error codes, HTTP statuses, close codes) and which
   of them are not a documented overload answer, and ``lost``: acked messages of the sampled channels a
   member never received (live or replayed), ``duplicates`` and ``inversions`` by offset.

Result: one JSON object on stdout (storm_cli/main.py prints it), progress on stderr.  ``failed`` when a
dropped client was not resumed within ``--settle-timeout``, an acked message was lost, a refusal was not a
documented overload answer, or the initial connections did not all open.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import re
import signal
import sys
import time
from typing import Any

from storm_tools.bench.connect import PER_PROCESS_MAX, Refused, classify, percentile_ms, split
from storm_tools.bench.procs import ClientProcess, Progress, child_channel, raise_nofile, source_address
from storm_tools.bench.wsclient import WSClient

HOST = "127.0.0.1"
#: Refusals that are documented overload answers (docs/protocol.md): retry later, with jitter.
OVERLOAD = frozenset({"http_503", "http_429", "closed_1013", "closed_1011", "closed_4029", "unavailable",
                      "rate_limited", "too_many_connections", "connection_refused"})
_CODE = re.compile(rb'"code":"([a-z_]+)"')
_OFFSET = re.compile(rb'"offset":(\d+)')


class PhaseTimeout(TimeoutError):
    """A setup phase that missed its timeout: ``upgrade`` (TCP and the WebSocket upgrade), ``hello`` (auth ->
    hello) or ``subscribed`` (subscribe -> subscribed); counted as ``timeout_<phase>`` after the kill."""

    def __init__(self, phase: str) -> None:
        super().__init__(f"no answer in the {phase} phase")
        self.phase = phase


def add_parser(sub: Any) -> None:
    p = sub.add_parser("reconnect", help="SIGKILL the busiest gateway; time until every dropped client resumed")
    p.add_argument("--connections", type=int, default=17000, help="client connections (default 17000)")
    p.add_argument("--gateways", type=int, default=3, help="gateway processes (default 3; at least 2)")
    p.add_argument("--members", type=int, default=10, help="users per private channel (default 10)")
    p.add_argument("--sample-channels", type=int, default=10,
                   help="channels with a publisher, checked for loss (default 10)")
    p.add_argument("--rate", type=float, default=2.0, help="publishes per second per sampled channel (default 2)")
    p.add_argument("--settle-timeout", type=float, default=120.0,
                   help="seconds after the kill for every dropped client to resume (default 120)")
    p.add_argument("--concurrency", type=int, default=64, help="initial setups in flight per client process")
    p.add_argument("--per-process", type=int, default=6000, help="connections per client process (default 6000)")
    p.add_argument("--connect-timeout", type=float, default=10.0,
                   help="seconds for the TCP connect and WebSocket upgrade, then again for auth -> hello, as the "
                        "SDK's connect_timeout_s (default 10)")
    p.add_argument("--request-timeout", type=float, default=10.0,
                   help="seconds for subscribe -> subscribed, as the SDK's request_timeout_s (default 10)")
    p.add_argument("--initial-timeout", type=float, default=300.0,
                   help="seconds a connection may take to open at first, overload answers retried with the "
                        "SDK's backoff meanwhile (default 300)")
    p.add_argument("--start-timeout", type=float, default=120.0, help="seconds for a server to get ready")
    p.add_argument("--log-dir", default=None, help="keep the servers' logs here (default: discarded)")
    p.add_argument("--json", action="store_true", help="compact JSON on one line")


def validate(args: argparse.Namespace) -> None:
    if args.gateways < 2:
        raise SystemExit("storm bench reconnect: --gateways must be >= 2 (one is killed, the others take over)")
    if args.members < 2 or args.connections < args.members:
        raise SystemExit("storm bench reconnect: need --connections >= --members >= 2")
    if not 1 <= args.sample_channels <= args.connections // args.members:
        raise SystemExit("storm bench reconnect: --sample-channels in 1..connections/members")
    if args.rate <= 0 or args.settle_timeout <= 0 or args.connect_timeout <= 0 or args.request_timeout <= 0 \
            or args.concurrency < 1 \
            or args.initial_timeout <= 0:
        raise SystemExit("storm bench reconnect: --rate, --settle-timeout, --connect-timeout, --request-timeout, "
                         "--initial-timeout and --concurrency must be > 0")
    if not 1 <= args.per_process <= PER_PROCESS_MAX or math.ceil(args.connections / args.per_process) > 250:
        raise SystemExit(f"storm bench reconnect: --per-process in 1..{PER_PROCESS_MAX}, at most 250 processes")


def failed(result: dict[str, Any]) -> bool:
    return bool(result.get("error") or result.get("not_resumed") or result.get("lost")
                or result.get("undocumented_refusals") or result.get("initial_failed")
                or result.get("connected") != result.get("connections"))


# ---- client child -------------------------------------------------------------------------------------
class Member(WSClient):
    """One user's connection: auth -> hello -> subscribe [since] -> subscribed (``ready``); message offsets
    of its channel are remembered; a close is reported to ``on_drop``."""

    def __init__(self, user: int, port: int, auth: bytes, channel: str, since: int | None, keep: bool,
                 on_drop: Any) -> None:
        super().__init__(HOST, port)
        self.user, self.gateway_port, self._auth, self.channel = user, port, auth, channel
        frame: dict[str, Any] = {"op": "subscribe", "id": 1, "channel": channel}
        if since is not None:
            frame["since"] = since
        self._subscribe = json.dumps(frame).encode()
        self.keep = keep  # a sampled channel: every offset is kept for the loss check
        self.offsets: list[int] = []
        self.last: int | None = since
        self.on_drop = on_drop
        self.stopping = False
        self.registered = False  # Child.open returned it: only then is a close a drop to resume from
        self.hello: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for future in (self.hello, self.ready, self.opened):  # failures are counted where awaited, or not at all
            future.add_done_callback(lambda f: f.cancelled() or f.exception())

    def on_open(self) -> None:
        self.send_text(self._auth)

    def on_message(self, payload: bytes, binary: bool) -> None:
        for part in payload.split(b"\n"):
            if b'"type":"message"' in part:
                m = _OFFSET.search(part)
                if m:
                    offset = int(m[1])
                    self.last = offset if self.last is None else max(self.last, offset)
                    if self.keep:
                        self.offsets.append(offset)
            elif self.ready.done():
                continue
            elif b'"type":"error"' in part:
                m = _CODE.search(part)
                refused = Refused(m[1].decode() if m else "error", part[:300].decode(errors="replace"))
                self.ready.set_exception(refused)
                if not self.hello.done():
                    self.hello.set_exception(refused)
            elif b'"type":"hello"' in part:
                self.hello.set_result(None)
                self.send_text(self._subscribe)
            elif b'"type":"subscribed"' in part:
                m = _OFFSET.search(part)
                if m and self.last is None:  # resume from the head at subscription (the SDK's rule)
                    self.last = int(m[1])
                self.ready.set_result(None)

    def on_close(self, code: int | None) -> None:
        if not self.ready.done():
            refused = self.opened.exception() if self.opened.done() and not self.opened.cancelled() else None
            # the upgrade's answer (e.g. "handshake refused: b'HTTP/1.1 503 ...'") when there was one
            self.ready.set_exception(refused or ConnectionError(f"closed during setup (code {code})"))
            if not self.hello.done():
                self.hello.set_exception(self.ready.exception() or ConnectionError("closed"))
        elif not self.stopping and self.registered:
            self.on_drop(self, code)
        # else: an attempt its opener gave up on (its timeout hit as it became ready) and aborted; the opener
        # retries from the same offset, so what this attempt received is neither counted nor resumed from


class Child:
    """A client process's connections and their reconnect loops."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        from storm_sdk.backoff import Backoff

        self.cfg = cfg
        self.ports: list[int] = cfg["ports"]
        self.dead: set[int] = set()  # ports a load balancer has taken out (told by the parent)
        self.members: dict[int, Member] = {}
        self.backoff = {u: Backoff() for u in range(len(cfg["users"]))}
        self.dropped: dict[int, dict[str, Any]] = {}  # user -> drop_ns, resumed_ns, attempts
        self.refused: dict[str, int] = {}
        self.failed: dict[str, int] = {}
        self.first_error = ""
        self.offsets: dict[int, list[int]] = {}  # sampled users: every offset received, across connections
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False

    def count(self, table: dict[str, int], reason: str, detail: str) -> None:
        table[reason] = table.get(reason, 0) + 1
        self.first_error = self.first_error or f"{reason}: {detail}"[:300]

    async def open(self, u: int, port: int, since: int | None, timeout: float | None = None) -> Member:
        cfg = self.cfg
        auth = b'{"op":"auth","token":"%s"}' % cfg["tokens"][u].encode()
        loop = asyncio.get_running_loop()
        proto: Member | None = None
        phase = timeout or cfg["connect_timeout"]
        stage = "upgrade"
        try:
            # the SDK's timeouts (sdk/storm_sdk/client.py), each phase its own: TCP and the WebSocket upgrade
            # within connect_timeout_s, auth -> hello within connect_timeout_s again, subscribe within
            # request_timeout_s (both 10 s by default); ``timeout`` (the initial connects) bounds each phase
            async with asyncio.timeout(phase):
                _, proto = await loop.create_connection(
                    lambda: Member(u, port, auth, cfg["channels"][u], since, u in cfg["sampled"], self.on_drop),
                    HOST, port, local_addr=(cfg["source"], 0))
                await proto.opened
            stage = "hello"
            async with asyncio.timeout(phase):
                await proto.hello
            stage = "subscribed"
            async with asyncio.timeout(timeout or cfg["request_timeout"]):
                await proto.ready
        except TimeoutError as exc:
            if proto is not None and proto.transport is not None:
                proto.transport.abort()
            raise PhaseTimeout(stage) from exc
        except BaseException:
            if proto is not None and proto.transport is not None:
                proto.transport.abort()
            raise
        self.members[u] = proto
        proto.registered = True
        return proto

    def on_drop(self, member: Member, code: int | None) -> None:
        u = member.user
        if member.keep:
            self.offsets.setdefault(u, []).extend(member.offsets)
            member.offsets = []
        entry = self.dropped.setdefault(u, {"drop_ns": time.monotonic_ns(), "attempts": 0, "code": code})
        entry.pop("resumed_ns", None)
        task = asyncio.get_running_loop().create_task(self.reconnect(u, member.gateway_port, member.last, code))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def reconnect(self, u: int, lost_port: int, since: int | None, code: int | None) -> None:
        """The SDK's loop: backoff (full jitter), then another gateway; until resumed or stopped."""
        entry = self.dropped[u]
        backoff = self.backoff[u]
        avoid = {lost_port}
        while not self.stopping:
            await asyncio.sleep(backoff.next_delay(close_code=code or 1006))
            choices = [p for p in self.ports if p not in avoid and p not in self.dead] or \
                      [p for p in self.ports if p not in self.dead] or self.ports
            port = choices[(u + entry["attempts"]) % len(choices)]
            entry["attempts"] += 1
            try:
                await self.open(u, port, since)
            except Exception as exc:
                reason, detail, refused = classify(exc)
                if isinstance(exc, PhaseTimeout):  # which phase the client gave up in
                    reason = f"timeout_{exc.phase}"
                self.count(self.refused if refused else self.failed, reason, detail)
                avoid = {port}
                code = int(reason.rsplit("_", 1)[1]) if reason.startswith("closed_") and reason[7:].isdigit() else None
                continue
            entry["resumed_ns"] = time.monotonic_ns()
            entry["port"] = port
            backoff.reset()
            return

    def report(self) -> dict[str, Any]:
        offsets = {u: list(off) for u, off in self.offsets.items()}
        for u, m in self.members.items():
            if m.keep:
                offsets.setdefault(u, []).extend(m.offsets)
        return {"dropped": {str(u): e for u, e in self.dropped.items()}, "refused": self.refused,
                "failed": self.failed, "first_error": self.first_error,
                "offsets": {str(self.cfg["users"][u]): off for u, off in offsets.items()}}


async def _heartbeat(child: Child, every_s: float) -> None:
    """Each open connection pings every ``every_s`` (as the SDK does at the server's heartbeat_s), spread
    over the period: without it the gateway closes an idle connection (4002) during a long run."""
    frame = b'{"op":"ping"}'
    while True:
        members = list(child.members.values())
        step = every_s / max(1, len(members))
        for m in members:
            if m.transport is not None and not m.transport.is_closing() and m.ready.done():
                m.send_text(frame)
            await asyncio.sleep(step)
        if not members:
            await asyncio.sleep(every_s)


async def child_main() -> None:
    chan, cfg = await child_channel()
    raise_nofile()
    child = Child(cfg)
    chan.emit("armed")
    cmd = await chan.command()
    if cmd is None or cmd.get("cmd") != "go":
        return
    # the heartbeat runs from the start: a connection opened early would otherwise be closed idle (4002)
    # while the others are still opening
    pinger = asyncio.get_running_loop().create_task(_heartbeat(child, cfg["ping_s"]))
    gate = asyncio.Semaphore(cfg["concurrency"])
    initial_failed: dict[str, int] = {}
    initial_retried: dict[str, int] = {}

    async def first(u: int) -> None:
        """Open one connection; an overload answer (503 past STORM_MAX_HANDSHAKES, 1011, 4029) is retried
        after the SDK's backoff, as a client does, until ``initial_timeout``; other failures count."""
        from storm_sdk.backoff import Backoff

        backoff = Backoff()
        deadline = time.monotonic() + cfg["initial_timeout"]
        while True:
            async with gate:
                try:
                    await child.open(u, cfg["initial_ports"][u], None, min(60.0, cfg["initial_timeout"]))
                    return
                except Exception as exc:
                    reason, _, _ = classify(exc)
            if reason not in OVERLOAD or time.monotonic() > deadline:
                initial_failed[reason] = initial_failed.get(reason, 0) + 1
                return
            initial_retried[reason] = initial_retried.get(reason, 0) + 1
            await asyncio.sleep(backoff.next_delay())

    await asyncio.gather(*(first(u) for u in range(len(cfg["users"]))))
    by_port: dict[str, int] = {}
    for m in child.members.values():
        by_port[str(m.gateway_port)] = by_port.get(str(m.gateway_port), 0) + 1
    chan.emit("ready", connected=len(child.members), by_port=by_port, initial_failed=initial_failed,
              initial_retried=initial_retried)
    while (cmd := await chan.command()) is not None:
        if cmd.get("cmd") == "dead":
            child.dead.add(int(cmd["port"]))
        elif cmd.get("cmd") == "status":
            pending = sum(1 for e in child.dropped.values() if "resumed_ns" not in e)
            chan.emit("status", dropped=len(child.dropped), pending=pending)
        elif cmd.get("cmd") == "report":
            chan.emit("report", **child.report())
        elif cmd.get("cmd") == "stop":
            break
    child.stopping = True
    pinger.cancel()
    for task in list(child.tasks):
        task.cancel()
    for m in child.members.values():
        m.stopping = True
        if m.transport is not None:
            m.transport.abort()


# ---- parent -------------------------------------------------------------------------------------------
def _say(text: str) -> None:
    sys.stderr.write(f"bench reconnect: {text}\n")
    sys.stderr.flush()


def score_loss(acked: dict[str, list[int]], members: dict[str, list[str]],
               received: dict[str, list[int]]) -> dict[str, int]:
    """Per sampled channel, every member must have received every acked offset once, in increasing order.
    ``acked``: channel -> acked offsets; ``members``: channel -> users; ``received``: user -> offsets."""
    lost = duplicates = inversions = 0
    for channel, offsets in acked.items():
        for user in members.get(channel, []):
            got = received.get(user, [])
            seen = set(got)
            lost += sum(1 for o in offsets if o not in seen)
            duplicates += len(got) - len(seen)
            inversions += sum(1 for a, b in itertools.pairwise(got) if b < a)
    return {"lost": lost, "duplicates": duplicates, "inversions": inversions}


async def _publish(url: str, token: str, channel: str, rate: float, stop: asyncio.Event,
                   acked: list[int], errors: list[str]) -> None:
    from storm_sdk import ClientOptions, StormClient

    client = StormClient(url, lambda: token, ClientOptions(request_timeout_s=30.0))
    await client.start()
    try:
        await client.wait_online(timeout=30)
        pending = []
        seq = 0
        while not stop.is_set():
            pending.append(client.publish(channel, f"storm #{seq}", cmid=f"rc-{channel[:8]}-{seq}"))
            seq += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0 / rate)
        for p in pending:
            try:
                await p.wait(timeout=30)
                if p.offset is not None:
                    acked.append(p.offset)
            except Exception as exc:  # not acked: not counted as lost, reported
                errors.append(f"{type(exc).__name__}: {exc}"[:200])
    finally:
        await client.stop()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import logging

    from storm_tools.bench.e2e import real_topology
    from storm_tools.verify import _service_env

    for name in ("storm", "httpx", "hazelcast", "storm_sdk", "websockets"):
        logging.getLogger(name).setLevel(logging.WARNING)
    env = _service_env()
    env.update({
        "STORM_BROKER": "pulsar", "STORM_CACHE": "hazelcast", "STORM_SEED_DEMO": "false", "PYTHONUNBUFFERED": "1",
        "STORM_MAX_CONNECTIONS_PER_IP": str(max(200_000, args.connections)),
    })
    # no consumers role: nothing here needs the messages stored, and a consumers process without the
    # deployment's STORM_CONSUMER_WORKSPACE_PREFIX takes its share of every workspace on a shared Pulsar
    async with real_topology(env, connections=args.connections, members=args.members, gateways=args.gateways,
                             consumers=False, log_dir=args.log_dir, start_timeout=args.start_timeout,
                             prefix="reconnect") as topo:
        tokens = await asyncio.to_thread(topo.tokens)
        try:
            result = await _storm(args, topo, tokens)
        except (TimeoutError, RuntimeError) as exc:  # a child that never reported: say so in the JSON
            result = {"connections": args.connections, "gateways": args.gateways,
                      "error": f"{type(exc).__name__}: {exc}"[:300] or type(exc).__name__}
    result.update(topo.outcome)  # set when the topology is stopped: cleanup, workspace
    result["server"] = f"{args.gateways} gateway processes on Pulsar + Hazelcast + PostgreSQL"
    return result


async def _storm(args: argparse.Namespace, topo: Any, tokens: list[str]) -> dict[str, Any]:
    n, members = args.connections, args.members
    users = n - n % members  # whole channels only
    ports = [p.port for p in topo.gateways]
    channel_of = [topo.ws.channels[u // members] for u in range(users)]
    sampled_channels = topo.ws.channels[:args.sample_channels]
    sampled_users = set(range(args.sample_channels * members))
    procs = math.ceil(users / args.per_process)
    clients: list[ClientProcess] = []
    progress = Progress()
    stop_publishing = asyncio.Event()
    publishers: list[asyncio.Task[None]] = []
    acked: dict[str, list[int]] = {c: [] for c in sampled_channels}
    publish_errors: list[str] = []
    result: dict[str, Any] = {"connections": users, "gateways": args.gateways, "members": members}
    try:
        start = 0
        for i, size in enumerate(split(users, procs)):
            own = list(range(start, start + size))
            cfg = {"ports": ports, "initial_ports": [ports[u % len(ports)] for u in own],
                   "users": own, "tokens": [tokens[u] for u in own], "channels": [channel_of[u] for u in own],
                   "sampled": [k for k, u in enumerate(own) if u in sampled_users], "source": source_address(i),
                   "connect_timeout": args.connect_timeout, "request_timeout": args.request_timeout,
                   "initial_timeout": args.initial_timeout,
                   "concurrency": args.concurrency, "ping_s": 20.0}
            start += size
            client = ClientProcess(f"reconnect-{i}", "storm_tools.bench.reconnect", cfg)
            clients.append(client)
            await client.start()
        await asyncio.gather(*(c.wait_for("armed", 120) for c in clients))
        t0 = time.monotonic()
        for c in clients:
            c.send({"cmd": "go"})
        # every connection gives up by --initial-timeout (+ its last attempt's 60 s)
        ready = await asyncio.gather(*(c.wait_for("ready", args.initial_timeout + 120) for c in clients))
        by_port: dict[int, int] = {}
        for r in ready:
            for port, k in r["by_port"].items():
                by_port[int(port)] = by_port.get(int(port), 0) + k
        connected = sum(r["connected"] for r in ready)
        result["connected"] = connected
        result["initial_failed"] = _merge([r["initial_failed"] for r in ready])
        result["initial_refused_then_retried"] = _merge([r["initial_retried"] for r in ready])
        result["initial_connect_s"] = round(time.monotonic() - t0, 1)
        _say(f"{connected}/{users} connected in {result['initial_connect_s']} s; by gateway "
             + ", ".join(f"{g.name} {by_port.get(g.port, 0)}" for g in topo.gateways))
        victim = max(topo.gateways, key=lambda g: by_port.get(g.port, 0))
        survivor = next(g for g in topo.gateways if g is not victim)
        url = f"ws://{HOST}:{survivor.port}/ws"
        for k, channel in enumerate(sampled_channels):
            publishers.append(asyncio.create_task(_publish(url, tokens[k * members], channel, args.rate,
                                                           stop_publishing, acked[channel], publish_errors)))
        await asyncio.sleep(3.0)  # publishing before the kill
        kill_ns = time.monotonic_ns()
        os.kill(victim.pid, signal.SIGKILL)
        for c in clients:
            c.send({"cmd": "dead", "port": victim.port})
        _say(f"SIGKILLed {victim.name} (pid {victim.pid}, {by_port.get(victim.port, 0)} connections)")
        deadline = time.monotonic() + args.settle_timeout
        pending = dropped = 0
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            for c in clients:
                c.send({"cmd": "status"})
            statuses = await asyncio.gather(*(c.wait_for("status", 60) for c in clients))
            dropped = sum(s["dropped"] for s in statuses)
            pending = sum(s["pending"] for s in statuses)
            progress.update(f"dropped {dropped}, waiting for {pending}", force=False)
            if dropped and not pending and time.monotonic() - kill_ns / 1e9 > 1.0:
                break
        progress.done(f"dropped {dropped}, not resumed {pending}")
        await asyncio.sleep(3.0)  # publishing after the storm, then the replays and deliveries settle
        stop_publishing.set()
        await asyncio.gather(*publishers, return_exceptions=True)
        await asyncio.sleep(3.0)
        for c in clients:
            c.send({"cmd": "report"})
        reports = await asyncio.gather(*(c.wait_for("report", 120) for c in clients))
        for c in clients:
            c.send({"cmd": "stop"})
        result.update(summarize(reports, kill_ns, by_port.get(victim.port, 0), acked,
                                {ch: [str(u) for u in range(k * members, (k + 1) * members)]
                                 for k, ch in enumerate(sampled_channels)}))
        result.update({"killed": victim.name, "killed_held": by_port.get(victim.port, 0),
                       "by_gateway": {g.name: by_port.get(g.port, 0) for g in topo.gateways},
                       "publish_errors": len(publish_errors), "first_publish_error": publish_errors[:1],
                       "settle_timeout_s": args.settle_timeout, "client_procs": len(clients),
                       "backoff": "storm_sdk.backoff.BackoffPolicy() (full jitter, 0.5 s initial ceiling, x2)"})
    finally:
        stop_publishing.set()
        for t in publishers:
            t.cancel()
        progress.done()
        for c in clients:
            await c.stop()
    return result


def _merge(tables: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for table in tables:
        for k, v in table.items():
            out[k] = out.get(k, 0) + v
    return out


def _by_code(drops: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in drops:
        key = str(e.get("code"))
        out[key] = out.get(key, 0) + 1
    return out


def summarize(reports: list[dict[str, Any]], kill_ns: int, held: int, acked: dict[str, list[int]],
              members: dict[str, list[str]]) -> dict[str, Any]:
    """The figures of the storm from the children's reports (see the module docstring)."""
    drops = [e for r in reports for e in r["dropped"].values()]
    resumed = sorted((e["resumed_ns"] - kill_ns) // 1000 for e in drops if "resumed_ns" in e)
    refused: dict[str, int] = {}
    failed_: dict[str, int] = {}
    for r in reports:
        for k, v in r["refused"].items():
            refused[k] = refused.get(k, 0) + v
        for k, v in r["failed"].items():
            failed_[k] = failed_.get(k, 0) + v
    received = {u: off for r in reports for u, off in r["offsets"].items()}
    out: dict[str, Any] = {
        "dropped": len(drops),
        "dropped_by_code": _by_code(drops),
        "resumed": len(resumed),
        "not_resumed": len(drops) - len(resumed),
        "readmit_all_s": round(resumed[-1] / 1e6, 2) if resumed and len(resumed) == len(drops) else None,
        "readmit_p50_ms": percentile_ms(resumed, 50),
        "readmit_p99_ms": percentile_ms(resumed, 99),
        "attempts_per_client_max": max((e["attempts"] for e in drops), default=0),
        "attempts": sum(e["attempts"] for e in drops),
        "readmits_per_s": round(len(resumed) / (resumed[-1] / 1e6), 1) if resumed and resumed[-1] else None,
        "refused_by_reason": dict(sorted(refused.items(), key=lambda kv: -kv[1])),
        "failed_by_reason": dict(sorted(failed_.items(), key=lambda kv: -kv[1])),
        "undocumented_refusals": {k: v for k, v in refused.items() if k not in OVERLOAD},
        "acked": sum(len(v) for v in acked.values()),
        **score_loss(acked, members, received),
        "target_readmit_s": 10.0,
    }
    out["met_target"] = (out["readmit_all_s"] is not None and out["readmit_all_s"] <= 10.0
                         and len(drops) >= held and not out["lost"])
    first_error = next((r["first_error"] for r in reports if r["first_error"]), "")
    if first_error:
        out["first_error"] = first_error
    return out


def main() -> None:
    if sys.argv[1:] != ["--child"]:
        sys.exit("usage: python -m storm_tools.bench.reconnect --child   (run `storm bench reconnect` instead)")
    import uvloop

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(child_main())


if __name__ == "__main__":
    main()
