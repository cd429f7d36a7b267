"""STORM as separate processes: ``storm serve gateway|api|consumers`` and ``storm cluster``.

``storm serve <role>`` runs one role in one process, on the adapters the environment selects
(``STORM_BROKER``, ``STORM_CACHE``, ``STORM_DATABASE_URL``, ...):

* ``gateway``    the WebSocket gateway and the chat page (no tenants API), ``GET /healthz``;
* ``api``        the tenants REST API (tenants/app.py), ``GET /healthz``;
* ``consumers``  the persistence and webhook workers, with a small HTTP server for ``GET /healthz`` only.

``storm cluster`` (``make run-cluster``) is the local multi-process deployment: it starts the services
(``scripts/services.sh up``: PostgreSQL, Pulsar, Hazelcast), creates and migrates the ``storm_cluster``
database, then starts two gateways (:8001, :8002; ``--gateways N`` for N), the tenants API (:8003) and the
consumers (:8004) as child processes on Pulsar + Hazelcast + PostgreSQL, prints each address and PID, and on
Ctrl-C/SIGTERM stops them by PID in drain order (gateways, API, consumers last), each with SIGTERM (a graceful
drain) and SIGKILL only past the drain budget.  The services stay up (``make services-down`` stops them).

It supervises: a child that exits on its own (a SIGKILLed gateway, a crash) is logged and started again after
a backoff (:func:`restart_delay`: 0.5 s doubling to 30 s, back to 0.5 s once a run lasted 60 s) while the
others keep serving.  The topology (roles, PIDs, ports, restarts) is written to a state file
(``--state-file``, default ``.services/storm-cluster.json``) at start and after every restart, for the chaos
experiments (storm_tools/chaos/).  ``--child-env FILE`` overrides settings per child (the chaos runner points
each child at its Toxiproxy proxies).  See docs/operations.md.
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
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from db.admin import CLUSTER_DATABASE, cluster_database_url
from storm.config import Config

if TYPE_CHECKING:
    from quart import Quart

    from storm.bootstrap import Services

ROLES = ("gateway", "api", "consumers")
ROOT = Path(__file__).resolve().parent.parent
SERVICES_SCRIPT = ROOT / "scripts" / "services.sh"
HEALTH_TIMEOUT_S = 90.0
KILL_GRACE_S = 5.0  # on top of STORM_DRAIN_TIMEOUT_S before a child is killed
DEFAULT_STATE_FILE = ROOT / ".services" / "storm-cluster.json"
RESTART_BASE_S = 0.5  # first restart delay of a child that exited on its own; doubles per quick exit
RESTART_MAX_S = 30.0
RESTART_RESET_S = 60.0  # a run at least this long resets the backoff


class ClusterError(Exception):
    """Something `storm cluster` needs is missing or failed; the message says what."""


# --- storm serve <role> -------------------------------------------------------------------------------


def workspace_filter(prefix: str) -> Callable[[str], bool]:
    """STORM_CONSUMER_WORKSPACE_PREFIX as the broker's work filter: the workspaces whose slug starts with it."""
    return lambda slug: slug.startswith(prefix)


