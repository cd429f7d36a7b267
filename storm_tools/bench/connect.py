"""`storm bench connect`: how fast, and at what server CPU, the gateway admits authenticated connections.

    storm bench connect --connections 5000 [--subscribe K] [--services embedded|real] [--hold S] [--json]

What it does (docs/benchmarks.md, "Connect"):

1. the server: ``embedded`` is one ``storm dev`` child (in-memory broker and cache, SQLite; its demo
   workspace and users); ``real`` is ``--gateways`` ``storm serve gateway`` processes on Pulsar + Hazelcast
   + PostgreSQL with a throwaway workspace of ``--connections`` users (storm_tools/bench/e2e.py
   :func:`~storm_tools.bench.e2e.real_topology`, the same set-up as ``storm bench e2e``);
2. client child processes (``python -m storm_tools.bench.connect --child``), at most ``--per-process``
   connections each (the file limit is 20 000 per process), each on its own source address 127.0.0.2,
   127.0.0.3, ... (about 28 000 ephemeral ports per address), start together at one instant;
3. each connection: TCP connect, WebSocket upgrade, ``auth`` with a token, ``hello``, then,
   with ``--subscribe K``, ``subscribe`` to K channels every connection is a member of and their
   ``subscribed`` answers; ``--concurrency`` setups in flight per client process.  Tokens: embedded, the
   demo users' dev tokens (HS256), cycled; real, one user each, by default an Auth0-style RS256 token signed
   by the bench and verified by the gateways against a JWKS the bench serves on loopback
   (storm_tools/bench/jwks.py, ``STORM_IDENTITY=auth0``), fetched once and cached as in production
   (``--identity dev`` for HS256 dev tokens);
4. the gateways' CPU (every gateway process and its children, /proc schedstat) is read at the instant the
   clients start and again when the last setup is done: ``server_cpu_us_per_connect`` = that CPU / the
   connections admitted; with ``real`` the CPU of Pulsar, Hazelcast and PostgreSQL over the same window is
   reported beside it (``cpu_us_per_connect``);
5. with ``--hold S``: the connections are held S seconds, each sending a ``ping`` every ``--ping-s`` (from
   its ``hello`` on, as a client does: a slow ramp must not leave the first ones silent past the idle
   timeout); the
   CPU of that window (``hold_cores`` by role, ``hold_server_cores`` in all), the server CPU per ping
   answered (``server_cpu_us_per_ping``, all roles; ``cpu_us_per_ping`` by role) and the connections the
   server closed are reported.

Result: one JSON object on stdout (storm_cli/main.py prints it), progress on stderr.  ``failed`` when a
connection was refused or failed, or the server closed one during the hold.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import math
import random
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from storm_tools.bench.procs import (
    ClientProcess,
    Progress,
    ServerProcess,
    child_channel,
    free_port,
    python_module,
    raise_nofile,
    source_address,
)
from storm_tools.bench.wsclient import WSClient

HOST = "127.0.0.1"
PER_PROCESS_MAX = 18000  # RLIMIT_NOFILE is 20 000 per process here; keep room for the rest
IDENTITIES = {
    "dev": "dev tokens (HS256, the deployment's dev secret)",
    "rs256": "Auth0-style RS256 tokens, verified against the gateways' cached JWKS (served by the bench)",
}
_CODE = re.compile(rb'"code":"([a-z_]+)"')


def add_parser(sub: Any) -> None:
    p = sub.add_parser("connect", help="connections admitted per second and server CPU per connect")
    p.add_argument("--connections", type=int, default=5000, help="connections to open (default 5000)")
    p.add_argument("--subscribe", type=int, default=0,
                   help="channels each connection subscribes to after hello; every connection is a member "
                        "of the same K channels (default 0; embedded: at most 3, the demo channels)")
    p.add_argument("--services", choices=("embedded", "real"), default="embedded",
                   help="embedded: one `storm dev`; real: gateways on Pulsar + Hazelcast + PostgreSQL")
    p.add_argument("--identity", choices=("dev", "rs256"), default=None,
                   help="tokens: rs256 = Auth0-style RS256 against a JWKS the bench serves, verified by the "
                        "gateways with STORM_IDENTITY=auth0 (default with --services real); dev = HS256 dev "
                        "tokens (default, and the only choice, embedded)")
    p.add_argument("--gateways", type=int, default=1, help="gateway processes with --services real (default 1)")
    p.add_argument("--hold", type=float, default=0.0, help="then hold the connections this many seconds, "
                                                           "pinging (default 0: close at once)")
    p.add_argument("--ping-s", type=float, default=25.0, help="while holding, each connection pings this often "
                                                              "(default 25)")
    p.add_argument("--concurrency", type=int, default=64, help="setups in flight per client process (default 64)")
    p.add_argument("--per-process", type=int, default=9000, help="connections per client process (default 9000)")
    p.add_argument("--client-procs", type=int, default=0,
                   help="client processes (default: connections / --per-process, rounded up)")
    p.add_argument("--connect-timeout", type=float, default=60.0, help="seconds one setup may take (default 60)")
    p.add_argument("--start-timeout", type=float, default=120.0, help="seconds for a server to get ready")
    p.add_argument("--log-dir", default=None, help="keep the servers' logs here (default: discarded)")
    p.add_argument("--json", action="store_true", help="compact JSON on one line")


def validate(args: argparse.Namespace) -> None:
    if args.connections < 1 or args.subscribe < 0 or args.hold < 0 or args.ping_s <= 0:
        raise SystemExit("storm bench connect: --connections must be > 0, --subscribe and --hold >= 0, "
                         "--ping-s > 0")
    if args.services == "embedded" and args.subscribe > 3:
        raise SystemExit("storm bench connect: --services embedded has 3 channels (the demo's): --subscribe <= 3")
    if args.identity is None:
        args.identity = "rs256" if args.services == "real" else "dev"
    if args.services == "embedded" and args.identity != "dev":
        raise SystemExit("storm bench connect: `storm dev` verifies dev tokens only: --identity dev")
    if not 1 <= args.per_process <= PER_PROCESS_MAX or args.concurrency < 1 or args.gateways < 1:
        raise SystemExit(f"storm bench connect: --per-process in 1..{PER_PROCESS_MAX}, --concurrency and "
                         "--gateways > 0")
    procs = client_procs(args)
    if procs > 250 or math.ceil(args.connections / procs) > PER_PROCESS_MAX:
        raise SystemExit("storm bench connect: too many connections per client process (or over 250 processes)")
    if args.connect_timeout <= 0 or args.start_timeout <= 0:
        raise SystemExit("storm bench connect: --connect-timeout and --start-timeout must be > 0")


def client_procs(args: argparse.Namespace) -> int:
    return int(args.client_procs or math.ceil(args.connections / args.per_process))


def failed(result: dict[str, Any]) -> bool:
    return bool(result.get("error") or result.get("refused") or result.get("failed_by_reason")
                or result.get("closed_by_server") or not result.get("connected"))


# ---- client child -------------------------------------------------------------------------------------
class Outcome:
    """Per client process: setup times and what went wrong, by reason."""

    def __init__(self) -> None:
        self.setup_us: list[int] = []
        self.refused: dict[str, int] = {}  # the server said no: an error frame's code, or the HTTP status
        self.failed: dict[str, int] = {}  # anything else: timeouts, resets, closes during setup
        self.first_error = ""
        self.closed_by_server: dict[str, int] = {}  # after setup, by close code
        self.pongs = 0

    def count(self, table: dict[str, int], reason: str, detail: str) -> None:
        table[reason] = table.get(reason, 0) + 1
        if not self.first_error:
            self.first_error = f"{reason}: {detail}"[:300]


class Refused(Exception):
    """The server answered the setup with an error frame or a non-101 status."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class Connector(WSClient):
    """auth -> hello [-> subscribe x K -> subscribed x K] (``ready``); then answers pings and counts closes."""

    def __init__(self, host: str, port: int, auth: bytes, subscribes: list[bytes], outcome: Outcome) -> None:
        super().__init__(host, port)
        self._auth = auth
        self._subscribes = subscribes
        self._waiting = len(subscribes)
        self.outcome = outcome
        self.stopping = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_open(self) -> None:
        self.send_text(self._auth)

    def keepalive(self, every: float) -> None:
        """Ping every ``every`` seconds from now on (the first after a random part of it, so the connections
        spread over the period), until the connection closes."""
        loop = asyncio.get_running_loop()

        def tick() -> None:
            if self.transport is None or self.transport.is_closing():
                return
            self.send_text(b'{"op":"ping"}')
            loop.call_later(every, tick)

        loop.call_later(random.random() * every, tick)

    def on_message(self, payload: bytes, binary: bool) -> None:
        if self.ready.done():
            if b'"type":"pong"' in payload:
                self.outcome.pongs += 1
            return
        if b'"type":"error"' in payload:
            m = _CODE.search(payload)
            self.ready.set_exception(Refused(m[1].decode() if m else "error",
                                             payload[:300].decode(errors="replace")))
            return
        if b'"type":"hello"' in payload:
            if not self._subscribes:
                self.ready.set_result(None)
                return
            for frame in self._subscribes:
                self.send_text(frame)
        if self._subscribes:
            self._waiting -= payload.count(b'"type":"subscribed"')
            if self._waiting <= 0:
                self.ready.set_result(None)

    def on_close(self, code: int | None) -> None:
        if not self.ready.done():
            opened = self.opened
            refusal = opened.exception() if opened.done() and not opened.cancelled() else None
            if refusal is not None:
                self.ready.set_exception(refusal)  # the HTTP answer refusing the upgrade (a 503...)
            else:
                self.ready.set_exception(ConnectionError(f"closed during setup (code {code})"))
        elif not self.stopping and self.ready.exception() is None:
            key = str(code)
            self.outcome.closed_by_server[key] = self.outcome.closed_by_server.get(key, 0) + 1


