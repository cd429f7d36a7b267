"""`storm chaos run --all | FILE...` (``make chaos``): the topology, the matrix, the report folder.

1. the services (``scripts/services.sh up all``: PostgreSQL, Pulsar, Hazelcast, Toxiproxy) and a database of
   its own (``storm_chaos_<hex>``, migrated by ``storm cluster``, dropped at the end);
2. one Toxiproxy proxy per (STORM process, service) link on a free 127.0.0.1 port, and ``storm cluster
   --child-env`` pointing every child at its proxies (so one gateway's link can be cut alone);
3. ``storm cluster --gateways N --state-file <report>/cluster-state.json`` (the supervisor restarts what an
   experiment kills), output in ``<report>/cluster.log``;
4. for each experiment ``chaos run --journal-path <report>/<name>/journal.json <file>`` with its run folder,
   bounded by ``--experiment-timeout``; between experiments the links are restored, the services brought up
   and the cluster checked;
5. ``summary.json`` and ``summary.md`` (experiment, status, deviated, SLO verdicts, lost/dup/inversions, time
   to recover) in the report folder; the JSON on stdout, progress on stderr;
6. stops what it started: the cluster (SIGTERM by PID), the proxies, the database.  The services stay up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import IO, Any

from storm_tools.chaos import context as ctx
from storm_tools.chaos.toxiproxy import Toxiproxy
from storm_tools.verify import free_ports

EXPERIMENTS_DIR = ctx.ROOT / "chaos-experiments"
#: The chaos cluster's STORM_OUTBOX_MAX_BYTES: the rule (close 4008 past the bound) is the same as at the default
#: 4 MiB; only the time a stopped reader takes to reach it changes (chaos-experiments/slow-consumers.json).
CHAOS_OUTBOX_MAX_BYTES = 256 * 1024
#: and its STORM_SOCKET_SEND_BUFFER (default 128 KiB): what a stopped reader holds in the kernel before its outbox
#: fills, scaled down the same way (python -m storm_tools.chaos.sndbuf measures what a socket takes)
CHAOS_SOCKET_SEND_BUFFER = 32 * 1024


def say(message: str) -> None:
    print(f"storm chaos: {message}", file=sys.stderr, flush=True)


def experiment_files(names: list[str], run_all: bool) -> list[Path]:
    if run_all:
        return sorted(EXPERIMENTS_DIR.glob("*.json"))
    out = []
    for name in names:
        path = Path(name)
        if not path.is_file():
            path = EXPERIMENTS_DIR / (name if name.endswith(".json") else f"{name}.json")
        if not path.is_file():
            raise ctx.ChaosContextError(f"no experiment {name!r} (neither a file nor chaos-experiments/{name}.json)")
        out.append(path)
    return out


def _host_port(value: str) -> tuple[str, int]:
    """127.0.0.1:6650 out of a URL (pulsar://, postgresql+asyncpg://user:pw@host:port/db) or host:port."""
    rest = value.split("://", 1)[-1].split("@", 1)[-1].split("/", 1)[0].split(",", 1)[0]
    host, _, port = rest.rpartition(":")
    return host, int(port)


def _with_host_port(value: str, port: int) -> str:
    host, old = _host_port(value)
    return value.replace(f"{host}:{old}", f"127.0.0.1:{port}", 1)


def plan_links(children: list[str], upstreams: dict[str, str], ports: list[int], direct: tuple[str, ...] = ()) -> tuple[
        list[tuple[str, str, str]], dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """Proxies (name, listen, upstream), the links per child, and the --child-env settings that point each
    child at its proxies.  ``upstreams`` holds the services' URLs (pg, pulsar, hazelcast); the services in
    ``direct`` get no proxy (their links cannot be faulted; for comparing a run with and without the proxy)."""
    proxies: list[tuple[str, str, str]] = []
    links: dict[str, dict[str, str]] = {}
    env: dict[str, dict[str, str]] = {}
    keys = {"pg": "STORM_DATABASE_URL", "pulsar": "STORM_PULSAR_URL", "hazelcast": "STORM_HAZELCAST_MEMBERS"}
    free = iter(ports)
    for name in children:
        links[name], env[name] = {}, {}
        for service in ctx.SERVICES:
            if service in direct:
                continue
            port = next(free)
            host, upstream_port = _host_port(upstreams[service])
            proxy = f"storm-{name}.{service}"
            proxies.append((proxy, f"127.0.0.1:{port}", f"{host}:{upstream_port}"))
            links[name][service] = proxy
            env[name][keys[service]] = _with_host_port(upstreams[service], port)
    return proxies, links, env


def _service_env(root: Path) -> dict[str, str]:
    """The services' addresses: ``scripts/services.sh env all``, with any STORM_TEST_* of the environment on
    top (what the test fixtures read, tests/conftest.py)."""
    out = subprocess.run(["bash", str(root / "scripts" / "services.sh"), "env", "all"], capture_output=True,  # noqa: S603,S607
                         text=True, check=True, timeout=60)
    found = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    return {**found, **{k: v for k, v in os.environ.items() if k.startswith("STORM_TEST_") and v}}


class Session:
    """Everything `storm chaos run` starts, stopped by :meth:`close` whatever happened."""

    def __init__(self, args: argparse.Namespace, report: Path) -> None:
        self.args, self.report = args, report
        self.cluster: subprocess.Popen[bytes] | None = None
        self.cluster_log: IO[bytes] | None = None
        self.toxiproxy: Toxiproxy | None = None
        self.proxies: list[str] = []
        self.database_url = ""
        self.pg_url = ""
        self.context_path = report / "context.json"
        self.metrics_socket: socket.socket | None = None  # holds the metrics port until a receiver takes it
        self.workspace_prefix = f"chaos-{uuid.uuid4().hex[:6]}-"

    def open(self) -> None:
        from db.admin import create_database

        if not self.args.no_services:
            say("starting the services (scripts/services.sh up all)")
            subprocess.run(["bash", str(ctx.ROOT / "scripts" / "services.sh"), "up", "all"], check=True,  # noqa: S603,S607
                           stdout=sys.stderr, timeout=900)
        services = _service_env(ctx.ROOT)
        self.pg_url = services["STORM_TEST_PG_URL"]
        self.database_url = asyncio.run(create_database(self.pg_url, f"storm_chaos_{uuid.uuid4().hex[:10]}"))
        upstreams = {"pg": self.database_url, "pulsar": services["STORM_TEST_PULSAR_URL"],
                     "hazelcast": services["STORM_TEST_HAZELCAST_MEMBERS"]}
        gateways = self.args.gateways
        names = [f"gateway-{i}" for i in range(1, gateways + 1)] + ["api", "consumers"]
        ports = free_ports(len(names) * len(ctx.SERVICES) + gateways + 2)
        # bound now and held: a port only looked up and released here was, minutes later (storm day provisions
        # 100 000 users first), the ephemeral source port of some process's DogStatsD client (EADDRINUSE)
        self.metrics_socket = _reserve_udp_port()
        metrics_port = int(self.metrics_socket.getsockname()[1])
        proxies, links, child_env = plan_links(names, upstreams, ports[: len(names) * len(ctx.SERVICES)],
                                               tuple(self.args.direct))
        self.toxiproxy = Toxiproxy(services["STORM_TEST_TOXIPROXY_URL"])
        for name, listen, upstream in proxies:
            self.toxiproxy.delete(name)
            self.toxiproxy.create(name, listen, upstream)
            self.proxies.append(name)
        say(f"{len(proxies)} Toxiproxy proxies, one per (process, service) link")
        env_file = self.report / "child-env.json"
        env_file.write_text(json.dumps(child_env, indent=2))
        state_file = self.report / "cluster-state.json"
        role_ports = ports[len(names) * len(ctx.SERVICES):]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "STORM_PULSAR_URL": services["STORM_TEST_PULSAR_URL"],
               "STORM_PULSAR_ADMIN_URL": services["STORM_TEST_PULSAR_ADMIN_URL"],
               "STORM_HAZELCAST_MEMBERS": services["STORM_TEST_HAZELCAST_MEMBERS"], "STORM_IDENTITY": "dev",
               "STORM_DRAIN_TIMEOUT_S": "5", "STORM_MAX_CONNECTIONS_PER_IP": "5000",
               "STORM_PUBLISH_RATE": "100", "STORM_PUBLISH_BURST": "200",
               # a slow reader's outbox overflows (4008) within the slow-consumers experiment: 256 KiB, not 4 MiB
               "STORM_OUTBOX_MAX_BYTES": str(CHAOS_OUTBOX_MAX_BYTES),
               "STORM_SOCKET_SEND_BUFFER": str(CHAOS_SOCKET_SEND_BUFFER),
               # the driver's workspaces are chaos-<run>-*; other deployments (tests, another chaos run) share
               # this Pulsar and its work subscription
               "STORM_CONSUMER_WORKSPACE_PREFIX": self.workspace_prefix,
               # metrics to the driver's DogStatsD receiver, for the SLOs (storm_tools/chaos/slo_seam.py)
               "DD_AGENT_HOST": "127.0.0.1", "DD_DOGSTATSD_PORT": str(metrics_port),
               "STORM_METRICS_INTERVAL_S": "1"}
        cmd = [sys.executable, "-m", "storm_cli", "cluster", "--no-services", "--no-seed",
               "--database-url", self.database_url, "--gateway-ports", ",".join(map(str, role_ports[:gateways])),
               "--api-port", str(role_ports[gateways]), "--consumers-port", str(role_ports[gateways + 1]),
               "--state-file", str(state_file), "--child-env", str(env_file)]
        self.cluster_log = (self.report / "cluster.log").open("ab")
        say(f"starting storm cluster ({gateways} gateways; log {self.report / 'cluster.log'})")
        self.cluster = subprocess.Popen(cmd, cwd=ctx.ROOT, env=env, stdin=subprocess.DEVNULL,  # noqa: S603
                                        stdout=self.cluster_log, stderr=subprocess.STDOUT)
        from storm.config import Config

        self.context_path.write_text(json.dumps({
            "state_file": str(state_file), "toxiproxy_url": services["STORM_TEST_TOXIPROXY_URL"], "links": links,
            "database_url": self.database_url, "secret": Config.from_env(env).dev_secret,
            "metrics_port": metrics_port, "workspace_prefix": self.workspace_prefix,
            "services_script": str(ctx.ROOT / "scripts" / "services.sh")}, indent=2))
        os.environ["STORM_CHAOS_CONTEXT"] = str(self.context_path)
        deadline = time.monotonic() + self.args.start_timeout
        while not _ready(state_file) or not _all_serving():
            if self.cluster.poll() is not None:
                raise ctx.ChaosContextError(f"storm cluster exited with {self.cluster.returncode}; see "
                                            f"{self.report / 'cluster.log'}")
            if time.monotonic() > deadline:
                raise ctx.ChaosContextError(f"storm cluster not serving within {self.args.start_timeout:.0f} s; "
                                            f"see {self.report / 'cluster.log'}")
            time.sleep(0.5)
        say("cluster serving: " + ", ".join(f"{c.name} pid {c.pid} :{c.port}" for c in ctx.children()))

    def take_metrics_socket(self) -> socket.socket | None:
        """The UDP socket bound to the metrics port since :meth:`open`, emptied of what arrived before, for a
        receiver in this process (storm day); the caller owns it from here."""
        sock, self.metrics_socket = self.metrics_socket, None
        if sock is not None:
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while True:
                    sock.recv(65535)
        return sock

    def release_metrics_port(self) -> None:
        """Free the metrics port for a receiver in another process (the experiments' driver)."""
        if self.metrics_socket is not None:
            self.metrics_socket.close()
            self.metrics_socket = None

    def between(self) -> None:
        """Put back what an experiment may have left broken (a service it stopped is started again even with
        --no-services: that only says they were running before)."""
        from storm_tools.chaos.actions import restore_links

        with contextlib.suppress(Exception):
            restore_links()
        subprocess.run(["bash", str(ctx.ROOT / "scripts" / "services.sh"), "up", "all"], check=False,  # noqa: S603,S607
                       stdout=sys.stderr, timeout=900)
        with contextlib.suppress(ctx.ChaosContextError):
            ctx.wait_serving(timeout_s=120)

    def close(self) -> None:
        from db.admin import drop_database
        from storm_tools.chaos.probes import delete_leftover

        self.release_metrics_port()

        for run_dir in sorted(p for p in self.report.iterdir() if p.is_dir()):
            with contextlib.suppress(Exception):  # best effort: the API may be what failed
                delete_leftover(run_dir)
        if self.cluster is not None and self.cluster.poll() is None:
            say(f"stopping storm cluster (pid {self.cluster.pid})")
            self.cluster.send_signal(signal.SIGTERM)
            try:
                self.cluster.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.cluster.kill()
                self.cluster.wait(timeout=30)
        if self.cluster_log is not None:
            self.cluster_log.close()
        if self.toxiproxy is not None:
            for name in self.proxies:
                with contextlib.suppress(Exception):
                    self.toxiproxy.delete(name)
        if self.database_url:
            with contextlib.suppress(Exception):
                asyncio.run(drop_database(self.database_url))


def _reserve_udp_port() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    return sock


def _ready(state_file: Path) -> bool:
    """The supervisor saw every child answer /healthz: from then on a killed child is restarted, not a start
    failure that stops the cluster (storm_cli/cluster.py, "ready" in the state file)."""
    try:
        return bool(json.loads(state_file.read_text()).get("ready"))
    except (OSError, ValueError, AttributeError):
        return False


def _all_serving() -> bool:
    try:
        return all(ctx.healthy(c) for c in ctx.children())
    except (ctx.ChaosContextError, KeyError, ValueError):
        return False


def run_experiment(path: Path, report: Path, timeout_s: float, env_extra: dict[str, str]) -> dict[str, Any]:
    name = path.stem
    out = report / name
    out.mkdir(parents=True, exist_ok=True)
    journal = out / "journal.json"
    env = {**os.environ, **env_extra, "STORM_CHAOS_RUN_DIR": str(out)}
    chaos = str(Path(sys.executable).with_name("chaos"))
    say(f"{name}: chaos run {path.relative_to(ctx.ROOT) if path.is_relative_to(ctx.ROOT) else path}")
    began = time.monotonic()
    with (out / "chaos-output.log").open("wb") as log:
        proc = subprocess.Popen([chaos, "--log-file", str(out / "chaostoolkit.log"), "run", "--journal-path",  # noqa: S603
                                 str(journal), "--rollback-strategy", "always", str(path)],
                                cwd=ctx.ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            say(f"{name}: over its {timeout_s:.0f} s budget; interrupting it")
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    row = summarize(name, journal, out, time.monotonic() - began)
    say(f"{name}: status {row['status']}, deviated {row['deviated']}, lost {row['lost']}, "
        f"dup {row['duplicates']}, inversions {row['inversions']}, recover {row['time_to_recover_s']} s")
    return row


def journal_held(journal: dict[str, Any]) -> bool:
    """The experiment ran to the end and its steady state held before and after (Chaos Toolkit leaves
    ``deviated`` false when the steady state before already failed and nothing ran)."""
    states = journal.get("steady_states") or {}
    return (journal.get("status") == "completed" and journal.get("deviated") is False
            and (states.get("before") or {}).get("steady_state_met") is True
            and (states.get("after") or {}).get("steady_state_met") is True)


def summarize(name: str, journal_path: Path, out: Path, took_s: float) -> dict[str, Any]:
    """One row of the summary, from the journal and the run folder's verdict."""
    try:
        journal = json.loads(journal_path.read_text())
    except (OSError, ValueError):
        journal = {"status": "no journal", "deviated": None}
    verdict_path = out / "verdict-after.json"
    verdict = json.loads(verdict_path.read_text()) if verdict_path.exists() else {}
    figures = verdict.get("figures", {})
    states = journal.get("steady_states") or {}
    return {
        "experiment": name, "status": journal.get("status"), "deviated": journal.get("deviated"),
        "before_met": (states.get("before") or {}).get("steady_state_met"),
        "after_met": (states.get("after") or {}).get("steady_state_met"),
        "ok": journal_held(journal),
        "slos": {v["slo"]: {"value": v["value"], "target": v["target"], "ok": v["ok"]}
                 for v in verdict.get("slos", [])},
        "gated": [v["slo"] for v in verdict.get("slos", []) if v.get("judged") == "gates"],
        "integrity_ok": verdict.get("integrity_ok"),
        **{k: figures.get(k) for k in ("published", "acked", "lost", "duplicates", "inversions", "not_stored",
                                       "unacked", "ack_p99_ms", "deliver_p99_ms", "ack_p99_ms_at_fault",
                                       "in_flight_at_fault", "reconnects", "time_to_recover_s")},
        "slow_closed": figures.get("slow_closed"), "took_s": round(took_s, 1), "journal": str(journal_path),
    }


MARKS = {True: "✔", False: "✘", None: "·"}


def _pct(value: float | None) -> str:
    return "no data" if value is None else f"{value:.2f}"


def markdown(rows: list[dict[str, Any]], report: Path) -> str:
    passed = sum(1 for r in rows if r["ok"])
    lines = [f"# STORM chaos matrix: {passed} of {len(rows)} experiments held", "",
             f"Report folder `{report}`; one folder per experiment with its Chaos Toolkit journal.", "",
             "| Experiment | Verdict | SLOs (value / target) | Lost | Dup | Inversions | Not stored | "
             "Ack p99 ms (at fault) | Recover s | Took s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        slos = "<br>".join(f"{MARKS[v['ok']]} {k} {_pct(v['value'])} / {v['target']:g} %"
                           + ("" if k in r["gated"] else " (reported)") for k, v in r["slos"].items()) or "—"
        verdict = "held" if r["ok"] else (f"{r['status']}, deviated={r['deviated']}, steady state before "
                                          f"{r['before_met']}, after {r['after_met']}")
        lines.append(f"| {r['experiment']} | {verdict} | {slos} | {r['lost']} | {r['duplicates']} | "
                     f"{r['inversions']} | {r['not_stored']} | {r['ack_p99_ms']} ({r['ack_p99_ms_at_fault']}) | "
                     f"{r['time_to_recover_s']} | {r['took_s']} |")
    return "\n".join(lines) + "\n"


def cmd_chaos(args: argparse.Namespace) -> int:
    try:
        files = experiment_files(args.experiments, args.all)
    except ctx.ChaosContextError as exc:
        print(f"storm chaos: {exc}", file=sys.stderr)
        return 2
    if not files:
        print("storm chaos: name experiments or --all", file=sys.stderr)
        return 2
    report = Path(args.report or ctx.ROOT / "reports" / "chaos" / time.strftime("%Y%m%d-%H%M%S")).resolve()
    report.mkdir(parents=True, exist_ok=True)
    env_extra = {"STORM_CHAOS_CONNECTIONS": str(args.connections), "STORM_CHAOS_DURATION_S": str(args.duration)}
    session = Session(args, report)
    rows: list[dict[str, Any]] = []
    try:
        session.open()
        session.release_metrics_port()  # the experiments' driver receives the metrics in its own process
        for path in files:
            rows.append(run_experiment(path, report, args.experiment_timeout, env_extra))
            session.between()
    except (ctx.ChaosContextError, OSError, subprocess.SubprocessError) as exc:
        print(f"storm chaos: {exc}", file=sys.stderr)
        return 2
    finally:
        session.close()
        summary = {"report": str(report), "experiments": rows, "held": sum(1 for r in rows if r["ok"]),
                   "total": len(rows)}
        (report / "summary.json").write_text(json.dumps(summary, indent=2))
        (report / "summary.md").write_text(markdown(rows, report))
    print(json.dumps(summary), flush=True)
    say(f"summary: {report / 'summary.md'}")
    return 0 if rows and all(r["ok"] for r in rows) else 1


def add_arguments(sub: Any) -> None:
    chaos = sub.add_parser("chaos", help="run chaos experiments (Chaos Toolkit) on a cluster it starts")
    chaos_sub = chaos.add_subparsers(dest="chaos_command", required=True)
    run = chaos_sub.add_parser("run", help="start the topology, run experiments, write journals and a summary")
    run.add_argument("experiments", nargs="*", help="files, or names in chaos-experiments/ (e.g. gateway-sigkill)")
    run.add_argument("--all", action="store_true", help="every experiment in chaos-experiments/")
    run.add_argument("--report", default="", help="report folder (default reports/chaos/<time>)")
    run.add_argument("--gateways", type=int, default=2)
    run.add_argument("--connections", type=int, default=200, help="the driver's clients (channels of 10)")
    run.add_argument("--duration", type=float, default=60.0, help="seconds of load per experiment's method")
    run.add_argument("--experiment-timeout", type=float, default=420.0, help="seconds before one is interrupted")
    run.add_argument("--start-timeout", type=float, default=120.0)
    run.add_argument("--no-services", action="store_true", help="the services run already (skip services.sh up)")
    run.add_argument("--direct", type=lambda text: [s for s in text.split(",") if s], default=[],
                     help="services whose links bypass Toxiproxy (comma-separated: pg,pulsar,hazelcast)")
    run.set_defaults(fn=cmd_chaos)