def create_consumers_app(services: Services) -> Quart:
    """The persistence worker as a process: the worker's lifecycle on the app's, plus ``GET /healthz``."""
    from quart import Quart

    from consumers.persistence import PersistenceWorker
    from consumers.relay import RelayWorker
    from consumers.webhooks import WebhookWorker

    app = Quart("storm.consumers")
    worker = PersistenceWorker(services)
    webhooks = WebhookWorker(services)
    # STORM_BROADCAST=relay: the gateways hear channels through one broadcast log per workspace (ADR 0013)
    relay = RelayWorker(services.broker, services.config) if services.config.broadcast == "relay" else None
    app.extensions["storm"] = services

    from storm.ports.broker import WorkScope

    prefix = services.config.consumer_workspace_prefix
    # Another deployment on the same Pulsar would otherwise share (and steal) our work subscription.
    if prefix and isinstance(services.broker, WorkScope):
        services.broker.limit_work_to(workspace_filter(prefix))

    @app.before_serving
    async def _start() -> None:
        await services.start()
        await worker.start()
        await webhooks.start()
        if relay is not None:
            await relay.start()

    @app.after_serving
    async def _stop() -> None:
        try:
            if relay is not None:
                await relay.stop()  # waits for the batch in flight; the rest goes to another relay
            await webhooks.stop()  # waits for the records in flight (up to STORM_DRAIN_TIMEOUT_S)
            await worker.stop()  # waits for the batch in flight (up to STORM_DRAIN_TIMEOUT_S)
        finally:
            await services.stop()

    @app.get("/healthz")
    async def healthz() -> tuple[dict[str, Any], int]:
        checks = await services.health_checks()
        ok = all(value == "ok" for value in checks.values())
        return {"status": "ok" if ok else "unavailable", "checks": checks, "stats": dict(worker.stats),
                "webhooks": dict(webhooks.stats), **({"relay": dict(relay.stats)} if relay else {})}, (
            200 if ok else 503)

    return app


def build_role_app(role: str, services: Services) -> Quart:
    if role == "gateway":
        from storm_cli.apps import gateway_app

        return gateway_app(services)
    if role == "api":
        from tenants.app import create_app as create_tenants_app

        return create_tenants_app(services)
    if role == "consumers":
        return create_consumers_app(services)
    raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.serve import run, serve_app
    from storm.bootstrap import build_services

    overrides: dict[str, Any] = {}
    if args.host:
        overrides["host"] = args.host
    if args.port:
        overrides["port"] = args.port
    cfg = Config.from_env(**overrides)
    services = build_services(cfg, role=args.role)  # the role is the metrics' and logs' service tag
    app = build_role_app(args.role, services)

    @app.before_serving  # registered last, so it runs once the role's own start-up has finished
    async def _announce() -> None:
        print(f"storm {args.role} ready on http://{cfg.host}:{cfg.port} (pid {os.getpid()}, broker {cfg.broker}, "
              f"cache {cfg.cache})", flush=True)

    async def main() -> None:
        stop = asyncio.Event()
        watcher = None
        if args.supervisor_pid:
            watcher = asyncio.get_running_loop().create_task(_watch_supervisor(args.supervisor_pid, stop))
        try:
            await serve_app(app, cfg, stop=stop)
        finally:
            if watcher is not None:
                watcher.cancel()

    run(main)
    with contextlib.suppress(OSError):
        print(f"storm {args.role} stopped (pid {os.getpid()})", flush=True)
    return 0


async def _watch_supervisor(pid: int, stop: asyncio.Event) -> None:
    """Drain and exit when `storm cluster` (our parent) is gone, even killed with SIGKILL: the children run in
    sessions of their own, so nothing else would stop them."""
    while os.getppid() == pid:
        await asyncio.sleep(1.0)
    stop.set()
    with contextlib.suppress(OSError):  # our stdout was the supervisor's pipe: probably closed now
        print(f"storm serve: supervisor (pid {pid}) is gone; stopping", flush=True)


# --- storm cluster ----------------------------------------------------------------------------------------


@dataclass
class Child:
    name: str
    role: str
    port: int
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    quick_exits: int = 0  # exits in a row that came sooner than RESTART_RESET_S after their start
    started_at: float = 0.0  # time.monotonic() of the current run
    restart_at: float | None = None  # when it exited on its own: the time.monotonic() to start it again
    last_exit: int | None = None
    overrides: tuple[str, ...] = ()  # the settings --child-env changed for this child (names only)

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0


def restart_delay(quick_exits: int, base_s: float = RESTART_BASE_S, max_s: float = RESTART_MAX_S) -> float:
    """The backoff before restarting a child that exited on its own: ``base_s`` after its first quick exit,
    doubled for each further one in a row, at most ``max_s``."""
    if quick_exits < 1:
        raise ValueError(f"quick_exits counts the exit being handled, so it is at least 1, got {quick_exits}")
    return float(min(max_s, base_s * 2 ** min(quick_exits - 1, 30)))