def classify(exc: BaseException) -> tuple[str, str, bool]:
    """(reason, detail, refused?) of a failed setup."""
    if isinstance(exc, Refused):
        return exc.reason, str(exc), True
    text = str(exc)
    m = re.search(r"handshake refused: b'HTTP/1\.[01] (\d{3})", text)
    if m:
        return f"http_{m[1]}", text, True
    if isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return "timeout", repr(exc), False
    if isinstance(exc, ConnectionRefusedError):
        return "connection_refused", repr(exc), False
    if isinstance(exc, ConnectionResetError):
        return "connection_reset", repr(exc), False
    if isinstance(exc, ConnectionError) and "closed during setup" in text:
        code = text.rsplit("code ", 1)[-1].rstrip(")")
        return f"closed_{code}", text, False
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno)).lower(), repr(exc), False
    return type(exc).__name__, repr(exc), False


async def _open_all(cfg: dict[str, Any], outcome: Outcome, chan: Any) -> tuple[list[Connector], int, int]:
    """Open every connection, ``concurrency`` setups in flight; (the ready ones, first start ns, last ready ns)."""
    loop = asyncio.get_running_loop()
    host, ports, tokens, source = HOST, cfg["ports"], cfg["tokens"], cfg["source"]
    subscribes = [b'{"op":"subscribe","id":%d,"channel":"%s"}' % (i + 1, ch.encode())
                  for i, ch in enumerate(cfg["channels"])]
    timeout = cfg["connect_timeout"]
    gate = asyncio.Semaphore(cfg["concurrency"])
    conns: list[Connector] = []
    first_ns = 0
    last_ns = 0

    async def one(i: int) -> None:
        nonlocal first_ns, last_ns
        port = ports[i % len(ports)]
        auth = b'{"op":"auth","token":"%s"}' % tokens[i % len(tokens)].encode()
        async with gate:
            t0 = time.monotonic_ns()
            first_ns = first_ns or t0
            proto: Connector | None = None
            try:
                async with asyncio.timeout(timeout):
                    _, proto = await loop.create_connection(
                        lambda: Connector(host, port, auth, subscribes, outcome), host, port, local_addr=(source, 0))
                    await proto.ready
            except Exception as exc:  # counted by reason, never fatal
                reason, detail, refused = classify(exc)
                outcome.count(outcome.refused if refused else outcome.failed, reason, detail)
                if proto is not None and proto.transport is not None:
                    proto.transport.abort()
                return
            now = time.monotonic_ns()
            last_ns = max(last_ns, now)
            outcome.setup_us.append((now - t0) // 1000)
            conns.append(proto)
            if cfg.get("ping_s"):  # held: it pings from its hello on, as a client does (not silent until the hold)
                proto.keepalive(float(cfg["ping_s"]))

    async def report() -> None:
        while True:
            await asyncio.sleep(0.5)
            chan.emit("progress", connected=len(conns),
                      failed=sum(outcome.failed.values()) + sum(outcome.refused.values()))

    reporter = loop.create_task(report())
    try:
        await asyncio.gather(*(one(i) for i in range(cfg["connections"])))
    finally:
        reporter.cancel()
    return conns, first_ns, last_ns


async def _ping(conns: list[Connector], every: float) -> None:
    """Each connection pings every ``every`` seconds, the connections spread evenly over the period."""
    if not conns:
        return
    frame = b'{"op":"ping"}'
    start = time.monotonic() + random.random() * every / len(conns)
    k = 0
    while True:
        for c in conns:
            due = start + k * every / len(conns)
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if c.transport is not None and not c.transport.is_closing():
                c.send_text(frame)
            k += 1


async def child_main() -> None:
    chan, cfg = await child_channel()
    raise_nofile()
    outcome = Outcome()
    chan.emit("armed")
    cmd = await chan.command()
    if cmd is None or cmd.get("cmd") != "go":
        return
    await asyncio.sleep(max(0.0, (int(cmd["go_ns"]) - time.monotonic_ns()) / 1e9))
    cpu0 = time.process_time()
    conns, first_ns, last_ns = await _open_all(cfg, outcome, chan)
    chan.emit("ready", connected=len(conns), first_ns=first_ns, last_ns=last_ns, setup_us=outcome.setup_us,
              refused=outcome.refused, failed=outcome.failed, first_error=outcome.first_error,
              client_cpu_s=time.process_time() - cpu0)
    pinger: asyncio.Task[None] | None = None
    while (cmd := await chan.command()) is not None:
        if cmd.get("cmd") == "hold":
            outcome.pongs = 0  # the hold window's pongs only (the connections have pinged since their hello)
            if not cfg.get("ping_s"):
                pinger = asyncio.get_running_loop().create_task(_ping(conns, float(cmd["ping_s"])))
        elif cmd.get("cmd") == "status":
            chan.emit("status", open=sum(1 for c in conns if not c.closed.done()),
                      closed_by_server=outcome.closed_by_server, pongs=outcome.pongs)
        elif cmd.get("cmd") == "stop":
            break
    if pinger is not None:
        pinger.cancel()
    for c in conns:
        c.stopping = True
        if c.transport is not None:
            c.transport.abort()


# ---- parent -------------------------------------------------------------------------------------------
def _say(text: str) -> None:
    sys.stderr.write(f"bench connect: {text}\n")
    sys.stderr.flush()


def percentile_ms(sorted_us: list[int], q: float) -> float | None:
    """Nearest-rank percentile of sorted µs values, in ms."""
    if not sorted_us:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_us)))
    return round(sorted_us[rank - 1] / 1000, 1)


