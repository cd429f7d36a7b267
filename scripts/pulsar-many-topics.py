#!/usr/bin/env python3
"""Many topics on one standalone Pulsar: does the broker stall?  (docs/storm-day.md, "Last measured run")

The 100 000-user storm day stalled the standalone broker with the CPU idle.  This script reproduces its
broker-side shape at a fraction of the cost: no gateways, no clients, only STORM's own Pulsar adapter
(``storm.adapters.pulsar_broker.PulsarBroker``) doing what the gateways do with it.

    env $(scripts/services.sh env pulsar) .venv/bin/python scripts/pulsar-many-topics.py \\
        [--tenants 20] [--topics 4000] [--procs 3] [--rate 50] [--minutes 3] [--concurrency 100] \\
        [--subs 2] [--no-dedup] [--keep] [--json]

* ``--tenants`` workspaces (``mt-<hex>-wN``, set up with ``ensure_workspace`` and the ``pro`` plan's
  policies, deduplication on as in ``storm day``; ``--no-dedup`` turns it off) share ``--topics`` channel
  topics.
* ``--procs`` worker processes stand in for gateways.  Worker *i* follows (one broadcast reader per
  channel, ``PulsarBroadcastSubscription.add``: an admin ``lastMessageId`` call and a reader) the channels of
  share *i+1* and holds a producer (created as ``publish`` creates it, named as the gateways' are) on each
  channel of share *i* (at most 1 024 per process, the adapter's LRU: the rest are recreated as needed),
  all created at once with at most ``--concurrency`` creations in flight per process.
  A failed creation is retried after 1 s, at most 3 times (a gateway's client retries its subscribe).
* ``--subs`` N (default 0) adds one more process standing in for the consumers: N durable Key_Shared
  subscriptions (``work0`` ...) over every channel topic, one pattern consumer per workspace and subscription
  (``channels_pattern``, initial position Earliest, every message acked), which is how the
  persistence and webhooks workers subscribed until 2026-12-07; a subscribe that fails is tried again 5 s
  later, as theirs was.
* Then every worker publishes, open loop, ``--rate``/``--procs`` messages a second to random channels of its
  share for ``--minutes`` minutes (each publish awaits its receipt, 10 s send timeout), and stops.

Printed (a table, or one JSON object with ``--json``): reader and producer creation latencies (p50, p99,
max, failures by error), and per minute of the publish phase: sent, acked, ack latency p50/p99, failures
(timeouts and others), deliveries received by the readers.  The tenants are deleted after unless ``--keep``.
STORM_PULSAR_URL / STORM_PULSAR_ADMIN_URL name the broker (``scripts/services.sh env pulsar`` prints them;
the STORM_TEST_* names are accepted too).  Bounded: it stops by itself after setup + ``--minutes``.
Watch the broker meanwhile with ``jstack <pid of .services/pulsar.pid>``: a ``pulsar-io`` thread that is not
in ``epollWait`` serves none of its connections.  Figures: docs/storm-day.md, "Last measured run".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections import Counter
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

PAYLOAD = b'{"type":"message","text":"' + b"x" * 200 + b'"}'


def _urls() -> tuple[str, str]:
    env = os.environ
    url = env.get("STORM_PULSAR_URL") or env.get("STORM_TEST_PULSAR_URL") or "pulsar://127.0.0.1:6650"
    admin = env.get("STORM_PULSAR_ADMIN_URL") or env.get("STORM_TEST_PULSAR_ADMIN_URL") or "http://127.0.0.1:8080"
    return url, admin


def _settings(gateway_id: str) -> Any:
    from storm.adapters.pulsar_broker import PulsarSettings

    url, admin = _urls()
    return PulsarSettings(service_url=url, admin_url=admin, cluster="standalone", gateway_id=gateway_id,
                          max_channel_readers=1_000_000, ack_timeout_s=30.0, max_redeliveries=5,
                          send_timeout_s=10.0)


def _channels(prefix: str, tenants: int, topics: int) -> list[tuple[str, str]]:
    return [(f"{prefix}-w{k % tenants}", f"c{k}") for k in range(topics)]


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(q * len(s)))], 3)


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:90]}"


# -- worker -------------------------------------------------------------------------------------------------
async def _create_all(what: str, items: list[tuple[str, str]], make: Any, concurrency: int) -> dict[str, Any]:
    sem = asyncio.Semaphore(concurrency)
    lat: list[float] = []
    errors: Counter[str] = Counter()
    failed = 0

    async def one(ws: str, ch: str) -> None:
        nonlocal failed
        async with sem:
            for attempt in range(4):
                t0 = time.monotonic()
                try:
                    await make(ws, ch)
                    lat.append(time.monotonic() - t0)
                    return
                except Exception as exc:
                    errors[_short(exc)] += 1
                    if attempt == 3:
                        failed += 1
                        return
                await asyncio.sleep(1.0)

    t0 = time.monotonic()
    await asyncio.gather(*(one(ws, ch) for ws, ch in items))
    return {"what": what, "n": len(items), "seconds": round(time.monotonic() - t0, 1), "latencies": lat,
            "failed": failed, "errors": dict(errors)}


async def _worker(args: argparse.Namespace) -> dict[str, Any]:
    from storm.adapters.pulsar_broker import PulsarBroker
    from storm.adapters.pulsar_names import channel_topic
    from storm.ports.clock import SystemClock

    channels = _channels(args.prefix, args.tenants, args.topics)
    mine = [c for k, c in enumerate(channels) if k % args.procs == args.worker]
    followed = [c for k, c in enumerate(channels) if k % args.procs == (args.worker + 1) % args.procs]
    received = Counter[int]()
    t_start = 0.0

    def on_record(_record: Any) -> None:
        received[int((time.monotonic() - t_start) // 60)] += 1

    broker = PulsarBroker(_settings(f"mt{args.worker}-{uuid.uuid4().hex[:6]}"), SystemClock())
    await broker.start()
    try:
        sub = await broker.subscribe_broadcast(on_record)
        assert broker._producers is not None
        producers = broker._producers

        async def make_producer(ws: str, ch: str) -> None:
            # what publish() does before its first send: the gateways' producer, by their name
            try:
                await producers.get(channel_topic(ws, ch), f"{broker.gateway_id}-{ch}")
            except Exception:
                producers.drop(channel_topic(ws, ch))
                raise

        readers_t, producers_t = await asyncio.gather(
            _create_all("readers", followed, sub.add, args.concurrency),
            _create_all("producers", mine, make_producer, args.concurrency))

        minutes: dict[int, dict[str, Any]] = {}
        t_start = time.monotonic()
        end = t_start + args.minutes * 60
        interval = args.procs / args.rate
        tasks: set[asyncio.Task[None]] = set()

        async def publish(ws: str, ch: str) -> None:
            t0 = time.monotonic()
            m = minutes.setdefault(int((t0 - t_start) // 60), {"sent": 0, "acked": [], "errors": Counter()})
            m["sent"] += 1
            try:
                await asyncio.wait_for(broker.publish(ws, ch, PAYLOAD), 15.0)
                m["acked"].append(time.monotonic() - t0)
            except Exception as exc:
                m["errors"][_short(exc)] += 1

        next_t = time.monotonic()
        while next_t < end:
            ws, ch = random.choice(mine)
            task = asyncio.get_running_loop().create_task(publish(ws, ch))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_t += random.expovariate(1.0 / interval)
            await asyncio.sleep(max(0.0, next_t - time.monotonic()))
        if tasks:
            await asyncio.wait(tasks, timeout=20.0)
        await asyncio.sleep(2.0)
        return {"worker": args.worker, "create": [readers_t, producers_t],
                "minutes": {str(k): {"sent": v["sent"], "acked": v["acked"], "errors": dict(v["errors"]),
                                     "received": received.get(k, 0)} for k, v in sorted(minutes.items())}}
    finally:
        await asyncio.wait_for(broker.stop(), 60.0)


async def _consumers(args: argparse.Namespace) -> dict[str, Any]:
    """The work subscriptions' stand-in (``--subs``): pattern consumers that ack everything."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    import pulsar

    url, admin = _urls()
    client = pulsar.Client(url, operation_timeout_seconds=10, connection_timeout_ms=5000,
                           logger=pulsar.FileLogger(pulsar.LoggerLevel.Warn, "/dev/stderr"))
    acked = 0
    attached: set[tuple[str, str]] = set()
    errors: Counter[str] = Counter()

    pool = ThreadPoolExecutor(16)  # the old work subscription attached 16 workspaces at a time

    def listener(consumer: Any, msg: Any) -> None:
        nonlocal acked
        consumer.acknowledge(msg)
        acked += 1

    expected = Counter(ws for ws, _ch in _channels(args.prefix, args.tenants, args.topics))

    async def attach(ws: str, name: str) -> None:
        loop = asyncio.get_running_loop()
        async with httpx.AsyncClient(base_url=admin, timeout=30.0) as http:
            # as in storm day, the workspace's topics exist when its consumer subscribes to them
            while True:
                with contextlib.suppress(Exception):
                    resp = await http.get(f"/admin/v2/persistent/{ws}/channels")
                    if len(resp.json()) >= expected[ws]:
                        break
                await asyncio.sleep(2.0)
        while (ws, name) not in attached:
            t0 = time.monotonic()
            try:
                await loop.run_in_executor(pool, lambda: client.subscribe(
                    _pulsar_re(ws), name, consumer_type=pulsar.ConsumerType.KeyShared,
                    initial_position=pulsar.InitialPosition.Earliest, message_listener=listener,
                    pattern_auto_discovery_period=5, receiver_queue_size=1000))
                attached.add((ws, name))
                print(f"attached {ws} {name} in {time.monotonic() - t0:.1f} s", file=sys.stderr)
            except Exception as exc:
                errors[_short(exc)] += 1
                await asyncio.sleep(5.0)

    tasks = [asyncio.create_task(attach(f"{args.prefix}-w{k}", f"work{i}"))
             for k in range(args.tenants) for i in range(args.subs)]
    # until the parent closes our stdin (the publishers are done), at most as long as the parent waits
    await asyncio.wait([asyncio.ensure_future(asyncio.get_running_loop().run_in_executor(None, sys.stdin.read))],
                       timeout=args.minutes * 60 + 900)
    for t in tasks:
        t.cancel()
    await asyncio.sleep(0.1)
    result = {"attached": len(attached), "of": len(tasks), "acked": acked, "errors": dict(errors)}
    await asyncio.get_running_loop().run_in_executor(None, client.close)
    pool.shutdown(wait=False, cancel_futures=True)
    return result


