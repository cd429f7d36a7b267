"""`storm bench follow`: one gateway's broadcast subscription following many channels (issue 12, item 4).

    storm bench follow --channels 20000 [--publish-channels 1000] [--messages 20000] [--rate 2000]
                       [--concurrency 64] [--idle-s 10] [--broadcast readers|relay] [--json]

What it does (docs/benchmarks.md, "storm bench follow"; the design in docs/adr/0013-following-channels.md):

1. on the Pulsar of ``STORM_PULSAR_URL``/``STORM_PULSAR_ADMIN_URL``, creates a throwaway workspace
   ``bench-follow-<hex>`` (with ``--topics precreate`` also its ``--channels`` channel topics, unmeasured;
   by default following a channel creates its topic, and the follow figures include that);
2. starts a **follower child** (``python -m storm_tools.bench.follow``), the gateway's side alone: one
   :class:`~storm.adapters.pulsar_broker.PulsarBroker` and one broadcast subscription that ``add`` s every
   channel, ``--concurrency`` at a time, exactly as a gateway's hub does when its clients subscribe;
3. measures the child's RSS and CPU, and the Pulsar broker's heap and CPU (its ``/metrics``), before and
   after following, then over ``--idle-s`` seconds of following with no traffic;
4. publishes ``--messages`` records round robin over ``--publish-channels`` of the followed channels (each
   channel's publishes one after another, all channels at once, at most ``--rate`` per second) and checks
   in the child that every record arrived once and in offset order per channel;
5. deletes the workspace and prints one JSON object.

With ``--broadcast relay`` the follower reads one relay-fed topic per workspace (ADR 0013, "Amendment: the
relay") and a **relay child** (``--relay-child``: the consumers role's :class:`~consumers.relay.RelayWorker`
alone, on this workspace only) copies the channel logs there; the hot channels' topics are created before
it starts.  ``relay_cpu_us_per_msg`` is its CPU over the publish phase per record relayed,
``relay_idle_cpu_pct`` its CPU while idle; the delivery latency then includes the relay's hop.

``rss_per_channel_kb`` and ``broker_heap_per_channel_kb`` are (after − before) / channels; the broker's
heap is sampled after a ``System.gc()``-free pause, so it carries the JVM's garbage: read it as an order of
magnitude.  The broker may be shared with other work; its CPU figures then include that work.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import re
import sys
import time
import uuid
from typing import Any

REQUIRED_KEYS = ("channels", "followed", "follow_s", "rss_mb", "rss_per_channel_kb", "idle_cpu_pct",
                 "published", "delivered", "lost", "duplicates", "inversions", "cpu_us_per_delivery")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("follow", help="one gateway following N channels on Pulsar: memory, CPU, order")
    p.add_argument("--channels", type=int, default=20_000, help="channels the gateway follows (default 20000)")
    p.add_argument("--publish-channels", type=int, default=1000,
                   help="followed channels that get traffic (default 1000, at most --channels)")
    p.add_argument("--messages", type=int, default=20_000, help="records published in all (default 20000)")
    p.add_argument("--rate", type=float, default=2000.0, help="publishes per second at most (default 2000)")
    p.add_argument("--concurrency", type=int, default=16, help="channels being added at once (default 16)")
    p.add_argument("--idle-s", type=float, default=10.0, help="seconds of following without traffic (default 10)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for the last deliveries after the last publish (default 60)")
    p.add_argument("--topics", choices=("auto", "precreate"), default="auto",
                   help="auto (default): following a channel creates its topic (Pulsar's auto-creation), so "
                        "follow_s and the broker's figures include creating the topics; precreate: create them "
                        "through the admin API first (about 30 per second on this machine: 11 min for 20 000)")
    p.add_argument("--broadcast", choices=("readers", "relay"), default="readers",
                   help="readers (default): a reader per followed channel; relay: one reader per followed "
                        "workspace on its broadcast topic, filled by a relay worker the bench runs in a child of "
                        "its own (STORM_BROADCAST, ADR 0013 amendment); the relay's CPU per message is reported")
    p.add_argument("--plan", choices=("free", "pro", "enterprise"), default="pro",
                   help="the bench workspace's plan (default pro: Pulsar throttles each topic of it at 1 000 msg/s)")
    p.add_argument("--keep", action="store_true", help="keep the bench workspace and its topics")
    p.add_argument("--json", action="store_true", help="compact JSON on one line")


def validate(args: argparse.Namespace) -> None:
    if args.channels < 1 or args.publish_channels < 1 or args.messages < 0 or args.rate <= 0 \
            or args.concurrency < 1 or args.idle_s < 0 or args.timeout <= 0:
        raise SystemExit("storm bench follow: --channels, --publish-channels, --rate, --concurrency and "
                         "--timeout must be > 0, --messages and --idle-s >= 0")


def failed(result: dict[str, Any]) -> bool:
    return bool(result.get("error")) or result["followed"] != result["channels"] or result["lost"] != 0 \
        or result["duplicates"] != 0 or result["inversions"] != 0


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# -- the broker's own figures -------------------------------------------------------------------------------
_METRIC = re.compile(r'^(jvm_memory_bytes_used\{[^}]*area="heap"[^}]*\}|process_cpu_seconds_total\{[^}]*\}|'
                     r'jvm_memory_direct_bytes_used\{[^}]*\}) (\S+)$', re.M)


async def broker_metrics(admin_url: str) -> dict[str, float]:
    """The Pulsar broker's heap, direct memory and CPU seconds from its Prometheus endpoint ({} if absent)."""
    import httpx

    try:
        async with httpx.AsyncClient(timeout=10.0) as http:
            text = (await http.get(admin_url.rstrip("/") + "/metrics/")).text
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for name, value in _METRIC.findall(text):
        key = "heap" if name.startswith("jvm_memory_bytes_used") else \
            "direct" if name.startswith("jvm_memory_direct") else "cpu_s"
        out[key] = float(value)
    return out


