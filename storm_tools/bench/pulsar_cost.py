"""The Pulsar broker's CPU per message, by topology: what issue 12's Pulsar lever is worth (docs/benchmarks.md).

    python -m storm_tools.bench.pulsar_cost [--topics 200] [--rate 1000] [--duration 15] [--readers 2]
        [--shared-subs 2] [--batching-delay-ms 0] [--json]

``storm bench e2e`` shows Pulsar's CPU per published message with everything else running.  This bench
drives the broker alone, from one process, with the e2e bench's shape by default: two producers per topic
(one per gateway), ``--topics`` topics (the bench's 200 channels), ``--readers`` non-durable readers per topic
at the latest position (the gateways' broadcast readers) and ``--shared-subs`` Key_Shared subscriptions per
topic whose consumers ack every message (the persistence and webhooks workers).  Messages of 300 bytes carry
an ordering key, open loop at ``--rate`` in total, round robin over the topics.  ``--batching-delay-ms`` > 0
turns producer batching on with that window (what a per-workspace topic would allow: ``--topics 1``).

Result (one JSON object): the broker JVM's CPU over the measured window (after ``--warmup`` seconds) divided
by the messages acked, with and without its JIT compiler threads (storm_tools/bench/e2e.py, ``jit_seconds``),
and ``msgs_per_entry`` from the topics' internal stats (1.0 without batching).  The broker is found as
``storm bench e2e`` finds it (``STORM_SERVICES_DIR``'s pid file, else by command line); the tenant it creates
(``pcost-<hex>``) is deleted after.  The client's own CPU is not counted.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from typing import Any

PAYLOAD = b'{"type":"message","channel":"c","text":"' + b"x" * 260 + b'"}'


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topics", type=int, default=200, help="topics (channels), default 200")
    p.add_argument("--rate", type=float, default=1000.0, help="messages per second in total, default 1000")
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds, default 15")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds published before the window, default 5")
    p.add_argument("--producers", type=int, default=2, help="producers per topic (gateways), default 2")
    p.add_argument("--readers", type=int, default=2, help="non-durable readers per topic, default 2")
    p.add_argument("--shared-subs", type=int, default=2, help="Key_Shared subscriptions per topic, default 2")
    p.add_argument("--batching-delay-ms", type=int, default=0, help="producer batching window; 0 = off (default)")
    p.add_argument("--json", action="store_true", help="compact JSON on one line")


def validate(args: argparse.Namespace) -> None:
    if args.topics < 1 or args.rate <= 0 or args.duration <= 0 or args.warmup < 0 or args.producers < 1:
        raise SystemExit("pulsar_cost: --topics and --producers must be >= 1, --rate and --duration > 0, "
                         "--warmup >= 0")
    if args.readers < 0 or args.shared_subs < 0 or args.batching_delay_ms < 0:
        raise SystemExit("pulsar_cost: --readers, --shared-subs and --batching-delay-ms must be >= 0")


class _Admin:
    """The broker's admin REST API, synchronously (the bench drives the client's own threads)."""

    def __init__(self, url: str) -> None:
        import httpx

        self._http = httpx.Client(base_url=url.rstrip("/"), timeout=30.0)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        response = self._http.request(method, path, json=body)
        if response.status_code == 409:  # exists already
            return None
        response.raise_for_status()
        return response.json() if response.content else None

    def close(self) -> None:
        self._http.close()


def _broker_pid() -> int | None:
    """The broker's PID, or None when it runs elsewhere (the CPU figures are then None)."""
    from storm_tools.bench.e2e import service_pids

    return service_pids().get("pulsar")


def _cpu(pid: int | None) -> tuple[float, float]:
    """(CPU seconds, of which JIT compiler) of the broker so far; zeros when it is not on this machine."""
    from storm_tools.bench.e2e import jit_seconds
    from storm_tools.bench.procs import cpu_seconds

    return (0.0, 0.0) if pid is None else (cpu_seconds(pid), jit_seconds(pid))


