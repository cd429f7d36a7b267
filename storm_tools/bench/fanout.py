"""`storm bench fanout`: CPU per delivery and latency of one channel broadcast, STORM vs the floor.

For each server (the STORM gateway as a ``storm dev`` child, then the floor of :mod:`storm_tools.bench.floor`):
start it, start client children holding N subscribers of the bench channel (and, in the first child, one
publisher connection), publish M messages at a steady rate, count every delivered event and time it.

* Each publish carries ``bench:<seq>:<time.monotonic_ns()>`` as its text.  CLOCK_MONOTONIC is system-wide
  on Linux, so receive time minus that stamp is the end-to-end latency across processes.
* Deliveries are counted per event, not per frame: STORM may coalesce several events into one frame.
* Latency is sampled: every delivery on every ``--sample-every``-th connection (default 10).
* Server CPU (user + system, psutil) is read by the publisher child just before the first publish and by
  every client child when it has received all its deliveries (or timed out); the latest reading ends the
  interval.  CPU per delivery = that CPU time / deliveries.

The client side of this module runs as ``python -m storm_tools.bench.fanout --child`` (see procs.ClientProcess).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from storm_tools.bench.procs import (
    ClientProcess,
    Progress,
    ServerProcess,
    child_channel,
    cpu_seconds,
    cpu_ticks_seconds,
    free_port,
    open_all,
    python_module,
    raise_nofile,
    source_address,
)
from storm_tools.bench.wsclient import SubscribingClient, WSClient, connect

MARK = b'"text":"bench:'
WARM = b'"text":"warmup:'
_STAMP = re.compile(rb'"text":"bench:(\d+):(\d+)"')
HOST = "127.0.0.1"
PER_PROCESS_MAX = 9000
DEMO_USERS = ("alice", "bob", "carol", "dave")


# ---- client child -------------------------------------------------------------------------------------
class Stats:
    __slots__ = ("closed", "deliveries", "done", "errors", "expected", "first_error", "frames", "last_ns",
                 "latencies", "misordered", "stopping", "warm")

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.deliveries = 0
        self.frames = 0
        self.errors = 0
        self.first_error = ""
        self.closed = 0
        self.last_ns = 0
        self.misordered = 0
        self.latencies: list[int] = []  # microseconds
        self.done = asyncio.Event()
        self.stopping = False
        self.warm = 0  # warm-up deliveries (not counted)

    def error(self, payload: bytes) -> None:
        self.errors += payload.count(b'"type":"error"')
        if not self.first_error:
            self.first_error = payload[:300].decode(errors="replace")


class Subscriber(SubscribingClient):
    """auth -> hello -> subscribe -> subscribed -> count deliveries."""

    def __init__(self, host: str, port: int, auth: bytes, subscribe: bytes, stats: Stats,
                 sample: bool) -> None:
        super().__init__(host, port, auth, stats)
        self.sample = sample
        self.count = 0
        self.last_seq = -1
        self._subscribe = subscribe

    def subscribe_frame(self) -> bytes:
        return self._subscribe

    def on_live(self, payload: bytes) -> None:
        st = self.stats
        n = payload.count(MARK)
        if n:
            st.frames += 1
            now = time.monotonic_ns()
            st.deliveries += n
            st.last_ns = now
            self.count += n
            if self.sample:
                lat = st.latencies
                for m in _STAMP.finditer(payload):
                    seq = int(m[1])
                    if seq <= self.last_seq:
                        st.misordered += 1
                    self.last_seq = seq
                    lat.append((now - int(m[2])) // 1000)
            if st.deliveries >= st.expected:
                st.done.set()
        elif WARM in payload:
            st.warm += payload.count(WARM)
        if b'"type":"error"' in payload:
            st.error(payload)


class Publisher(WSClient):
    def __init__(self, host: str, port: int, auth: bytes, stats: Stats) -> None:
        super().__init__(host, port)
        self.stats = stats
        self.acks = 0
        self._auth = auth
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_open(self) -> None:
        self.send_text(self._auth)

    def on_message(self, payload: bytes, binary: bool) -> None:
        self.acks += payload.count(b'"type":"ack"')
        if b'"type":"error"' in payload:
            self.stats.error(payload)
        if not self.ready.done() and b'"type":"hello"' in payload:
            self.ready.set_result(None)

    def on_close(self, code: int | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"publisher closed during setup (code {code})"))


async def _warm_up(pub: Publisher, cfg: dict[str, Any], stats: Stats, subscribers: int) -> int:
    """Publish ``cfg["warmup"]`` uncounted messages (first-use costs: lazy imports, SQL compilation, log
    creation) and wait until this child's subscribers have them, then a little for the other children."""
    channel, run = cfg["channel"].encode(), cfg["run_id"].encode()
    count = cfg["warmup"]
    for seq in range(count):
        pub.send_text(b'{"op":"publish","id":%d,"channel":"%s","cmid":"%s-w%d","text":"warmup:%d"}'
                      % (1_000_000 + seq, channel, run, seq, seq))
        await asyncio.sleep(1 / cfg["rate"])
    deadline = time.monotonic() + 30
    while stats.warm < subscribers * count and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)
    pub.acks = 0
    return stats.warm