def _pulsar_re(ws: str) -> Any:
    import re

    from storm.adapters.pulsar_names import channels_pattern

    return re.compile(channels_pattern(ws))


# -- parent -------------------------------------------------------------------------------------------------
async def _setup(args: argparse.Namespace, delete: bool = False) -> None:
    from storm.adapters.pulsar_broker import PulsarBroker
    from storm.domain import PLANS
    from storm.ports.clock import SystemClock

    broker = PulsarBroker(_settings("mt-setup"), SystemClock())
    await broker.start()
    try:
        plan = PLANS["pro"]
        for k in range(args.tenants):
            ws = f"{args.prefix}-w{k}"
            if delete:
                try:
                    await broker.delete_workspace(ws)
                except Exception as exc:
                    print(f"delete {ws}: {exc}", file=sys.stderr)
                continue
            await broker.ensure_workspace(ws, plan)
            if args.no_dedup:
                await broker.admin._call("POST", f"/admin/v2/namespaces/{ws}/channels/deduplication", json=False)
    finally:
        await broker.stop()


def _merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"create": {}, "minutes": []}
    for what in ("readers", "producers"):
        parts = [c for r in results for c in r["create"] if c["what"] == what]
        lat = [x for p in parts for x in p["latencies"]]
        errors: Counter[str] = Counter()
        for p in parts:
            errors.update(p["errors"])
        out["create"][what] = {"n": sum(p["n"] for p in parts), "ok": len(lat),
                               "failed": sum(p["failed"] for p in parts),
                               "seconds": max((p["seconds"] for p in parts), default=0),
                               "p50_s": _pct(lat, 0.5), "p99_s": _pct(lat, 0.99),
                               "max_s": round(max(lat), 3) if lat else None,
                               "errors": dict(errors.most_common(6))}
    keys = sorted({int(k) for r in results for k in r["minutes"]})
    for k in keys:
        ms = [r["minutes"][str(k)] for r in results if str(k) in r["minutes"]]
        acked = [x for m in ms for x in m["acked"]]
        errors = Counter()
        for m in ms:
            errors.update(m["errors"])
        timeouts = sum(v for e, v in errors.items() if "imeout" in e)
        out["minutes"].append({"minute": k, "sent": sum(m["sent"] for m in ms), "acked": len(acked),
                               "ack_p50_s": _pct(acked, 0.5), "ack_p99_s": _pct(acked, 0.99),
                               "timeouts": timeouts, "other_errors": sum(errors.values()) - timeouts,
                               "received": sum(m["received"] for m in ms),
                               "errors": dict(errors.most_common(4))})
    return out


