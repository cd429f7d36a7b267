"""``storm top``: live per-process figures from DogStatsD, in the terminal (docs/observability.md).

Listens for DogStatsD on a local UDP port (default 127.0.0.1:8125) and redraws, every second, one row per
process (service and instance tags): connections, connects/s, publishes/s, deliveries/s, publish-ack and
delivery p50/p99, event-loop lag p99, RSS and CPU.  Rates and percentiles are over the last ``--window``
seconds.  Point STORM at it with ``DD_AGENT_HOST=127.0.0.1 DD_DOGSTATSD_PORT=8125`` (``storm dev``, ``storm
cluster``: the children inherit the environment).  Plain ANSI, no dependency; ``--json --duration N``
prints the figures once as JSON instead (for scripts and tests).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from storm_tools.statsd import Collector, listen, percentile

COLUMNS = (("service", 10), ("instance", 22), ("conns", 7), ("conn/s", 7), ("pub/s", 8), ("deliv/s", 9),
           ("ack p50", 8), ("ack p99", 8), ("dlv p50", 8), ("dlv p99", 8), ("lag p99", 8), ("rss MB", 8),
           ("cpu %", 6))


def figures(collector: Collector, window_s: float) -> list[dict[str, Any]]:
    """One dict per process with the figures ``storm top`` shows."""
    span = max(1e-9, min(window_s, time.time() - collector.started))
    rows = []
    for service, instance in collector.processes():
        tags = {"service": service, "instance": instance}

        def rate(name: str, **more: str) -> float:
            return collector.total(name, **tags, **more) / span  # noqa: B023 - used at once

        def pct(name: str, q: float) -> float | None:
            return percentile(collector.values(name, **tags), q)  # noqa: B023 - used at once

        rss = collector.latest_gauge("storm.process.rss", **tags)
        rows.append({
            "service": service, "instance": instance,
            "connections": collector.latest_gauge("storm.gateway.connections", **tags),
            "connects_per_s": rate("storm.gateway.connects", result="ok"),
            "publishes_per_s": rate("storm.commands", op="publish", result="ok"),
            "deliveries_per_s": rate("storm.fanout.deliveries"),
            "ack_p50_ms": pct("storm.publish.ack_latency", 50), "ack_p99_ms": pct("storm.publish.ack_latency", 99),
            "delivery_p50_ms": pct("storm.delivery.latency", 50),
            "delivery_p99_ms": pct("storm.delivery.latency", 99),
            "loop_lag_p99_ms": pct("storm.process.loop_lag", 99),
            "rss_mb": rss / 1e6 if rss is not None else None,
            "cpu_percent": collector.latest_gauge("storm.process.cpu", **tags),
        })
    return rows


def render(rows: list[dict[str, Any]], *, port: int, packets: int) -> str:
    def cell(value: Any, width: int) -> str:
        if value is None:
            text = "-"
        elif isinstance(value, float):
            text = f"{value:.1f}" if abs(value) < 1e5 else f"{value:.3g}"
        else:
            text = str(value)
        return text[:width].rjust(width)

    keys = ("service", "instance", "connections", "connects_per_s", "publishes_per_s", "deliveries_per_s",
            "ack_p50_ms", "ack_p99_ms", "delivery_p50_ms", "delivery_p99_ms", "loop_lag_p99_ms", "rss_mb",
            "cpu_percent")
    lines = [f"storm top — DogStatsD on udp://127.0.0.1:{port}, {packets} packets, {len(rows)} processes "
             f"({time.strftime('%H:%M:%S')}; Ctrl-C to quit)", ""]
    lines.append(" ".join(name.rjust(width) for name, width in COLUMNS))
    for row in rows:
        lines.append(" ".join(cell(row[key], width) for key, (_, width) in zip(keys, COLUMNS, strict=True)))
    if not rows:
        lines.append(f"  (nothing yet: start STORM with DD_AGENT_HOST=127.0.0.1 DD_DOGSTATSD_PORT={port})")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> int:
    collector = Collector(window_s=args.window)
    try:
        transport, port = await listen(collector, args.host, args.port)
    except OSError as exc:
        print(f"storm top: cannot listen on udp://{args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    try:
        if args.json:
            await asyncio.sleep(args.duration or args.window)
            print(json.dumps({"port": port, "packets": collector.packets,
                              "processes": figures(collector, args.window)}), flush=True)
            return 0
        deadline = time.monotonic() + args.duration if args.duration else float("inf")
        while time.monotonic() < deadline:
            sys.stdout.write("\x1b[H\x1b[2J" + render(figures(collector, args.window), port=port,
                                                      packets=collector.packets) + "\n")
            sys.stdout.flush()
            await asyncio.sleep(1.0)
        return 0
    finally:
        transport.close()


def cmd_top(args: argparse.Namespace) -> int:
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 0


def add_arguments(sub: Any) -> None:
    top = sub.add_parser("top", help="live per-process figures from DogStatsD (point DD_AGENT_HOST here)")
    top.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    top.add_argument("--port", type=int, default=8125, help="UDP port to listen on (default 8125; 0: any)")
    top.add_argument("--window", type=float, default=10.0, help="seconds that rates and percentiles cover")
    top.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: never)")
    top.add_argument("--json", action="store_true", help="print the figures once, as JSON, after --duration")
    top.set_defaults(fn=cmd_top)