async def _publish(pub: Publisher, cfg: dict[str, Any], info: dict[str, Any]) -> None:
    """M publishes at a steady rate; each is stamped just before it is written.  ``info`` gets the server's
    CPU reading and the times of the first and last publish."""
    channel = cfg["channel"].encode()
    run = cfg["run_id"].encode()
    messages, interval = cfg["messages"], 1e9 / cfg["rate"]
    info["cpu_start_ticks"] = cpu_ticks_seconds(cfg["server_pid"])
    info["cpu_start"] = cpu_seconds(cfg["server_pid"])
    t0 = info["first_pub_ns"] = time.monotonic_ns()
    for seq in range(messages):
        target = t0 + int(seq * interval)
        wait = target - time.monotonic_ns()
        if wait > 0:
            await asyncio.sleep(wait / 1e9)
        pub.send_text(b'{"op":"publish","id":%d,"channel":"%s","cmid":"%s-%d","text":"bench:%d:%d"}'
                      % (seq + 1, channel, run, seq, seq, time.monotonic_ns()))
        info["published"] = seq + 1
    info["last_pub_ns"] = time.monotonic_ns()


async def _open_all(cfg: dict[str, Any], stats: Stats, chan: Any) -> tuple[list[Subscriber], list[str]]:
    host, port = cfg["host"], cfg["port"]
    sources = cfg["sources"]
    tokens = cfg["tokens"]
    subscribe = b'{"op":"subscribe","id":1,"channel":"%s"}' % cfg["channel"].encode()

    async def open_one(i: int) -> Subscriber:
        g = cfg["first_index"] + i
        auth = b'{"op":"auth","token":"%s"}' % tokens[g % len(tokens)].encode()
        sample = g % cfg["sample_every"] == 0
        return await connect(lambda: Subscriber(host, port, auth, subscribe, stats, sample), host, port,
                             source=sources[i % len(sources)], timeout=cfg["connect_timeout"])

    return await open_all(cfg["subscribers"], open_one, concurrency=cfg["connect_concurrency"],
                          timeout=cfg["connect_timeout"], chan=chan)