# -- parent -----------------------------------------------------------------------------------------------
async def run(args: argparse.Namespace) -> dict[str, Any]:
    quieted = {name: logging.getLogger(name).level for name in ("storm", "httpx")}
    logging.getLogger("storm").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per admin call: 20 000 topics
    try:
        return await _run(args)
    finally:  # the caller's logging as it was (a test process goes on after the bench)
        for name, level in quieted.items():
            logging.getLogger(name).setLevel(level)


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    from storm.adapters.pulsar_broker import PulsarBroker
    from storm.bootstrap import pulsar_settings
    from storm.config import Config
    from storm.domain import PLANS
    from storm.ports.clock import SystemClock

    cfg = Config.from_env(broker="pulsar")
    broker = PulsarBroker(pulsar_settings(cfg), SystemClock())
    await broker.start()
    workspace = f"bench-follow-{uuid.uuid4().hex[:10]}"
    channels = [uuid.uuid4().hex for _ in range(args.channels)]
    hot = channels[:min(args.publish_channels, args.channels)]
    result: dict[str, Any] = {"channels": args.channels, "broker": "pulsar", "workspace": workspace}
    child: asyncio.subprocess.Process | None = None
    relay: asyncio.subprocess.Process | None = None
    try:
        _say(f"bench follow: {args.channels} channels on {cfg.pulsar_url}, workspace {workspace}")
        await broker.ensure_workspace(workspace, PLANS[args.plan])
        t0 = time.perf_counter()
        gate = asyncio.Semaphore(64)

        async def create(channel: str) -> None:
            async with gate:
                await broker.ensure_channel(workspace, channel)

        if args.topics == "precreate":
            await asyncio.gather(*(create(c) for c in channels))
        elif args.broadcast == "relay":  # following creates no topic here: the hot ones exist before the relay
            await asyncio.gather(*(create(c) for c in hot))  # starts, so it reads them from their first record
        result["topics"] = args.topics
        result["setup_topics_s"] = round(time.perf_counter() - t0, 1)
        if args.topics == "precreate":
            _say(f"bench follow: {args.channels} topics created in {result['setup_topics_s']} s")
        result["broadcast"] = args.broadcast
        if args.broadcast == "relay":
            relay = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "storm_tools.bench.follow", "--relay-child",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 26,
                env={**os.environ, "STORM_BROADCAST": "relay"})
            await _send(relay, {"pulsar_url": cfg.pulsar_url, "admin_url": cfg.pulsar_admin_url,
                                "workspace": workspace})
            await _expect(relay, "started")
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "storm_tools.bench.follow", "--child",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 26,
            env={**os.environ, "STORM_MAX_CHANNEL_READERS": str(args.channels), "STORM_BROADCAST": args.broadcast})
        assert child.stdin is not None and child.stdout is not None
        await _send(child, {"pulsar_url": cfg.pulsar_url, "admin_url": cfg.pulsar_admin_url,
                            "workspace": workspace, "channels": channels, "concurrency": args.concurrency})
        base = await _expect(child, "started")
        before = await broker_metrics(cfg.pulsar_admin_url)
        followed = await _expect(child, "followed")
        after = await broker_metrics(cfg.pulsar_admin_url)
        result.update({
            "followed": followed["followed"], "follow_failures": followed["failures"][:5],
            "follow_s": followed["follow_s"],
            "rss_mb": round(followed["rss"] / 2**20, 1),
            "rss_before_mb": round(base["rss"] / 2**20, 1),
            "rss_per_channel_kb": round((followed["rss"] - base["rss"]) / 1024 / max(1, args.channels), 2),
            "follow_cpu_s": round(followed["cpu_s"] - base["cpu_s"], 2),
        })
        if before and after:
            result["broker_heap_per_channel_kb"] = round((after["heap"] - before["heap"]) / 1024 / args.channels, 2)
            result["broker_heap_mb"] = round(after["heap"] / 2**20, 1)
            result["broker_follow_cpu_s"] = round(after["cpu_s"] - before["cpu_s"], 2)
        _say(f"bench follow: {followed['followed']} followed in {followed['follow_s']} s, "
             f"child RSS {result['rss_mb']} MB; idle for {args.idle_s:g} s")
        relay_idle = await _sample(relay) if relay is not None else {}
        await asyncio.sleep(args.idle_s)
        await _send(child, {"cmd": "sample"})
        idle = await _expect(child, "sample")
        idle_broker = await broker_metrics(cfg.pulsar_admin_url)
        result["idle_cpu_pct"] = round(100 * (idle["cpu_s"] - followed["cpu_s"]) / max(args.idle_s, 1e-9), 2) \
            if args.idle_s else 0.0
        if after and idle_broker:
            spent = idle_broker["cpu_s"] - after["cpu_s"]
            result["broker_idle_cpu_pct"] = round(100 * spent / max(args.idle_s, 1e-9), 1)
        result["rss_idle_mb"] = round(idle["rss"] / 2**20, 1)
        relay_busy = await _sample(relay) if relay is not None else {}
        if relay_idle and relay_busy:
            result["relay_idle_cpu_pct"] = round(
                100 * (relay_busy["cpu_s"] - relay_idle["cpu_s"]) / max(args.idle_s, 1e-9), 2) if args.idle_s else 0.0
        # A broker of its own for the producers, stopped before the cleanup: a producer still open when its
        # topic is force-deleted reconnects and (auto-creation) brings the topic back, and the namespace
        # then refuses to go (409).
        publisher = PulsarBroker(pulsar_settings(cfg), SystemClock())
        await publisher.start()
        try:
            published = await _publish(publisher, workspace, hot, args.messages, args.rate)
        finally:
            await publisher.stop()
        result["publish_s"] = published.pop("_s", [0.0])[0]
        result["published"] = sum(len(v) for v in published.values())
        await _send(child, {"cmd": "report", "expect": result["published"], "timeout": args.timeout})
        report = await _expect(child, "report")
        result.update(_score(published, report["offsets"]))
        result["rss_after_mb"] = round(report["rss"] / 2**20, 1)
        cpu = report["cpu_s"] - idle["cpu_s"]
        result["delivery_cpu_s"] = round(cpu, 3)
        result["cpu_us_per_delivery"] = round(cpu * 1e6 / max(1, result["delivered"]), 1)
        result["deliver_p99_ms"] = report["p99_ms"]
        result["deliver_p50_ms"] = report["p50_ms"]
        if relay is not None:
            relay_done = await _sample(relay)
            relayed = relay_done["stats"]["relayed"] - relay_busy["stats"]["relayed"]
            relay_cpu = relay_done["cpu_s"] - relay_busy["cpu_s"]
            batches = relay_done["stats"]["batches"] - relay_busy["stats"]["batches"]
            result.update({"relayed": relayed, "relay_handed_back": relay_done["stats"]["handed_back"],
                           "relay_receive_age_ms_mean": round(
                               (relay_done["stats"]["age_ms"] - relay_busy["stats"]["age_ms"]) / max(1, relayed), 1),
                           "relay_batches": batches, "relay_batch_mean": round(relayed / max(1, batches), 1),
                           "relay_send_ms_mean": round((relay_done["stats"]["send_ms"] - relay_busy["stats"]["send_ms"])
                                                       / max(1, batches), 1),
                           "relay_cpu_s": round(relay_cpu, 3),
                           "relay_cpu_us_per_msg": round(relay_cpu * 1e6 / max(1, relayed), 1),
                           "relay_rss_mb": round(relay_done["rss"] / 2**20, 1),
                           "dropped_by_gateway": report.get("dropped", 0)})
            await _send(relay, {"cmd": "stop"})
            await _expect(relay, "stopped")
        await _send(child, {"cmd": "stop"})
        await _expect(child, "stopped")
    except Exception as exc:
        result["error"] = repr(exc)
        for key in REQUIRED_KEYS:
            result.setdefault(key, 0)
    finally:
        for proc in (child, relay):
            if proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if not args.keep:
            t0 = time.perf_counter()
            try:
                await broker.delete_workspace(workspace)
            except Exception as exc:
                result.setdefault("cleanup_error", repr(exc))
            result["cleanup_s"] = round(time.perf_counter() - t0, 1)
        await broker.stop()
    return result