def _print(report: dict[str, Any]) -> None:
    print(f"setup {report['setup_s']} s; {report['args']}")
    for what, c in report["create"].items():
        print(f"{what:9} n={c['n']} ok={c['ok']} failed={c['failed']} in {c['seconds']} s: "
              f"p50 {c['p50_s']} s, p99 {c['p99_s']} s, max {c['max_s']} s; errors {c['errors']}")
    if report["consumers"]:
        print(f"consumers {report['consumers']}")
    print("minute  sent  acked  ack_p50_s  ack_p99_s  timeouts  other  received")
    for m in report["minutes"]:
        print(f"{m['minute']:6} {m['sent']:5} {m['acked']:6} {m['ack_p50_s']!s:>10} {m['ack_p99_s']!s:>10} "
              f"{m['timeouts']:9} {m['other_errors']:6} {m['received']:9}  {m['errors'] or ''}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tenants", type=int, default=20)
    p.add_argument("--topics", type=int, default=4000)
    p.add_argument("--procs", type=int, default=3)
    p.add_argument("--rate", type=float, default=50.0, help="publishes per second, all workers together")
    p.add_argument("--minutes", type=float, default=3.0)
    p.add_argument("--concurrency", type=int, default=100, help="creations in flight per worker")
    p.add_argument("--subs", type=int, default=0, help="work subscriptions (pattern consumers), default 0")
    p.add_argument("--no-dedup", action="store_true", help="turn the plan's namespace deduplication off")
    p.add_argument("--keep", action="store_true", help="do not delete the tenants after")
    p.add_argument("--json", action="store_true")
    p.add_argument("--prefix", default=f"mt-{uuid.uuid4().hex[:6]}", help=argparse.SUPPRESS)
    p.add_argument("--worker", type=int, default=-1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker >= 0:
        print(json.dumps(asyncio.run(_consumers(args) if args.worker == args.procs else _worker(args))))
        return
    t0 = time.monotonic()
    asyncio.run(_setup(args))
    setup_s = round(time.monotonic() - t0, 1)
    base = [sys.executable, os.path.abspath(__file__), "--prefix", args.prefix, "--tenants", str(args.tenants),
            "--topics", str(args.topics), "--procs", str(args.procs), "--rate", str(args.rate),
            "--minutes", str(args.minutes), "--concurrency", str(args.concurrency), "--subs", str(args.subs)]
    procs = [subprocess.Popen([*base, "--worker", str(i)], stdout=subprocess.PIPE, text=True)  # noqa: S603
             for i in range(args.procs)]
    if args.subs:  # the consumers' stand-in runs until its stdin closes, after the publishers
        procs.append(subprocess.Popen([*base, "--worker", str(args.procs)], stdin=subprocess.PIPE,  # noqa: S603
                                      stdout=subprocess.PIPE, text=True))
    results = []
    consumers: dict[str, Any] = {}
    try:
        for proc in procs:
            out, _ = proc.communicate("" if proc.stdin else None, timeout=args.minutes * 60 + 900)
            if proc.returncode == 0 and out.strip():
                result = json.loads(out.strip().splitlines()[-1])
                if "attached" in result:
                    consumers = result
                else:
                    results.append(result)
            else:
                print(f"worker exited {proc.returncode}", file=sys.stderr)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        if not args.keep:
            asyncio.run(_setup(args, delete=True))
    report = {"args": {k: v for k, v in vars(args).items() if k not in ("worker", "json")}, "setup_s": setup_s,
              **_merge(results), "consumers": consumers}
    if args.json:
        print(json.dumps(report))
    else:
        _print(report)


if __name__ == "__main__":
    main()