async def child_main() -> None:
    chan, cfg = await child_channel()
    raise_nofile()
    stats = Stats(cfg["subscribers"] * cfg["messages"])
    conns, failures = await _open_all(cfg, stats, chan)
    pub: Publisher | None = None
    if cfg["publisher"]:
        auth = b'{"op":"auth","token":"%s"}' % cfg["tokens"][0].encode()
        host, port = cfg["host"], cfg["port"]
        try:
            proto = await connect(lambda: Publisher(host, port, auth, stats), host, port,
                                  source=cfg["sources"][0], timeout=cfg["connect_timeout"])
            assert isinstance(proto, Publisher)
            pub = proto
            await asyncio.wait_for(pub.ready, cfg["connect_timeout"])
        except Exception as exc:
            chan.emit("error", message=f"publisher could not connect: {exc!r}")
            return
    chan.emit("ready", connected=len(conns), failed=len(failures), failure=failures[0] if failures else "")
    cmd = await chan.command()
    if cmd is not None and cmd.get("cmd") == "warmup":
        warmed = await _warm_up(pub, cfg, stats, len(conns)) if pub is not None else 0
        chan.emit("warmed", deliveries=warmed)
        cmd = await chan.command()
    if cmd is None or cmd.get("cmd") != "go":
        return
    stats.expected = len(conns) * cfg["messages"]  # what this child can receive; the parent counts misses
    if stats.expected == 0:
        stats.done.set()
    loop = asyncio.get_running_loop()
    info: dict[str, Any] = {}
    pub_task = loop.create_task(_publish(pub, cfg, info)) if pub is not None else None
    deadline = time.monotonic() + cfg["messages"] / cfg["rate"] + cfg["timeout"]

    async def report() -> None:
        while True:
            await asyncio.sleep(0.5)
            chan.emit("progress", deliveries=stats.deliveries)

    reporter = loop.create_task(report())
    client_cpu0 = time.process_time()
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stats.done.wait(), max(0.0, deadline - time.monotonic()))
        cpu_end = cpu_seconds(cfg["server_pid"])
        cpu_end_ticks = cpu_ticks_seconds(cfg["server_pid"])
        delivered, frames = stats.deliveries, stats.frames  # what counts: in the measured interval
        client_cpu = time.process_time() - client_cpu0
        end_ns = stats.last_ns if stats.done.is_set() else time.monotonic_ns()
        if pub_task is not None:
            try:
                await asyncio.wait_for(pub_task, 5.0)
            except Exception as exc:  # reported; the counts say what it cost
                stats.first_error = stats.first_error or f"publisher: {exc!r}"
            assert pub is not None
            ack_deadline = time.monotonic() + 2.0  # acks may trail the last delivery
            while pub.acks < info.get("published", 0) and time.monotonic() < ack_deadline:
                await asyncio.sleep(0.01)
    finally:
        reporter.cancel()
    stats.stopping = True
    per_conn = [c.count for c in conns]
    expected_each = cfg["messages"]
    chan.emit(
        "result", deliveries=delivered, frames=frames, late=stats.deliveries - delivered, errors=stats.errors,
        first_error=stats.first_error, closed=stats.closed, misordered=stats.misordered,
        connected=len(conns), short_connections=sum(1 for n in per_conn if n < expected_each),
        excess_connections=sum(1 for n in per_conn if n > expected_each),
        acks=pub.acks if pub is not None else 0, cpu_end=cpu_end, cpu_end_ticks=cpu_end_ticks, end_ns=end_ns,
        last_ns=stats.last_ns, client_cpu_s=client_cpu,
        latencies_us=stats.latencies, **info,
    )
    for c in conns:
        c.close()
    if pub is not None:
        pub.close()
    await asyncio.sleep(0.2)


# ---- parent -------------------------------------------------------------------------------------------
def storm_env(tmp: Path, *, messages: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "STORM_DATABASE_URL": f"sqlite+aiosqlite:///{tmp / 'bench.db'}",
        "STORM_PUBLISH_RATE": "100000",
        "STORM_PUBLISH_BURST": "100000",
        "STORM_USER_PUBLISH_RATE": "100000",  # the publisher is one user; the user and workspace limits
        "STORM_USER_PUBLISH_BURST": "100000",  # would throttle it just like the per-connection one
        "STORM_WORKSPACE_PUBLISH_RATE": "100000",
        "STORM_MAX_CONNECTIONS_PER_IP": "100000",  # a client child holds up to 9 000 sockets from one address
        "STORM_OUTBOX_MAX_EVENTS": str(max(10000, 4 * messages)),
        "STORM_OUTBOX_MAX_BYTES": str(64 * 1024 * 1024),
        "STORM_IDLE_TIMEOUT_S": "600",
        "STORM_HEARTBEAT_S": "300",
        "STORM_AUTH_TIMEOUT_S": "60",
        "STORM_PRESENCE_TTL_S": "900",  # real clients ping every heartbeat and keep their presence alive
    })
    return env