def run(args: argparse.Namespace, service_url: str, admin_url: str) -> dict[str, Any]:
    import pulsar

    pid = _broker_pid()
    admin = _Admin(admin_url)
    tenant = f"pcost-{uuid.uuid4().hex[:10]}"
    clusters = admin.call("GET", "/admin/v2/clusters")
    admin.call("PUT", f"/admin/v2/tenants/{tenant}", {"allowedClusters": clusters, "adminRoles": []})
    client = pulsar.Client(service_url, logger=pulsar.FileLogger(pulsar.LoggerLevel.Warn, "/dev/stderr"))
    try:
        admin.call("PUT", f"/admin/v2/namespaces/{tenant}/ns")
        admin.call("POST", f"/admin/v2/namespaces/{tenant}/ns/deduplication", True)  # as STORM's channels
        names = [f"persistent://{tenant}/ns/t{i}" for i in range(args.topics)]
        for topic in names:
            for _ in range(args.readers):
                client.create_reader(topic, pulsar.MessageId.latest, reader_listener=lambda _r, _m: None,
                                     receiver_queue_size=100)
            for s in range(args.shared_subs):
                client.subscribe(topic, f"sub{s}", consumer_type=pulsar.ConsumerType.KeyShared,
                                 message_listener=lambda c, m: c.acknowledge(m))
        batching = args.batching_delay_ms > 0
        producers = [[client.create_producer(topic, producer_name=f"{tenant}-g{g}-{i}", batching_enabled=batching,
                                             batching_max_publish_delay_ms=max(1, args.batching_delay_ms),
                                             block_if_queue_full=True)
                      for i, topic in enumerate(names)] for g in range(args.producers)]
        acked = [0]
        lock = threading.Lock()

        def receipt(_result: Any, _msg_id: Any) -> None:
            with lock:
                acked[0] += 1

        def publish(seconds: float) -> None:
            start, k, total = time.monotonic(), 0, int(seconds * args.rate)
            while k < total:
                due = min(total, int((time.monotonic() - start) * args.rate) + 1)
                while k < due:
                    topic = k % args.topics
                    producers[(k // args.topics) % args.producers][topic].send_async(
                        PAYLOAD, receipt, partition_key=f"c{topic}")
                    k += 1
                time.sleep(0.001)

        def flush() -> None:
            for per_gateway in producers:
                for producer in per_gateway:
                    producer.flush()

        publish(args.warmup)
        flush()
        entries0 = _entries(admin, tenant, args.topics)  # outside the window: admin calls cost the broker CPU
        (cpu0, jit0), acked0, t0 = _cpu(pid), acked[0], time.monotonic()
        publish(args.duration)
        flush()
        time.sleep(1.0)  # the readers' and consumers' dispatch and acks of the last messages
        (cpu1, jit1), acked1, t1 = _cpu(pid), acked[0], time.monotonic()
        entries = _entries(admin, tenant, args.topics) - entries0
    finally:
        client.close()
        try:
            admin.call("DELETE", f"/admin/v2/tenants/{tenant}?force=true")
            cleanup = "deleted"
        except Exception as exc:  # reported, not raised: the figures are still good
            cleanup = f"failed: {exc!r}"
        admin.close()
    n = acked1 - acked0
    cpu, jit = cpu1 - cpu0, jit1 - jit0
    measured = pid is not None and n > 0
    return {
        "tenant": tenant, "topics": args.topics, "rate": args.rate, "duration_s": args.duration,
        "producers_per_topic": args.producers,
        "readers_per_topic": args.readers, "shared_subs_per_topic": args.shared_subs,
        "batching_delay_ms": args.batching_delay_ms, "acked": n, "window_s": round(t1 - t0, 1),
        "entries": entries, "msgs_per_entry": round(n / entries, 2) if entries else None,
        "broker_pid": pid, "pulsar_cpu_s": round(cpu, 3) if measured else None,
        "jit_cpu_s": round(jit, 3) if measured else None,
        "pulsar_us_per_msg": round(cpu * 1e6 / n, 1) if measured else None,
        "pulsar_us_per_msg_without_jit": round((cpu - jit) * 1e6 / n, 1) if measured else None,
        "pulsar_us_per_entry_without_jit": round((cpu - jit) * 1e6 / entries, 1) if measured and entries else None,
        "cleanup": cleanup,
    }


def _entries(admin: _Admin, tenant: str, topics: int) -> int:
    total = 0
    for i in range(topics):
        stats = admin.call("GET", f"/admin/v2/persistent/{tenant}/ns/t{i}/internalStats")
        total += int(stats.get("entriesAddedCounter", 0)) if stats else 0
    return total


def main(argv: list[str] | None = None) -> None:
    from storm_tools.verify import _service_env

    p = argparse.ArgumentParser(prog="python -m storm_tools.bench.pulsar_cost", description=__doc__.split("\n")[0])
    add_arguments(p)
    args = p.parse_args(argv)
    validate(args)
    env = _service_env()
    result = run(args, env["STORM_PULSAR_URL"], env["STORM_PULSAR_ADMIN_URL"])
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    sys.exit(0 if result["acked"] and result["cleanup"] == "deleted" else 1)


if __name__ == "__main__":
    main()