def _services(action: str) -> str:
    if not SERVICES_SCRIPT.is_file():
        raise ClusterError(f"{SERVICES_SCRIPT} is missing: `storm cluster` runs from a source checkout; "
                           "use --no-services and point STORM_* at your own services")
    result = subprocess.run(  # noqa: S603 - our own script, fixed arguments
        ["bash", str(SERVICES_SCRIPT), action, "all"],  # noqa: S607 - bash from PATH, as `make` runs it
        cwd=ROOT, check=False, stdout=subprocess.PIPE if action == "env" else None, text=True)
    if result.returncode != 0:
        raise ClusterError(f"scripts/services.sh {action} failed (exit {result.returncode}); see its output above")
    return result.stdout or ""


def _parse_env_lines(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {key.strip(): value.strip() for key, value in pairs}


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own http://host:port
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _pump(prefix: str, stream: IO[bytes], out: IO[str], lock: threading.Lock) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip("\n")
        with lock:
            out.write(f"{prefix} {line}\n")
            out.flush()
    stream.close()


class Cluster:
    """The STORM child processes of `storm cluster`: start, watch, stop (by PID, in drain order)."""

    def __init__(self, children: list[Child], host: str, *, drain_timeout_s: float, out: IO[str],
                 state_file: Path | None = None) -> None:
        self.children = children
        self.host = host
        self.drain_timeout_s = drain_timeout_s
        self.out = out
        self.state_file = state_file
        self.ready = False  # every child answered /healthz once (wait_healthy): from then on exits are restarted
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def say(self, message: str) -> None:
        with self._lock:
            self.out.write(f"storm cluster: {message}\n")
            self.out.flush()

    def start(self) -> None:
        busy = [c for c in self.children if not _port_free(self.host, c.port)]
        if busy:
            raise ClusterError("port(s) already in use: " + ", ".join(f"{c.port} ({c.name})" for c in busy)
                               + "; stop what holds them or choose others (storm cluster --help)")
        for child in self.children:
            self._spawn(child)
            self.say(f"started {child.name} (pid {child.pid})")
        self.write_state()

    def _spawn(self, child: Child) -> None:
        width = max(len(c.name) for c in self.children)
        cmd = [sys.executable, "-m", "storm_cli", "serve", child.role, "--host", self.host,
               "--port", str(child.port), "--supervisor-pid", str(os.getpid())]
        # A session of its own: Ctrl-C in the terminal reaches only us, and we stop the children in order.
        child.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            cmd, cwd=ROOT, env=child.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, start_new_session=True)
        child.started_at = time.monotonic()
        child.restart_at = None
        assert child.proc.stdout is not None
        thread = threading.Thread(target=_pump, args=(f"[{child.name:<{width}}]", child.proc.stdout, self.out,
                                                      self._lock), daemon=True)
        thread.start()
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]

    def state(self) -> dict[str, Any]:
        """What the state file holds: the supervisor, and per child its role, PID, port and restarts."""
        return {
            "supervisor_pid": os.getpid(), "host": self.host, "updated_at": time.time(), "ready": self.ready,
            "children": [{"name": c.name, "role": c.role, "port": c.port,
                          "pid": c.pid if c.proc is not None and c.proc.poll() is None else 0,
                          "restarts": c.restarts, "last_exit": c.last_exit, "overrides": list(c.overrides)}
                         for c in self.children],
        }

    def write_state(self) -> None:
        if self.state_file is None:
            return
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        partial = self.state_file.with_name(self.state_file.name + ".partial")
        partial.write_text(json.dumps(self.state(), indent=2) + "\n")
        partial.replace(self.state_file)  # readers never see half a file

    def wait_healthy(self, timeout_s: float, stop: threading.Event) -> None:
        deadline = time.monotonic() + timeout_s
        pending = list(self.children)
        while pending and not stop.is_set():
            for child in list(pending):
                assert child.proc is not None
                if child.proc.poll() is not None:
                    raise ClusterError(f"{child.name} (pid {child.pid}) exited with {child.proc.returncode} "
                                       "before answering /healthz; see its output above")
                if _healthy(f"http://{self.host}:{child.port}/healthz"):
                    pending.remove(child)
            if pending and time.monotonic() > deadline:
                names = ", ".join(c.name for c in pending)
                raise ClusterError(f"{names} did not answer /healthz within {timeout_s:.0f} s")
            if pending:
                time.sleep(0.25)
        if not pending:
            # Until now a child that exits is a start failure (the whole cluster stops); from here on it is
            # restarted.  Whoever acts on the topology (chaos actions, tests) waits for "ready": a child killed
            # before the supervisor saw it answer would otherwise stop the cluster.
            self.ready = True
            self.write_state()

    def watch(self, stop: threading.Event) -> int:
        """Supervise until ``stop`` is set (signal): a child that exits is started again after its backoff
        while the others keep serving.  The exit code for `storm cluster`."""
        while not stop.wait(0.2):
            self.supervise_once(time.monotonic())
        return 0

    def supervise_once(self, now: float) -> None:
        """One pass: note the children that exited (and when to restart them), restart those whose time came."""
        changed = False
        for child in self.children:
            assert child.proc is not None
            if child.restart_at is None:
                code = child.proc.poll()
                if code is None:
                    continue
                child.last_exit = code
                child.quick_exits = child.quick_exits + 1 if now - child.started_at < RESTART_RESET_S else 1
                delay = restart_delay(child.quick_exits)
                child.restart_at = now + delay
                self.say(f"{child.name} (pid {child.pid}) exited with {code}; restarting it in {delay:.1f} s "
                         f"(the others keep serving)")
                changed = True
            elif now >= child.restart_at:
                old = child.pid
                self._spawn(child)
                child.restarts += 1
                self.say(f"restarted {child.name} (pid {child.pid}, was {old}; restart #{child.restarts})")
                changed = True
        if changed:
            self.write_state()

    def stop(self) -> None:
        """SIGTERM by PID in drain order: gateways, then the API, then the consumers (which persist what the
        gateways published last); SIGKILL whatever outlives its drain budget."""
        for role in ("gateway", "api", "consumers"):
            group = [c for c in self.children if c.role == role and c.proc is not None and c.proc.poll() is None]
            for child in group:
                self.say(f"stopping {child.name} (pid {child.pid})")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGTERM)
            for child in group:
                assert child.proc is not None
                try:
                    child.proc.wait(timeout=self.drain_timeout_s + KILL_GRACE_S)
                except subprocess.TimeoutExpired:
                    self.say(f"{child.name} (pid {child.pid}) still running after its drain; killing it")
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(child.pid, signal.SIGKILL)
                    child.proc.wait(timeout=KILL_GRACE_S)
                self.say(f"{child.name} stopped (exit {child.proc.returncode})")
        for thread in self._threads:
            thread.join(timeout=2)
        if self.state_file is not None:
            with contextlib.suppress(OSError):
                self.state_file.unlink()


