"""`storm bench`: fan-out and idle-connection benchmarks (docs/benchmarks.md).

    storm bench fanout --subscribers 1000 --messages 200 [--rate 100] [--json]
    storm bench idle --connections 10000 [--json]
    storm bench persist --messages 100000 [--workers 2] [--batch 500] [--json]   (storm_tools/bench/persist.py)
    storm bench e2e --connections 2000 --rate 5000 --duration 30 [--json]        (storm_tools/bench/e2e.py)
    storm bench connect --connections 5000 [--subscribe K] [--services real] [--json] (storm_tools/bench/connect.py)
    storm bench reconnect --connections 17000 --gateways 3 [--json]                (storm_tools/bench/reconnect.py)
    storm bench follow --channels 20000 [--json]                                    (storm_tools/bench/follow.py)
    storm bench store [--reps 1000] [--json]                                        (storm_tools/bench/store.py)

Results are one JSON object on stdout (printed by storm_cli/main.py); progress goes to stderr.  Servers and
clients run as child processes (storm_tools/bench/procs.py), so the server measured is never the process that
measures it.
"""

from __future__ import annotations

import argparse
from typing import Any

DEFAULT_RATE = 50.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="bench", required=True,
                                metavar="{fanout,idle,persist,e2e,connect,reconnect,follow,store}")

    fan = sub.add_parser("fanout", help="CPU per delivery and latency of a channel broadcast, STORM vs floor")
    fan.add_argument("--subscribers", type=int, default=1000, help="subscribed connections (default 1000)")
    fan.add_argument("--messages", type=int, default=200, help="messages published (default 200)")
    fan.add_argument("--rate", type=float, default=DEFAULT_RATE,
                     help=f"publishes per second, the same for both servers (default {DEFAULT_RATE:g})")
    fan.add_argument("--warmup", type=int, default=5,
                     help="uncounted messages published and delivered before the measurement (default 5)")
    fan.add_argument("--timeout", type=float, default=30.0,
                     help="seconds to wait for missing deliveries after the last publish (default 30)")
    fan.add_argument("--sample-every", type=int, default=10,
                     help="latency: every delivery of every N-th connection (default 10)")
    fan.add_argument("--client-procs", type=int, default=0, help="client processes (default: 1 per 9000)")
    fan.add_argument("--server", choices=("both", "storm", "floor"), default="both",
                     help="which servers to run (default both; ratio_to_floor needs both)")
    fan.add_argument("--start-timeout", type=float, default=60.0, help="seconds for a server to get ready")
    fan.add_argument("--log-dir", default=None, help="keep the servers' logs here (default: discarded)")
    fan.add_argument("--json", action="store_true", help="compact JSON on one line")
    fan.add_argument("--metrics", action="store_true",
                     help="STORM with DogStatsD on, sent to a local receiver (docs/observability.md)")

    idle = sub.add_parser("idle", help="gateway memory per authenticated idle connection")
    idle.add_argument("--connections", type=int, default=10000, help="idle connections (default 10000)")
    idle.add_argument("--per-process", type=int, default=9000, help="connections per client process")
    idle.add_argument("--settle-s", type=float, default=3.0, help="RSS must be stable this long (default 3)")
    idle.add_argument("--settle-timeout", type=float, default=60.0, help="give up waiting for a stable RSS")
    idle.add_argument("--start-timeout", type=float, default=60.0, help="seconds for the server to get ready")
    idle.add_argument("--log-dir", default=None, help="keep the server's log here (default: discarded)")
    idle.add_argument("--json", action="store_true", help="compact JSON on one line")

    from storm_tools.bench import persist

    persist.add_parser(sub)
    from storm_tools.bench import e2e

    e2e.add_parser(sub)
    from storm_tools.bench import connect

    connect.add_parser(sub)
    from storm_tools.bench import reconnect

    reconnect.add_parser(sub)
    from storm_tools.bench import follow

    follow.add_parser(sub)
    from storm_tools.bench import store

    store.add_parser(sub)


def _validate(args: argparse.Namespace) -> None:
    if args.bench == "persist":
        from storm_tools.bench import persist

        persist.validate(args)
    elif args.bench == "e2e":
        from storm_tools.bench import e2e

        e2e.validate(args)
    elif args.bench == "connect":
        from storm_tools.bench import connect

        connect.validate(args)
    elif args.bench == "reconnect":
        from storm_tools.bench import reconnect

        reconnect.validate(args)
    elif args.bench == "follow":
        from storm_tools.bench import follow

        follow.validate(args)
    elif args.bench == "store":
        from storm_tools.bench import store

        store.validate(args)
    elif args.bench == "fanout":
        if args.subscribers < 1 or args.messages < 1 or args.rate <= 0 or args.sample_every < 1 or args.warmup < 0:
            raise SystemExit("storm bench fanout: --subscribers, --messages, --rate and --sample-every "
                             "must be > 0")
    elif args.connections < 1 or not 1 <= args.per_process <= 18000:
        raise SystemExit("storm bench idle: --connections must be > 0 and --per-process in 1..18000")


def main(args: argparse.Namespace) -> dict[str, Any]:
    """Run the chosen bench; return its result, marked "failed" when deliveries or connections are missing."""
    _validate(args)
    import uvloop

    if args.bench == "fanout":
        from storm_tools.bench import fanout as bench
    elif args.bench == "persist":
        from storm_tools.bench import persist as bench  # type: ignore[no-redef]
    elif args.bench == "e2e":
        from storm_tools.bench import e2e as bench  # type: ignore[no-redef]
    elif args.bench == "connect":
        from storm_tools.bench import connect as bench  # type: ignore[no-redef]
    elif args.bench == "reconnect":
        from storm_tools.bench import reconnect as bench  # type: ignore[no-redef]
    elif args.bench == "follow":
        from storm_tools.bench import follow as bench  # type: ignore[no-redef]
    elif args.bench == "store":
        from storm_tools.bench import store as bench  # type: ignore[no-redef]
    else:
        from storm_tools.bench import idle as bench  # type: ignore[no-redef]
    result: dict[str, Any] = uvloop.run(bench.run(args))
    if bench.failed(result):
        result["failed"] = True
    return result
