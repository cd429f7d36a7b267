"""The `storm` command line: run STORM, mint dev tokens, migrate, benchmark.

    storm dev                      gateway + tenants API + consumers in one process, embedded adapters
    storm token alice [--workspace demo]
    storm migrate                  run database migrations to head
    storm bench fanout|idle|persist|e2e ...   benchmarks (JSON on stdout, progress on stderr; storm_tools/bench/)
    storm serve gateway|api|consumers   one role as its own process (storm_cli/cluster.py)
    storm cluster                  services + 2 gateways, tenants API, consumers as processes (make run-cluster)
    storm verify delivery --json   gateway-kill scenario on the running services (storm_tools/verify.py)
    storm chaos run --all          the chaos matrix on a cluster it starts (storm_tools/chaos/, make chaos)
    storm top                      live per-process figures from DogStatsD (storm_tools/top.py)
    storm day [--profile ci]       the launch day: ramp, traffic, incidents, checks, report (storm_tools/day/)
    storm cost [--json]            the AWS fleet and bill for launch day from measured capacities (storm_tools/cost.py)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import webbrowser
from typing import Any

from storm.config import Config, ConfigError


def _config(args: argparse.Namespace, **overrides: Any) -> Config:
    if getattr(args, "host", None):
        overrides["host"] = args.host
    if getattr(args, "port", None):
        overrides["port"] = args.port
    return Config.from_env(**overrides)


def cmd_dev(args: argparse.Namespace) -> int:
    from gateway.serve import run, serve_app
    from storm.adapters.dev_identity import DevIdentity
    from storm.bootstrap import build_services
    from storm_cli.apps import dev_app
    from storm_tools.seed import DEMO_USERS, DEMO_WORKSPACE, channel_id

    cfg = _config(args, seed_demo=not args.no_seed)
    services = build_services(cfg)
    url = f"http://{cfg.host}:{cfg.port}/"

    async def announce(app: Any) -> None:
        issuer = DevIdentity(cfg.dev_secret, ttl_s=cfg.token_ttl_s)
        token = issuer.issue("dev|alice", DEMO_WORKSPACE, "Alice")
        lines = [
            "", "STORM dev is running", "",
            f"  Chat page   {url}   (a second window as another user: {url}?user=bob&connect=1)",
            f"  WebSocket   ws://{cfg.host}:{cfg.port}/ws   (docs/protocol.md)",
            f"  REST API    {url}v1/   (OpenAPI: {url}openapi.json; docs/tenants-api.md)",
            f"  Health      {url}healthz",
        ]
        if cfg.seed_demo:
            lines += [
                "", f"  Demo workspace '{DEMO_WORKSPACE}': users {', '.join(DEMO_USERS)}; "
                f"#general = {channel_id(DEMO_WORKSPACE, 'general')}",
                f"  Dev token of alice (valid {cfg.token_ttl_s // 60} min; `storm token bob` mints another):",
                f"    {token}",
                "", "  Next: open the chat page, or try the API:",
                f"    curl -H 'Authorization: Bearer <token>' {url}v1/workspaces/{DEMO_WORKSPACE}/channels",
            ]
        lines += ["", "press Ctrl-C to stop", ""]
        print("\n".join(lines), flush=True)
        if args.open and (os.environ.get("DISPLAY") or sys.platform == "darwin"):
            webbrowser.open(url)

    app = dev_app(services, on_started=announce)
    run(lambda: serve_app(app, cfg))
    print("STORM dev stopped", flush=True)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from storm.adapters.dev_identity import DevIdentity

    cfg = Config.from_env()
    if cfg.identity != "dev":
        print("storm token: dev tokens exist only with STORM_IDENTITY=dev", file=sys.stderr)
        return 2
    print(DevIdentity(cfg.dev_secret, ttl_s=args.ttl).issue(f"dev|{args.user}", args.workspace,
                                                           args.name or args.user.title()))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from db.migrate import upgrade_async
    from db.multiregion import MultiRegionError, parse_regions, statements
    from db.store import parse_url
    from gateway.serve import run

    cfg = Config.from_env()
    parse_url(cfg.database_url)  # an unsupported URL is a ConfigError (exit 2), not a driver traceback
    try:
        regions = parse_regions(args.regions) if args.regions else []
        if args.dry_run:  # print the multi-region DDL for the URL's database; connect to nothing
            from sqlalchemy import make_url

            if not regions:
                raise MultiRegionError("--dry-run prints the multi-region DDL: give --regions")
            url = make_url(cfg.database_url)
            if url.get_backend_name() != "cockroachdb":
                raise MultiRegionError(f"--regions needs a cockroachdb+asyncpg:// or cockroachdb+psycopg:// "
                                       f"URL, not {url.get_backend_name()}")
            for statement in statements(url.database or "", regions, survive=args.survive):
                print(statement + ";")
            return 0
        applied = run(lambda: upgrade_async(cfg.database_url, regions=regions, survive=args.survive))
    except MultiRegionError as exc:
        print(f"storm migrate: {exc}", file=sys.stderr)
        return 2
    print(f"migrated {cfg.database_url.split('@')[-1]}")
    for statement in applied or []:
        print(f"  {statement}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from storm_tools.bench import main as bench_main

    result = bench_main(args)
    print(json.dumps(result, indent=None if args.json else 2), flush=True)
    return 1 if result.get("failed") else 0


def cmd_fuzz(args: argparse.Namespace) -> int:
    from storm_tools.fuzz import main as fuzz_main

    result = fuzz_main(args)
    print(json.dumps(result), flush=True)
    return 1 if result["failed"] else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="storm", description="STORM real-time messaging backend")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    dev = sub.add_parser("dev", help="run everything in one process on embedded adapters")
    dev.add_argument("--host", default=None)
    dev.add_argument("--port", type=int, default=None)
    dev.add_argument("--no-seed", action="store_true", help="do not create the demo workspace")
    dev.add_argument("--open", action="store_true", help="open the chat page in a browser")
    dev.set_defaults(fn=cmd_dev)

    tok = sub.add_parser("token", help="mint a dev token (embedded mode only)")
    tok.add_argument("user")
    tok.add_argument("--workspace", default="demo", help="workspace slug, or * for a provisioning token")
    tok.add_argument("--name", default=None)
    tok.add_argument("--ttl", type=int, default=3600)
    tok.set_defaults(fn=cmd_token)

    mig = sub.add_parser("migrate", help="run database migrations to head")
    mig.add_argument("--regions", default="", help="CockroachDB only: comma-separated regions, primary first; "
                                                   "then apply the multi-region DDL (docs/database.md)")
    mig.add_argument("--survive", choices=("zone", "region"), default="zone", help="survival goal (default zone)")
    mig.add_argument("--dry-run", action="store_true", help="print the multi-region DDL instead of running it")
    mig.set_defaults(fn=cmd_migrate)

    bench = sub.add_parser("bench", help="benchmarks; JSON on stdout")
    from storm_tools.bench import add_arguments

    add_arguments(bench)
    bench.set_defaults(fn=cmd_bench)

    # storm_tools.fuzz needs hypothesis (the dev extra): its options are declared here so that `storm --help`
    # works in an install without it, and `storm fuzz` then says which extra to install.
    fuzz = sub.add_parser("fuzz", help="property-based fuzzing campaign; JSON summary on stdout (dev extra)")
    fuzz.add_argument("--cases", type=int, default=10000, help="examples per target (default 10000)")
    fuzz.add_argument("--target", choices=("all", "decoder", "session", "rest"), default="all")
    fuzz.add_argument("--seed", type=int, default=None, help="reproduce a campaign")
    fuzz.set_defaults(fn=cmd_fuzz)

    from storm_cli.cluster import add_arguments as cluster_arguments

    cluster_arguments(sub)  # `storm serve gateway|api|consumers` and `storm cluster` (storm_cli/cluster.py)
    from storm_tools.verify import add_arguments as verify_arguments

    verify_arguments(sub)  # `storm verify delivery --json` (storm_tools/verify.py)
    from storm_tools.chaos.runner import add_arguments as chaos_arguments

    chaos_arguments(sub)  # `storm chaos run --all | FILE...` (storm_tools/chaos/runner.py)
    from storm_tools.top import add_arguments as top_arguments

    top_arguments(sub)  # `storm top`: live figures from DogStatsD (storm_tools/top.py, docs/observability.md)
    from storm_tools.day.runner import add_arguments as day_arguments

    day_arguments(sub)  # `storm day [--profile FILE|NAME] [--users N] [--minutes M] [--report DIR] [--json]`
    from storm_tools.cost import add_arguments as cost_arguments

    cost_arguments(sub)  # `storm cost [--from REPORT] [--json] [--tfvars PATH]` (storm_tools/cost.py)
    return parser


# The optional dependencies a command may need, by top-level module, and the pip argument that installs them
# (pyproject.toml [project.optional-dependencies]; the SDK is its own distribution in sdk/).
_SDK = "./sdk   (the storm-chat-sdk distribution, from a checkout of this repository)"
EXTRAS = {
    "hypothesis": "'storm-chat[dev]'",
    "yaml": "'storm-chat[dev]'",
    "rich": "'storm-chat[dev]'",
    "storm_sdk": _SDK,
    "websockets": _SDK,
    "pulsar": "'storm-chat[pulsar]'",
    "httpx": "'storm-chat[pulsar]'",
    "hazelcast": "'storm-chat[hazelcast]'",
    "asyncpg": "'storm-chat[postgres]'",
    "psycopg": "'storm-chat[postgres]'",
    "sqlalchemy_cockroachdb": "'storm-chat[postgres]'",
    "auth0": "'storm-chat[auth0]'",
    "requests": "'storm-chat[auth0]'",
    "datadog": "'storm-chat[datadog]'",
}


def missing_dependency(command: str, exc: ModuleNotFoundError) -> str | None:
    """The one-line error for a command whose optional dependency is not installed, or None when the missing
    module is not an optional dependency (then it is a bug, and the traceback is the right answer)."""
    root = (exc.name or "").partition(".")[0]
    what = EXTRAS.get(root)
    if what is None:
        return None
    return f"storm {command}: needs {root}, which is not installed; install it with: pip install {what}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s", stream=sys.stderr)
    httpx_log = logging.getLogger("httpx")
    httpx_level = httpx_log.level  # given back on return: main() also runs inside other programs (the tests)
    if not args.verbose:  # httpx logs every request at INFO: a line per Pulsar admin call and webhook post
        httpx_log.setLevel(logging.WARNING)
    from storm.redact import install as install_redaction

    install_redaction()  # no token or secret in any log line (docs/security.md)
    try:
        from storm.logs import configure as configure_logs

        configure_logs(os.environ, service=getattr(args, "role", None) or args.command)  # STORM_LOG_FORMAT
        return int(args.fn(args))
    except ConfigError as exc:
        print(f"storm: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except ModuleNotFoundError as exc:
        message = missing_dependency(args.command, exc)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 2
    finally:
        httpx_log.setLevel(httpx_level)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