def _score(published: dict[str, list[int]], delivered: dict[str, list[int]]) -> dict[str, int]:
    """lost: published offsets never delivered; duplicates: deliveries beyond the first of an offset;
    inversions: deliveries whose offset is not above the channel's previous one (a duplicate is one too)."""
    lost = dups = inversions = total = 0
    for channel, offsets in published.items():
        got = delivered.get(channel, [])
        total += len(got)
        seen = set(got)
        lost += sum(1 for o in offsets if o not in seen)
        dups += len(got) - len(seen)
        inversions += sum(1 for a, b in itertools.pairwise(got) if b <= a)
    return {"delivered": total, "lost": lost, "duplicates": dups, "inversions": inversions}


async def _publish(broker: Any, workspace: str, channels: list[str], messages: int,
                   rate: float) -> dict[str, list[int]]:
    """Round robin over ``channels``, each channel's publishes in sequence, the total paced at ``rate``."""
    per: dict[str, int] = {c: 0 for c in channels}
    for i in range(messages):
        per[channels[i % len(channels)]] += 1
    out: dict[str, list[int]] = {c: [] for c in channels}
    loop = asyncio.get_running_loop()
    start = loop.time()
    issued = 0

    async def one(channel: str) -> None:
        nonlocal issued
        for _ in range(per[channel]):
            issued += 1
            due = start + issued / rate
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            payload = json.dumps({"t": time.time()}).encode()
            out[channel].append(await broker.publish(workspace, channel, payload))

    await asyncio.gather(*(one(c) for c in channels if per[c]))
    out["_s"] = [round(loop.time() - start, 2)]  # type: ignore[list-item]
    return out