def _merge(tables: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in tables:
        for k, v in t.items():
            out[k] = out.get(k, 0) + v
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import logging

    loggers = [logging.getLogger(name) for name in ("storm", "httpx", "hazelcast")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:  # this process only sets up and cleans up: its INFO lines are noise
        lg.setLevel(logging.WARNING)
    try:
        if args.services == "real":
            return await _run_real(args)
        return await _run_embedded(args)
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


async def _run_embedded(args: argparse.Namespace) -> dict[str, Any]:
    from storm_tools.bench.fanout import DEMO_USERS, log_dir, storm_env, storm_tokens
    from storm_tools.seed import DEMO_CHANNELS, channel_id

    port = free_port(HOST)
    with tempfile.TemporaryDirectory(prefix="storm-bench-connect-") as tmpdir:
        tmp = Path(tmpdir)
        env = storm_env(tmp, messages=0)
        env["STORM_AUTH_TIMEOUT_S"] = str(max(60.0, args.connect_timeout))
        tokens = storm_tokens(env)
        channels = [channel_id("demo", name) for name in DEMO_CHANNELS[:args.subscribe]]
        argv = python_module("storm_cli", "dev", "--host", HOST, "--port", str(port))
        server = ServerProcess("storm", argv, env=env, log_path=log_dir(args, tmp) / "storm-connect.log")
        with server:
            await server.wait_ready(HOST, port, http_path="/healthz", timeout=args.start_timeout)
            _say(f"storm dev ready (pid {server.pid}); {len(DEMO_USERS)} demo users' tokens, cycled")
            result = await _measure(args, ports=[port], tokens=tokens, channels=channels,
                                    roles={"gateways": [server.pid]})
            errors = server.log_errors()
        if errors:
            result["server_log_errors"] = len(errors)
            result["server_log_first_error"] = errors[0][:300]
    result["server"] = "storm dev (one process: gateway, memory broker and cache, SQLite)"
    return result


async def _run_real(args: argparse.Namespace) -> dict[str, Any]:
    from storm_tools.bench.jwks import BenchIssuer
    from storm_tools.verify import _service_env

    env = _service_env()
    env.update({
        "STORM_BROKER": "pulsar", "STORM_CACHE": "hazelcast", "STORM_SEED_DEMO": "false", "PYTHONUNBUFFERED": "1",
        "STORM_MAX_CONNECTIONS_PER_IP": str(max(200_000, args.connections)),  # thousands per source address
        "STORM_AUTH_TIMEOUT_S": str(max(60.0, args.connect_timeout)),
    })
    if args.identity == "dev":
        return await _on_topology(args, env, None)
    with BenchIssuer() as issuer:
        env.update(issuer.env())
        result = await _on_topology(args, env, issuer)
        result["jwks_fetches"] = issuer.fetches
    return result


async def _on_topology(args: argparse.Namespace, env: dict[str, str], issuer: Any) -> dict[str, Any]:
    from storm_tools.bench.e2e import real_topology, service_roles

    async with real_topology(env, connections=args.connections, members=0, shared=args.subscribe,
                             gateways=args.gateways, consumers=False, log_dir=args.log_dir,
                             start_timeout=args.start_timeout, prefix="connect") as topo:
        t = time.monotonic()
        if issuer is None:
            tokens = await asyncio.to_thread(topo.tokens)
        else:
            slug, subjects = topo.ws.slug, topo.ws.subjects
            tokens = await asyncio.to_thread(
                lambda: [issuer.token(s, slug, f"User {i}") for i, s in enumerate(subjects)])
        _say(f"{len(tokens)} {args.identity} tokens issued ({time.monotonic() - t:.1f} s)")
        roles = {"gateways": [p.pid for p in topo.gateways],
                 **service_roles()}
        result = await _measure(args, ports=[p.port for p in topo.gateways], tokens=tokens,
                                channels=topo.ws.shared, roles=roles)
        errors = sum(1 for p in topo.procs for line in p.log_tail(100000).splitlines()
                     if " ERROR " in line or line.startswith("Traceback"))
        if errors:
            result["server_log_errors"] = errors
    result.update(topo.outcome)
    result["server"] = f"{args.gateways} gateway process(es) on Pulsar + Hazelcast + PostgreSQL"
    return result


async def _measure(args: argparse.Namespace, *, ports: list[int], tokens: list[str], channels: list[str],
                   roles: dict[str, list[int]]) -> dict[str, Any]:
    from storm_tools.bench.e2e import CpuMeter

    n = args.connections
    procs = client_procs(args)
    clients: list[ClientProcess] = []
    progress = Progress()
    status: dict[str, dict[str, Any]] = {}

    def on_progress(client: ClientProcess, event: dict[str, Any]) -> None:
        status[client.name] = event
        done = sum(s.get("connected", 0) for s in status.values())
        bad = sum(s.get("failed", 0) for s in status.values())
        progress.update(f"connected {done}/{n}" + (f" ({bad} failed)" if bad else ""), force=False)

    try:
        start = 0
        for i, size in enumerate(split(n, procs)):
            # per-connection tokens (real) are handed out by position; the demo's few are cycled
            own = tokens[start:start + size] if len(tokens) >= n else tokens
            cfg = {"ports": ports[start % len(ports):] + ports[:start % len(ports)], "tokens": own,
                   "channels": channels, "connections": size, "source": source_address(i),
                   "connect_timeout": args.connect_timeout, "concurrency": args.concurrency,
                   "ping_s": args.ping_s if args.hold > 0 else 0.0}
            start += size
            client = ClientProcess(f"connect-{i}", "storm_tools.bench.connect", cfg)
            clients.append(client)
            await client.start()
        await asyncio.gather(*(c.wait_for("armed", 120) for c in clients))
        meter = CpuMeter(roles)
        go_ns = time.monotonic_ns() + 300_000_000
        for c in clients:
            c.send({"cmd": "go", "go_ns": go_ns})
        await asyncio.sleep(max(0.0, (go_ns - time.monotonic_ns()) / 1e9))
        meter.start()  # the clients start now: the first handshake
        ready = await asyncio.gather(*(c.wait_for("ready", args.start_timeout + n / 10 + args.connect_timeout,
                                                  on_progress) for c in clients))
        cpu = meter.stop()  # just after the last handshake (the last client's report)
        connected = sum(r["connected"] for r in ready)
        progress.done(f"connected {connected}/{n}")
        hold: dict[str, Any] = {}
        if args.hold > 0 and connected:
            for c in clients:
                c.send({"cmd": "hold", "ping_s": args.ping_s})
            _say(f"holding {connected} connections for {args.hold:g} s (a ping every {args.ping_s:g} s each)")
            meter = CpuMeter(roles)
            meter.start()
            await asyncio.sleep(args.hold)
            held = meter.stop()
            for c in clients:
                c.send({"cmd": "status"})
            statuses = await asyncio.gather(*(c.wait_for("status", 60) for c in clients))
            pongs = sum(s["pongs"] for s in statuses)
            server_s = sum(held["cpu_s"].values())  # every role is a server process (gateways, services)
            hold = {
                "hold_s": args.hold,
                "still_open": sum(s["open"] for s in statuses),
                "closed_by_server": _merge([s["closed_by_server"] for s in statuses]),
                "pongs": pongs,
                "hold_cores": {role: round(v / held["window_s"], 3) for role, v in held["cpu_s"].items()}
                if held["window_s"] else {},
                # holding cost, all roles: the cores of the window, and per ping answered (the presence
                # keeper's passes included, since they run in the same window)
                "hold_server_cores": round(server_s / held["window_s"], 3) if held["window_s"] else None,
                "server_cpu_us_per_ping": round(server_s * 1e6 / pongs, 1) if pongs else None,
                "cpu_us_per_ping": {role: round(v * 1e6 / pongs, 1) for role, v in held["cpu_s"].items()}
                if pongs else {},
            }
        for c in clients:
            c.send({"cmd": "stop"})
    finally:
        progress.done()
        for c in clients:
            await c.stop()
    return summarize(args, ready, cpu, hold, len(clients))


def summarize(args: argparse.Namespace, ready: list[dict[str, Any]], cpu: dict[str, Any], hold: dict[str, Any],
              procs: int) -> dict[str, Any]:
    connected = sum(r["connected"] for r in ready)
    setup = sorted(us for r in ready for us in r["setup_us"])
    firsts = [r["first_ns"] for r in ready if r["first_ns"]]
    lasts = [r["last_ns"] for r in ready if r["last_ns"]]
    span_s = (max(lasts) - min(firsts)) / 1e9 if firsts and lasts else 0.0
    gateways_s = cpu["cpu_s"].get("gateways", 0.0)
    out: dict[str, Any] = {
        "connections": args.connections,
        "connected": connected,
        "connects_per_s": round(connected / span_s, 1) if span_s > 0 else None,
        "server_cpu_us_per_connect": round(gateways_s * 1e6 / connected, 1) if connected else None,
        "setup_p50_ms": percentile_ms(setup, 50),
        "setup_p99_ms": percentile_ms(setup, 99),
        "setup_max_ms": round(setup[-1] / 1000, 1) if setup else None,
        "refused": _merge([r["refused"] for r in ready]),
        "failed_by_reason": _merge([r["failed"] for r in ready]),
        "subscribe": args.subscribe,
        "services": args.services,
        "gateways": args.gateways if args.services == "real" else 1,
        "client_procs": procs,
        "concurrency_per_proc": args.concurrency,
        "handshake_span_s": round(span_s, 3),
        "cpu_window_s": cpu["window_s"],
        "cpu_s": cpu["cpu_s"],
        "cpu_us_per_connect": {role: round(v * 1e6 / connected, 1) for role, v in cpu["cpu_s"].items()}
        if connected else {},
        "client_cpu_us_per_connect": round(sum(r["client_cpu_s"] for r in ready) * 1e6 / connected, 1)
        if connected else None,
        "machine_busy": cpu["machine_busy"],
        "cores": cpu["cores"],
        "identity": IDENTITIES[args.identity],
    }
    first_error = next((r["first_error"] for r in ready if r["first_error"]), "")
    if first_error:
        out["first_error"] = first_error
    out.update(hold)
    return out


def main() -> None:
    if sys.argv[1:] != ["--child"]:
        sys.exit("usage: python -m storm_tools.bench.connect --child   (run `storm bench connect` instead)")
    import uvloop

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(child_main())


if __name__ == "__main__":
    main()