def storm_tokens(env: dict[str, str]) -> list[str]:
    from storm.adapters.dev_identity import DevIdentity
    from storm.config import Config

    issuer = DevIdentity(Config.from_env(env).dev_secret)
    return [issuer.issue(f"dev|{u}", "demo", u.title()) for u in DEMO_USERS]


def bench_channel() -> str:
    from storm_tools.seed import channel_id

    return channel_id("demo", "bench")


def log_dir(args: Any, tmp: Path) -> Path:
    if not getattr(args, "log_dir", None):
        return tmp
    path = Path(args.log_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def percentile(sorted_values: list[int], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return float(sorted_values[k])


async def run_server(kind: str, args: Any, tmp: Path, progress: Progress) -> dict[str, Any]:
    """One complete run against one server (``storm`` or ``floor``)."""
    port = free_port(HOST)
    if kind == "storm":
        env = storm_env(tmp, messages=args.messages)
        tokens = storm_tokens(env)
        for name in ("DD_AGENT_HOST", "DD_DOGSTATSD_URL", "DD_DOGSTATSD_PORT"):  # --metrics decides, not the shell
            env.pop(name, None)
        argv = python_module("storm_cli", "dev", "--host", HOST, "--port", str(port))
        http_path: str | None = "/healthz"
    else:
        env, tokens = dict(os.environ), ["floor-token"]
        argv = python_module("storm_tools.bench.floor", "--host", HOST, "--port", str(port))
        http_path = None
    sink = None  # --metrics: DogStatsD on, sent to a receiver in this process (docs/observability.md)
    if kind == "storm" and getattr(args, "metrics", False):
        from storm_tools.statsd import Collector, listen

        collector = Collector()
        sink, sink_port = await listen(collector, HOST, 0)
        env.update({"DD_AGENT_HOST": HOST, "DD_DOGSTATSD_PORT": str(sink_port)})
    n, m = args.subscribers, args.messages
    procs = args.client_procs or max(1, math.ceil(n / PER_PROCESS_MAX))
    server = ServerProcess(kind, argv, env=env, log_path=log_dir(args, tmp) / f"{kind}.log")
    clients: list[ClientProcess] = []
    status: dict[str, dict[str, Any]] = {}

    def on_progress(client: ClientProcess, event: dict[str, Any]) -> None:
        status[client.name] = event
        if "deliveries" in event:
            done = sum(s.get("deliveries", 0) for s in status.values())
            progress.update(f"[{kind}] deliveries {done}/{n * m}", force=False)
        else:
            done = sum(s.get("connected", 0) for s in status.values())
            failed = sum(s.get("failed", 0) for s in status.values())
            progress.update(f"[{kind}] connected {done}/{n}" + (f" ({failed} failed)" if failed else ""),
                            force=False)

    try:
        progress.update(f"[{kind}] starting server")
        server.start()
        await server.wait_ready(HOST, port, http_path=http_path, timeout=args.start_timeout)
        first = 0
        for i, size in enumerate(split(n, procs)):
            cfg = {
                "host": HOST, "port": port, "tokens": tokens, "channel": bench_channel(), "subscribers": size,
                "first_index": first, "sources": [source_address(i)], "sample_every": args.sample_every,
                "publisher": i == 0, "messages": m, "rate": args.rate, "timeout": args.timeout,
                "server_pid": server.pid, "run_id": uuid.uuid4().hex[:12], "connect_timeout": 30.0,
                "connect_concurrency": 100, "warmup": args.warmup,
            }
            first += size
            client = ClientProcess(f"{kind}-{i}", "storm_tools.bench.fanout", cfg)
            clients.append(client)
            await client.start()
        ready = await asyncio.gather(*(c.wait_for("ready", 60 + n / 50, on_progress) for c in clients))
        connected = sum(r["connected"] for r in ready)
        failure = next((r["failure"] for r in ready if r["failure"]), "")
        if args.warmup:
            progress.update(f"[{kind}] {connected}/{n} subscribed; warming up")
            clients[0].send({"cmd": "warmup"})
            await clients[0].wait_for("warmed", 60, on_progress)
        progress.update(f"[{kind}] {connected}/{n} subscribed; publishing {m} at {args.rate}/s")
        status.clear()
        for c in clients:
            c.send({"cmd": "go"})
        budget = m / args.rate + args.timeout + 30
        results = await asyncio.gather(*(c.wait_for("result", budget, on_progress) for c in clients))
    finally:
        for c in clients:
            await c.stop()
        server.stop()
        if sink is not None:
            await asyncio.sleep(0.3)  # read the server's last flush, sent as it stopped
            sink.close()
    errors = server.log_errors()
    pub = results[0]
    lat = sorted(x for r in results for x in r["latencies_us"])
    deliveries = sum(r["deliveries"] for r in results)
    cpu = max(r["cpu_end"] for r in results) - pub["cpu_start"]
    last_ns = max(r["end_ns"] for r in results)
    out = {
        "deliveries": deliveries,
        "expected": n * m,
        "connected": connected,
        "connect_failures": n - connected,
        "connect_failure": failure,
        "wall_s": (last_ns - pub["first_pub_ns"]) / 1e9,
        "publish_s": (pub.get("last_pub_ns", last_ns) - pub["first_pub_ns"]) / 1e9,
        "published": pub.get("published", 0),
        "server_cpu_s": cpu,
        "server_cpu_s_ticks": max(r["cpu_end_ticks"] for r in results) - pub["cpu_start_ticks"],
        "cpu_us_per_delivery": cpu * 1e6 / deliveries if deliveries else float("nan"),
        "p50_ms": percentile(lat, 50) / 1000,
        "p99_ms": percentile(lat, 99) / 1000,
        "max_ms": (lat[-1] / 1000) if lat else float("nan"),
        "latency_samples": len(lat),
        "frames": sum(r["frames"] for r in results),
        "acks": pub["acks"],
        "errors": sum(r["errors"] for r in results),
        "first_error": next((r["first_error"] for r in results if r["first_error"]), ""),
        "closed": sum(r["closed"] for r in results),
        "misordered": sum(r["misordered"] for r in results),
        "short_connections": sum(r["short_connections"] for r in results),
        "excess_connections": sum(r["excess_connections"] for r in results),
        "late": sum(r["late"] for r in results),
        "server_log_errors": len(errors),
        "client_procs": procs,
        "client_cpu_s": sum(r["client_cpu_s"] for r in results),
    }
    if kind == "storm":  # the coalescing rule the figures were taken with (docs/benchmarks.md, ADR 0006)
        from storm.config import Config

        conf = Config.from_env(env)
        out["write_delay"] = {"write_delay_s": conf.write_delay_s, "write_delay_max_s": conf.write_delay_max_s}
    if sink is not None:  # what the metrics receiver heard: proof that DogStatsD really was on
        out["metrics"] = {"packets": collector.packets, "fanout_deliveries": collector.total("storm.fanout.deliveries"),
                          "names": len(collector.names())}
    if errors:
        progress.done()
        print(f"[{kind}] server log errors ({len(errors)}), first ones:", file=sys.stderr)
        for line in errors[:5]:
            print("   ", line[:300], file=sys.stderr)
    return out


async def run(args: Any) -> dict[str, Any]:
    import tempfile

    progress = Progress()
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="storm-bench-") as tmpdir:
        for kind in ("storm", "floor") if args.server == "both" else (args.server,):
            runs[kind] = await run_server(kind, args, Path(tmpdir), progress)
            r = runs[kind]
            progress.update(f"[{kind}] {r['deliveries']}/{r['expected']} deliveries, "
                            f"{r['cpu_us_per_delivery']:.2f} us/delivery, p99 {r['p99_ms']:.1f} ms")
            progress.done()
    return summarize(args, runs)


def _r(x: float | None, nd: int) -> float | None:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return None
    return round(x, nd)


def summarize(args: Any, runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    storm, floor = runs.get("storm"), runs.get("floor")
    main = storm or floor
    assert main is not None
    s_cpu = storm["cpu_us_per_delivery"] if storm else None
    f_cpu = floor["cpu_us_per_delivery"] if floor else None
    out: dict[str, Any] = {
        "deliveries": main["deliveries"],
        "wall_s": _r(main["wall_s"], 3),
        "server_cpu_us_per_delivery": _r(s_cpu, 2),
        "floor_us_per_delivery": _r(f_cpu, 2),
        "ratio_to_floor": _r(s_cpu / f_cpu, 2) if s_cpu and f_cpu else None,
        "p50_ms": _r(main["p50_ms"], 2),
        "p99_ms": _r(main["p99_ms"], 2),
        "subscribers": args.subscribers,
        "messages": args.messages,
        "rate": args.rate,
        "warmup": args.warmup,
        "frames": main["frames"],
        "max_ms": _r(main["max_ms"], 2),
        "server_cpu_s": _r(main["server_cpu_s"], 3),
        "server_cpu_s_ticks": _r(main["server_cpu_s_ticks"], 2),
        "server_busy": _r(main["server_cpu_s"] / main["wall_s"], 2) if main["wall_s"] > 0 else None,
        "events_per_frame": _r(main["deliveries"] / main["frames"], 2) if main["frames"] else None,
        "client_cpu_s": _r(main["client_cpu_s"], 3),
    }
    if storm is not None and "write_delay" in storm:
        out["write_delay"] = storm["write_delay"]
    if storm is not None and "metrics" in storm:
        out["metrics"] = storm["metrics"]
    if floor is not None:
        out.update({"floor_deliveries": floor["deliveries"], "floor_wall_s": _r(floor["wall_s"], 3),
                    "floor_p50_ms": _r(floor["p50_ms"], 2), "floor_p99_ms": _r(floor["p99_ms"], 2),
                    "floor_frames": floor["frames"], "floor_cpu_s": _r(floor["server_cpu_s"], 3),
                    "floor_client_cpu_s": _r(floor["client_cpu_s"], 3),
                    "floor_busy": _r(floor["server_cpu_s"] / floor["wall_s"], 2) if floor["wall_s"] > 0 else None})
    for kind, r in runs.items():
        prefix = "" if kind == "storm" else "floor_"
        for key in ("connect_failures", "errors", "closed", "misordered", "short_connections",
                    "excess_connections", "late", "server_log_errors"):
            if r[key]:
                out[prefix + key] = r[key]
        if r["first_error"]:
            out[prefix + "first_error"] = r["first_error"]
        if r["connect_failure"]:
            out[prefix + "connect_failure"] = r["connect_failure"]
        if r["acks"] != args.messages:
            out[prefix + "acks"] = r["acks"]
        missing = r["expected"] - r["deliveries"]
        if missing:
            out[prefix + "missing"] = missing
    return out


def failed(result: dict[str, Any]) -> bool:
    return any(result.get(k) for k in ("missing", "floor_missing"))


def main() -> None:
    if sys.argv[1:] != ["--child"]:
        sys.exit("usage: python -m storm_tools.bench.fanout --child   (run `storm bench fanout` instead)")
    import uvloop

    uvloop.run(child_main())


if __name__ == "__main__":
    main()