async def _sample(child: asyncio.subprocess.Process) -> dict[str, Any]:
    await _send(child, {"cmd": "sample"})
    return await _expect(child, "sample")


async def _send(child: asyncio.subprocess.Process, msg: dict[str, Any]) -> None:
    assert child.stdin is not None
    child.stdin.write(json.dumps(msg).encode() + b"\n")
    await child.stdin.drain()


async def _expect(child: asyncio.subprocess.Process, event: str) -> dict[str, Any]:
    assert child.stdout is not None
    while True:
        line = await child.stdout.readline()
        if not line:
            raise RuntimeError(f"the follower child exited before {event!r} (its stderr says why)")
        msg: dict[str, Any] = json.loads(line)
        if msg.get("event") == "progress":
            _say(f"bench follow: {msg['followed']} followed")
            continue
        if msg.get("event") == event:
            return msg
        raise RuntimeError(f"follower child: expected {event!r}, got {msg}")


# -- child: the gateway's side ------------------------------------------------------------------------------
async def _child() -> None:
    from storm.adapters.pulsar_relay import pulsar_broker
    from storm.bootstrap import pulsar_settings
    from storm.config import Config
    from storm.ports.broker import Record
    from storm.ports.clock import SystemClock
    from storm_tools.bench.procs import ChildChannel, child_channel, cpu_seconds, rss_bytes

    chan, conf = await child_channel()
    pid = os.getpid()
    offsets: dict[str, list[int]] = {}
    latencies: list[float] = []

    def on_record(record: Record) -> None:
        offsets.setdefault(record.channel, []).append(record.offset)
        if len(latencies) < 200_000:
            latencies.append(time.time() - json.loads(record.payload)["t"])

    cfg = Config.from_env(broker="pulsar", pulsar_url=conf["pulsar_url"], pulsar_admin_url=conf["admin_url"])
    broker = pulsar_broker(pulsar_settings(cfg), SystemClock())
    await broker.start()
    try:
        sub = await broker.subscribe_broadcast(on_record)
        ChildChannel.emit("started", rss=rss_bytes(pid), cpu_s=cpu_seconds(pid))
        workspace, channels = conf["workspace"], conf["channels"]
        gate = asyncio.Semaphore(conf["concurrency"])
        failures: list[str] = []
        done = 0

        async def add(channel: str) -> None:
            nonlocal done
            async with gate:
                for attempt in range(3):  # a gateway's hub retries a follow the broker timed out, too
                    try:
                        await sub.add(workspace, channel)
                        done += 1
                        return
                    except Exception as exc:
                        if attempt == 2:
                            failures.append(repr(exc))
                        await asyncio.sleep(1.0)

        async def progress() -> None:
            while True:
                await asyncio.sleep(2.0)
                ChildChannel.emit("progress", followed=done)

        reporter = asyncio.get_running_loop().create_task(progress())
        t0 = time.perf_counter()
        await asyncio.gather(*(add(c) for c in channels))
        follow_s = time.perf_counter() - t0
        reporter.cancel()
        ChildChannel.emit("followed", followed=done, failures=failures, follow_s=round(follow_s, 1),
                          rss=rss_bytes(pid), cpu_s=cpu_seconds(pid))
        while (cmd := await chan.command()) is not None:
            if cmd["cmd"] == "sample":
                ChildChannel.emit("sample", rss=rss_bytes(pid), cpu_s=cpu_seconds(pid))
            elif cmd["cmd"] == "report":
                deadline = time.monotonic() + cmd["timeout"]
                while sum(len(v) for v in offsets.values()) < cmd["expect"] and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                await asyncio.sleep(0.5)  # anything arriving late (a duplicate) is counted too
                lat = sorted(latencies)
                p99 = round(lat[int(0.99 * (len(lat) - 1))] * 1000, 1) if lat else 0.0
                p50 = round(lat[int(0.50 * (len(lat) - 1))] * 1000, 1) if lat else 0.0
                ChildChannel.emit("report", offsets=offsets, p99_ms=p99, p50_ms=p50, rss=rss_bytes(pid),
                                  cpu_s=cpu_seconds(pid), dropped=getattr(sub, "dropped", 0))
            elif cmd["cmd"] == "stop":
                await sub.close()
                ChildChannel.emit("stopped")
                return
    finally:
        await broker.stop()