def port_list(text: str) -> list[int]:
    """argparse type of --gateway-ports: ``8001,8002`` -> [8001, 8002]."""
    try:
        ports = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated port numbers, got {text!r}") from None
    if not ports or any(not 0 < port < 65536 for port in ports) or len(set(ports)) != len(ports):
        raise argparse.ArgumentTypeError(f"expected distinct ports between 1 and 65535, got {text!r}")
    return ports


def gateway_ports(args: argparse.Namespace) -> list[int]:
    """--gateway-ports as given, else ``--gateways`` ports counted from 8001 skipping the API's and the
    consumers' ports."""
    count: int | None = args.gateways
    if count is not None and count < 1:
        raise ClusterError(f"--gateways must be at least 1, got {count}")
    if args.gateway_ports is not None:
        ports: list[int] = args.gateway_ports
        if count is not None and count != len(ports):
            raise ClusterError(f"--gateways {count} but --gateway-ports lists {len(ports)} port(s)")
        return ports
    taken = {args.api_port, args.consumers_port}
    candidates = (port for port in range(8001, 65536) if port not in taken)
    return [next(candidates) for _ in range(2 if count is None else count)]


def load_child_env(path: Path, names: list[str]) -> dict[str, dict[str, str]]:
    """--child-env: a JSON object ``{"*": {KEY: VALUE}, "<child name>": {KEY: VALUE}}``; ``*`` applies to every
    child, a child's own entry after it.  Refuses anything else with a message that says what."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ClusterError(f"--child-env {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ClusterError(f"--child-env {path}: expected a JSON object of objects, got {type(data).__name__}")
    unknown = sorted(set(data) - {"*", *names})
    if unknown:
        raise ClusterError(f"--child-env {path}: unknown child(ren) {', '.join(unknown)}; "
                           f"expected * or one of {', '.join(names)}")
    for key, values in data.items():
        if not isinstance(values, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                   for k, v in values.items()):
            raise ClusterError(f"--child-env {path}: {key!r} must map setting names to strings")
    return data


def apply_child_env(children: list[Child], overrides: dict[str, dict[str, str]]) -> None:
    for child in children:
        changed = {**overrides.get("*", {}), **overrides.get(child.name, {})}
        child.env.update(changed)
        child.overrides = tuple(sorted(changed))


def plan_children(args: argparse.Namespace, base_env: dict[str, str]) -> list[Child]:
    children = []
    for index, port in enumerate(gateway_ports(args), start=1):
        env = {**base_env, "STORM_GATEWAY_ID": f"gateway-{index}",
               # One process seeds the demo workspace (idempotent, but once is enough).
               "STORM_SEED_DEMO": "true" if index == 1 and not args.no_seed else "false"}
        children.append(Child(f"gateway-{index}", "gateway", port, env))
    children.append(Child("api", "api", args.api_port, {**base_env, "STORM_SEED_DEMO": "false"}))
    children.append(Child("consumers", "consumers", args.consumers_port, {**base_env, "STORM_SEED_DEMO": "false"}))
    return children


def cmd_cluster(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from db.admin import ensure_database
    from db.migrate import upgrade_async
    from gateway.serve import run

    out = sys.stdout
    env = dict(os.environ)
    env.update({"STORM_BROKER": args.broker, "STORM_CACHE": args.cache, "PYTHONUNBUFFERED": "1"})
    try:
        database_url = args.database_url
        if not args.no_services:
            print("storm cluster: starting the services (scripts/services.sh up all)", flush=True)
            _services("up")
            service_env = _parse_env_lines(_services("env"))
            env["STORM_PULSAR_URL"] = service_env["STORM_TEST_PULSAR_URL"]
            env["STORM_PULSAR_ADMIN_URL"] = service_env["STORM_TEST_PULSAR_ADMIN_URL"]
            env["STORM_HAZELCAST_MEMBERS"] = service_env["STORM_TEST_HAZELCAST_MEMBERS"]
            if not database_url:
                database_url = cluster_database_url(service_env["STORM_TEST_PG_URL"])
                if run(lambda: ensure_database(database_url)):
                    print(f"storm cluster: created database {CLUSTER_DATABASE}", flush=True)
        if database_url:
            env["STORM_DATABASE_URL"] = database_url
        cfg = Config.from_env(env)  # validates the settings every child will see
        print(f"storm cluster: migrating {cfg.database_url.split('@')[-1]}", flush=True)
        run(lambda: upgrade_async(cfg.database_url))
        children = plan_children(args, env)
        if args.child_env:
            apply_child_env(children, load_child_env(Path(args.child_env), [c.name for c in children]))
        cluster = Cluster(children, args.host, drain_timeout_s=cfg.drain_timeout_s, out=out,
                          state_file=Path(args.state_file) if args.state_file else None)
    except (ClusterError, ValueError, OSError, SQLAlchemyError) as exc:
        print(f"storm cluster: {exc}", file=sys.stderr)
        return 1

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    code = 1
    try:
        cluster.start()
        cluster.wait_healthy(args.start_timeout, stop)
        if not stop.is_set():
            _announce(cluster, cfg, args)
        if not stop.is_set():
            code = cluster.watch(stop)
    except ClusterError as exc:
        cluster.say(str(exc))
    finally:
        cluster.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    cluster.say("stopped" + ("" if code == 0 else f" (exit {code})"))
    return code


def _announce(cluster: Cluster, cfg: Config, args: argparse.Namespace) -> None:
    host = cluster.host
    lines = [f"STORM cluster is running (broker {cfg.broker}, cache {cfg.cache}, "
             f"store {cfg.database_url.split('@')[-1]}):"]
    for child in cluster.children:
        what = {"gateway": f"chat page http://{host}:{child.port}/  websocket ws://{host}:{child.port}/ws",
                "api": f"tenants API http://{host}:{child.port}/v1  (openapi: /openapi.json)",
                "consumers": f"persistence worker, health http://{host}:{child.port}/healthz"}[child.role]
        lines.append(f"  {child.name:<10} pid {child.pid:<7} {what}")
    if cfg.identity == "dev" and not args.no_seed:
        from storm.adapters.dev_identity import DevIdentity
        from storm_tools.seed import DEMO_WORKSPACE

        token = DevIdentity(cfg.dev_secret, ttl_s=cfg.token_ttl_s).issue("dev|alice", DEMO_WORKSPACE, "Alice")
        lines.append(f"  demo workspace '{DEMO_WORKSPACE}'; dev token (alice): {token}")
    lines.append("press Ctrl-C to stop the STORM processes (the services keep running: make services-down)")
    cluster.say("\n".join(lines))


def add_arguments(sub: Any) -> None:
    """Register `storm serve` and `storm cluster` on the CLI's subparsers."""
    serve = sub.add_parser("serve", help="run one role (gateway, api, consumers) as its own process")
    serve.add_argument("role", choices=ROLES)
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--supervisor-pid", type=int, default=0,
                       help="stop (drain) when this parent process is gone (set by `storm cluster`)")
    serve.set_defaults(fn=cmd_serve)

    cluster = sub.add_parser("cluster", help="services + 2 gateways, tenants API and consumers as processes")
    cluster.add_argument("--host", default="127.0.0.1")
    cluster.add_argument("--gateways", type=int, default=None,
                         help="how many gateways (default 2; ports from 8001, skipping the API's and consumers')")
    cluster.add_argument("--gateway-ports", type=port_list, default=None,
                         help="comma-separated (default 8001,8002)")
    cluster.add_argument("--api-port", type=int, default=8003)
    cluster.add_argument("--consumers-port", type=int, default=8004, help="the consumers' /healthz")
    cluster.add_argument("--broker", choices=("pulsar", "memory"), default="pulsar",
                         help="STORM_BROKER of every process (memory: each process has its own log; tests only)")
    cluster.add_argument("--cache", choices=("hazelcast", "memory"), default="hazelcast",
                         help="STORM_CACHE of every process (memory: per process; tests only)")
    cluster.add_argument("--database-url", default="",
                         help=f"default: the services' PostgreSQL, database {CLUSTER_DATABASE} (created)")
    cluster.add_argument("--no-services", action="store_true",
                         help="do not run scripts/services.sh; use the STORM_* settings of the environment")
    cluster.add_argument("--no-seed", action="store_true", help="do not create the demo workspace")
    cluster.add_argument("--start-timeout", type=float, default=HEALTH_TIMEOUT_S,
                         help="seconds for every process to answer /healthz")
    cluster.add_argument("--state-file", default=str(DEFAULT_STATE_FILE),
                         help="JSON with roles, PIDs, ports and restarts, rewritten on every change; removed "
                              "at stop ('' for none; default .services/storm-cluster.json)")
    cluster.add_argument("--child-env", default="",
                         help='JSON {"*": {KEY: VALUE}, "gateway-1": {...}}: settings per child, applied last')
    cluster.set_defaults(fn=cmd_cluster)