# -- relay child: the consumers role's relay worker alone (STORM_BROADCAST=relay) ------------------------------
async def _relay_child() -> None:
    from consumers.relay import RelayWorker
    from storm.adapters.pulsar_relay import pulsar_broker
    from storm.bootstrap import pulsar_settings
    from storm.config import Config
    from storm.ports.clock import SystemClock
    from storm_tools.bench.procs import ChildChannel, child_channel, cpu_seconds, rss_bytes

    chan, conf = await child_channel()
    pid = os.getpid()
    workspace = conf["workspace"]
    cfg = Config.from_env(broker="pulsar", broadcast="relay", pulsar_url=conf["pulsar_url"],
                          pulsar_admin_url=conf["admin_url"])
    broker = pulsar_broker(pulsar_settings(cfg), SystemClock(), workspace_filter=lambda tenant: tenant == workspace)
    await broker.start()
    try:
        worker = RelayWorker(broker, cfg)
        await worker.start()
        ChildChannel.emit("started", rss=rss_bytes(pid), cpu_s=cpu_seconds(pid))
        while (cmd := await chan.command()) is not None:
            if cmd["cmd"] == "sample":
                ChildChannel.emit("sample", rss=rss_bytes(pid), cpu_s=cpu_seconds(pid), stats=dict(worker.stats))
            elif cmd["cmd"] == "stop":
                await worker.stop()
                ChildChannel.emit("stopped")
                return
    finally:
        await broker.stop()


if __name__ == "__main__" and "--child" in sys.argv:
    import uvloop

    uvloop.run(_child())
elif __name__ == "__main__" and "--relay-child" in sys.argv:
    import uvloop

    uvloop.run(_relay_child())
