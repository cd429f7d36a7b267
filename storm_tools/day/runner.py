"""`storm day [--profile FILE|NAME] [--users N] [--minutes M] [--report DIR] [--json]`: the launch day, replayed.

1. the profile (storm_tools/day/profile.py; ``launch`` by default, ``ci`` runs in about a minute), sized by
   ``--users``/``--minutes``;
2. the topology on the real services, through the chaos runner's session (storm_tools/chaos/runner.py): the
   services (``scripts/services.sh up all`` unless ``--no-services``), a database of its own, one Toxiproxy
   proxy per (process, service) link, ``storm cluster`` with as many gateways as :data:`GATEWAY_CONNECTIONS`
   per process allow (the 20 000 open files of a process, less its own), the API and the consumers;
3. the population (population.py) provisioned in bulk (provision.py);
4. the load fleet (fleet.py, load.py): ``ceil(users / 9 000)`` processes on their own 127.0.0.x addresses;
5. the incidents at their times, each one of the chaos actions (storm_tools/chaos/actions.py) in a thread;
6. per second: timeline.jsonl (the fleet's figures), processes.jsonl (CPU and RSS per process, every 2 s),
   metrics.jsonl (the processes' DogStatsD points, per second); the live view (live.py) meanwhile;
7. the checks (every acked message against the database: lost, duplicated, out of order) in checks.json,
   run.json and incidents.json, then storm_tools.day.report.write_report(folder) when it exists;
8. stops what it started (the fleet, the cluster, the proxies, the database, the Pulsar tenants), also on
   Ctrl-C, SIGTERM and failure.  The services stay up.

The run folder is the contract with the report (docs/storm-day.md, "The run folder").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from storm_tools.day.fleet import PER_PROCESS, Fleet, Timeline, addresses, deal, write_lines
from storm_tools.day.live import LiveView
from storm_tools.day.profile import Incident, Profile, ProfileError, load

ROOT = Path(__file__).resolve().parents[2]
GATEWAY_CONNECTIONS = 18000  # per gateway process: 20 000 open files less its services' and listening sockets
SAMPLE_EVERY_S = 2.0


def topology(users: int, gateways: int | None = None) -> dict[str, int]:
    """The processes a run of ``users`` starts. Gateways are N+1: when one is lost (the gateway SIGKILL of the
    profiles, a deploy) the survivors still hold every user below their connection cap."""
    return {"gateways": gateways or max(2, math.ceil(users / GATEWAY_CONNECTIONS) + 1), "consumers": 1, "api": 1,
            "load_processes": max(1, math.ceil(users / PER_PROCESS))}


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _machine() -> dict[str, Any]:
    import psutil

    return {"cores": os.cpu_count(), "mem_gib": round(psutil.virtual_memory().total / 2**30, 1)}


def _raise_interrupt(*_: Any) -> None:
    raise KeyboardInterrupt


class Run:
    """One `storm day` run: what it started, what it measured; :meth:`close` stops everything."""

    def __init__(self, args: argparse.Namespace, profile: Profile, profile_file: Path, report: Path) -> None:
        self.args, self.profile, self.report = args, profile, report
        self.topo = topology(profile.users, args.gateways)
        self.info: dict[str, Any] = {
            "profile": profile.name, "profile_file": str(profile_file), "users": profile.users,
            "minutes": profile.minutes, "started_at": _now_iso(), "ended_at": None, "status": "failed",
            "error": None, "machine": _machine(), "topology": self.topo,
            "offered": {"msgs_per_s": round(profile.offered_msgs_per_s(), 2), "note": self._offered_note()},
            "phases": [{"name": n, "start_t": s, "end_t": e} for n, s, e in profile.phase_bounds()],
        }
        self.session: Any = None
        self.incidents: list[dict[str, Any]] = []
        self.view = LiveView(f"storm day: {profile.name}, {profile.users} users")

    def _offered_note(self) -> str:
        tr = self.profile.traffic
        return (f"users x active_share x messages per active user per minute / 60 + announcements = "
                f"{self.profile.users} x {tr.active_share:g} x {tr.messages_per_active_user_per_min:g} / 60 + "
                f"{tr.workspaces} x {tr.announcements_per_min:g} / 60; typing {tr.typing_per_message:g} and "
                f"reactions {tr.reactions_per_message:g} per message on top. The profile file says why these "
                "figures: what two shared cores hold beside the connections.")

    # -- the topology -----------------------------------------------------------------------------------------
    def open(self) -> None:
        from storm_tools.chaos.runner import Session

        tr = self.profile.traffic
        # settings every STORM process of the run inherits (the session passes the environment on)
        os.environ.update({
            "STORM_HEARTBEAT_S": str(tr.heartbeat_s), "STORM_IDLE_TIMEOUT_S": str(max(60.0, tr.heartbeat_s * 2.5)),
            "STORM_AUTH_TIMEOUT_S": "30", "STORM_DRAIN_TIMEOUT_S": "5",
            "STORM_CHAOS_RUN_DIR": str(self.report / "chaos"),
        })
        from storm_tools.chaos.context import SERVICES

        faulted = self.profile.faulted_links()
        direct = [s for s in SERVICES if s not in faulted]  # no incident faults them: no proxy in their way
        ns = argparse.Namespace(no_services=self.args.no_services, gateways=self.topo["gateways"], direct=direct,
                                start_timeout=self.args.start_timeout)
        self.session = Session(ns, self.report)
        self.view.say("Toxiproxy on the links to " + (", ".join(faulted) or "nothing") + " (the profile's link "
                      "incidents); " + (", ".join(direct) or "nothing") + " direct")
        self.view.say(f"starting the topology: {self.topo['gateways']} gateways, API, consumers "
                      f"(log {self.report / 'cluster.log'})")
        self.session.open()

    def _stop_cluster(self) -> None:
        import subprocess

        cluster = getattr(self.session, "cluster", None)
        if cluster is None or cluster.poll() is not None:
            return
        self.view.say(f"stopping storm cluster (pid {cluster.pid})")
        cluster.send_signal(signal.SIGTERM)
        try:
            cluster.wait(timeout=90)
        except subprocess.TimeoutExpired:
            cluster.kill()
            cluster.wait(timeout=30)

    def close(self) -> None:
        if self.session is not None:
            self.view.say("stopping the cluster, the proxies and the run's database")
            self.session.close()
            self.session = None

    # -- the day --------------------------------------------------------------------------------------------
    async def day(self) -> None:
        from storm.bootstrap import build_services
        from storm.config import Config
        from storm_tools.chaos import context as ctx
        from storm_tools.chaos.runner import _service_env
        from storm_tools.day.population import plan
        from storm_tools.day.provision import provision, unprovision

        context = ctx.context()
        env = {**os.environ, "STORM_DATABASE_URL": context["database_url"], "STORM_BROKER": "pulsar",
               "STORM_CACHE": "hazelcast", "STORM_SEED_DEMO": "false"}
        services_env = _service_env(ctx.ROOT)  # what the session gave the cluster
        env["STORM_PULSAR_URL"] = services_env["STORM_TEST_PULSAR_URL"]
        env["STORM_PULSAR_ADMIN_URL"] = services_env["STORM_TEST_PULSAR_ADMIN_URL"]
        env["STORM_HAZELCAST_MEMBERS"] = services_env["STORM_TEST_HAZELCAST_MEMBERS"]
        for key in ("DD_AGENT_HOST", "DD_DOGSTATSD_PORT"):
            env.pop(key, None)  # this process's own set-up traffic is not the cluster's
        import logging

        for name in ("storm", "httpx", "hazelcast"):  # this process only sets up and cleans up: its INFO is noise
            logging.getLogger(name).setLevel(logging.WARNING)
        services = build_services(Config.from_env(env))
        await services.start()
        slugs: list[str] = []
        try:
            population = plan(self.profile)
            self.view.say(f"provisioning {self.profile.users} users: {json.dumps(population.summary())[:300]}")
            began = time.monotonic()
            run_id = uuid.uuid4().hex[:6]
            prov = await provision(services, population, context["workspace_prefix"], run_id)
            slugs = prov.slugs
            self.info["population"] = {**population.summary(), "provisioned_in_s": round(time.monotonic() - began, 1)}
            self._write_spike_state(prov, population)
            await self._drive(population, prov, context)
        finally:
            await asyncio.to_thread(self._stop_cluster)  # its consumers would recreate the topics we delete
            failed = await unprovision(services, slugs)
            if failed:
                self.view.say(f"could not delete {len(failed)} Pulsar tenant(s): {failed[0]}")
            await services.stop()

    def _write_spike_state(self, prov: Any, population: Any) -> None:
        """connect_spike (a chaos action) joins the run's largest workspace: its public channels and users."""
        ws = population.workspaces[0]
        public = [prov.channel_ids[0][c] for c, ch in enumerate(ws.channels) if ch.kind == "public"]
        run_dir = self.report / "chaos"
        run_dir.mkdir(parents=True, exist_ok=True)
        from storm_tools.chaos import context as ctx

        workspace = {"slug": prov.slugs[0], "channels": public[:1], "users": [prov.names[r] for r in ws.users],
                     "secret": ctx.context()["secret"]}
        state = {"workspace": workspace, "phase": "judged"}  # judged: the chaos clean-up leaves it to us
        (run_dir / "state.json").write_text(json.dumps(state))

    def _user_specs(self, population: Any, prov: Any) -> list[list[Any]]:
        specs = []
        for rank in range(self.profile.users):
            w = population.workspace_of[rank]
            ws = population.workspaces[w]
            channels = [prov.channel_ids[wi][c] for wi, c in population.channels_of[rank]]
            announce = prov.channel_ids[w][0] if ws.users[0] == rank else None
            posts = [prov.channel_ids[wi][c] for wi, c in population.posts_of(rank)]
            specs.append([rank, prov.slugs[w], prov.names[rank], round(self.profile.connect_at(rank), 3),
                          self.profile.leave_at(rank), channels, population.active[rank], announce, posts])
        return specs

    async def _drive(self, population: Any, prov: Any, context: dict[str, Any]) -> None:
        from storm_tools.chaos import context as ctx

        profile = self.profile
        procs = self.topo["load_processes"]
        gateways = [c.port for c in ctx.children() if c.role == "gateway"]
        t0 = time.time() + 3.0
        self.t0 = t0
        traffic = {k: getattr(profile.traffic, k) for k in profile.traffic.__dataclass_fields__}
        connect = {k: getattr(profile.connect, k) for k in profile.connect.__dataclass_fields__}
        configs = []
        for i, users in enumerate(deal(self._user_specs(population, prov), procs)):
            configs.append({"index": i, "t0": t0, "run_s": profile.duration_s, "seed": profile.seed,
                            "sources": addresses(i, len(users)), "gateways": gateways, "secret": context["secret"],
                            "traffic": traffic, "connect": connect, "users": users,
                            "connect_rate_per_s": profile.connect.max_per_s / procs,
                            "acked_path": str(self.report / f"load-{i + 1}.acked.jsonl")})
        timeline = Timeline(procs, profile.phase_at)
        fleet = Fleet(configs, timeline, lambda i, e: self.view.say(f"load-{i + 1}: {e}"))
        self.fleet = fleet
        for name in ("timeline.jsonl", "processes.jsonl", "metrics.jsonl"):
            (self.report / name).write_text("")
        metrics = await self._metrics_listener(int(context.get("metrics_port") or 0))
        pending = sorted(profile.incidents, key=profile.incident_time)
        running: list[asyncio.Task[None]] = []
        last_sample = 0.0
        try:
            await fleet.start()
            self.view.say(f"{procs} load process(es), {len(gateways)} gateways; the run starts")
            while (t := time.time() - t0) < profile.duration_s:
                while pending and profile.incident_time(pending[0]) <= t:
                    running.append(asyncio.create_task(self._incident(pending.pop(0), fleet)))
                lines = timeline.ready_lines(int(t))
                write_lines(self.report / "timeline.jsonl", lines)
                if time.monotonic() - last_sample >= SAMPLE_EVERY_S:
                    last_sample = time.monotonic()
                    write_lines(self.report / "processes.jsonl", await asyncio.to_thread(self._sample, t, fleet.pids))
                    write_lines(self.report / "metrics.jsonl", self._drain_metrics(metrics))
                self.view.update(self._snapshot(timeline, t))
                await asyncio.sleep(0.5)
            self.view.say("end of the run: no new messages; waiting for the last acks")
            for proc in fleet.procs:
                with contextlib.suppress(Exception):
                    proc.send({"cmd": "quiet"})
            if running:
                await asyncio.wait(running, timeout=120)
            await asyncio.sleep(5.0)
        finally:
            for task in running:
                task.cancel()
            await fleet.stop()
            write_lines(self.report / "timeline.jsonl", timeline.rest())
            write_lines(self.report / "metrics.jsonl", self._drain_metrics(metrics))
            if metrics is not None:
                metrics[0].close()
            with contextlib.suppress(Exception):  # whatever an incident left: every link restored
                from storm_tools.chaos.actions import restore_links

                await asyncio.to_thread(restore_links)
        await self._checks(prov.slugs, context["database_url"], fleet)

    # -- incidents ------------------------------------------------------------------------------------------
    async def _incident(self, incident: Incident, fleet: Fleet) -> None:
        start_t = time.time() - self.t0
        record: dict[str, Any] = {"name": incident.name, "experiment": incident.experiment or incident.action,
                  "description": incident.description or incident.action, "start_t": round(start_t, 2),
                  "end_t": None, "action": incident.action, "args": incident.args}
        self.incidents.append(record)
        self.view.say(f"incident {incident.name} ({incident.action} {json.dumps(incident.args)}) begins")
        try:
            if incident.action == "reconnect_storm":
                fleet.storm(float(incident.args.get("share", 0.5)), float(incident.args.get("pause_max_s", 1.0)))
                await asyncio.sleep(incident.duration_s)
            else:
                record["result"] = await asyncio.to_thread(run_action, incident)
        except Exception as exc:  # recorded in incidents.json; the run goes on
            record["error"] = f"{type(exc).__name__}: {exc}"[:400]
            self.view.say(f"incident {incident.name} failed: {record['error']}")
        finally:
            record["end_t"] = round(time.time() - self.t0, 2)
            self._write_incidents()
        self.view.say(f"incident {incident.name} ends after {record['end_t'] - record['start_t']:.1f} s")

    def _write_incidents(self) -> None:
        (self.report / "incidents.json").write_text(json.dumps(self.incidents, indent=2))

    # -- measurements ---------------------------------------------------------------------------------------
    def _sample(self, t: float, load_pids: list[int]) -> list[dict[str, Any]]:
        import psutil

        from storm_tools.bench.e2e import service_pids
        from storm_tools.bench.procs import cpu_seconds, rss_bytes
        from storm_tools.chaos import context as ctx

        targets: list[tuple[str, str, int]] = []
        with contextlib.suppress(Exception):
            targets += [(c.name, c.role, c.pid) for c in ctx.children() if c.pid]
        with contextlib.suppress(Exception):
            targets += [(name, "pulsar" if name == "zookeeper" else name, pid)  # Pulsar's metadata store
                        for name, pid in service_pids().items()]
        toxi = Path(os.environ.get("STORM_SERVICES_DIR", str(ROOT / ".services"))) / "toxiproxy.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            targets.append(("toxiproxy", "toxiproxy", int(toxi.read_text().split()[0])))
        targets += [(f"load-{i + 1}", "load", pid) for i, pid in enumerate(load_pids)]
        out = []
        for name, role, pid in targets:
            with contextlib.suppress(psutil.Error, OSError):
                out.append({"t": round(t, 2), "name": name, "role": role, "pid": pid,
                            "cpu_s": round(cpu_seconds(pid), 3), "rss_bytes": rss_bytes(pid)})
        return out

    async def _metrics_listener(self, port: int) -> Any:
        if not port:
            return None
        from storm_tools.statsd import Collector, listen

        collector = Collector()
        held = self.session.take_metrics_socket() if self.session is not None else None
        transport, _ = await listen(collector, "127.0.0.1", port, sock=held)  # the port the session held
        return transport, collector

    def _drain_metrics(self, metrics: Any) -> list[dict[str, Any]]:
        if metrics is None:
            return []
        collector = metrics[1]
        points = list(collector.points)
        collector.points.clear()
        grouped: dict[tuple[int, str, str, tuple[str, ...]], list[float]] = {}
        for p in points:
            grouped.setdefault((int(p.at - self.t0), p.name, p.kind, p.tags), []).append(p.value)
        out = []
        for (sec, name, kind, tags), values in sorted(grouped.items()):
            value = sum(values) if kind == "count" else values[-1] if kind == "gauge" else sorted(values)[
                max(0, math.ceil(0.99 * len(values)) - 1)]
            row: dict[str, Any] = {"t": float(sec), "metric": name, "type": kind,
                                   "tags": {k: v for k, _, v in (tag.partition(":") for tag in tags)},
                                   "value": value}
            if kind == "distribution":
                row["count"] = len(values)
                row["aggregate"] = "p99"
            out.append(row)
        return out

    def _snapshot(self, timeline: Timeline, t: float) -> dict[str, Any]:
        last = timeline.line(max(0, int(t) - 2))
        active = [i["name"] for i in self.incidents if i["end_t"] is None]
        return {"t": t, "duration": self.profile.duration_s, "phase": self.profile.phase_at(t),
                "target": self.profile.target(t), "connections": last["connections"],
                "connects_ok": last["connects_ok"], "connects_failed": sum(last["connects_failed"].values()),
                "publishes": last["publishes"], "acks": last["acks"], "deliveries": last["deliveries"],
                "ack_p50": last["ack_ms"]["p50"], "ack_p99": last["ack_ms"]["p99"],
                "deliver_p50": last["deliver_ms"]["p50"], "deliver_p99": last["deliver_ms"]["p99"],
                "errors": last["errors"], "incidents": ", ".join(active)}

    async def _checks(self, slugs: list[str], database_url: str, fleet: Fleet) -> None:
        from storm_tools.day.provision import check, stored_rows

        acked: list[list[Any]] = []
        for path in sorted(self.report.glob("load-*.acked.jsonl")):
            acked += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        totals: dict[str, int] = {}
        for result in fleet.results.values():
            for key, value in (result.get("totals") or {}).items():
                totals[key] = totals.get(key, 0) + int(value)
        if len(fleet.results) < len(fleet.procs):  # a process never reported: its ticks hold its counts
            self.view.say(f"{len(fleet.procs) - len(fleet.results)} load process(es) sent no result: the counts "
                          "come from the timeline")
            totals = fleet.timeline.totals()
        wanted = {a[0] for a in acked}
        deadline = time.monotonic() + self.profile.settle_s
        self.view.say(f"checking {len(wanted)} acked messages against the database (up to "
                      f"{self.profile.settle_s:.0f} s for the consumers to store the last ones)")
        while True:
            rows = await stored_rows(database_url, slugs)
            if wanted <= {r[0] for r in rows} or time.monotonic() > deadline:
                break
            await asyncio.sleep(2.0)
        result = check(acked, rows, totals, totals.get("connect_attempts", 0), totals.get("connects_ok", 0))
        result["client_totals"] = totals
        (self.report / "checks.json").write_text(json.dumps(result, indent=2))
        self.checks = result
        self.view.say(f"checks: acked {result['acked']}, stored {result['stored']}, lost {result['lost']}, "
                      f"duplicates {result['duplicates']}, inversions {result['inversions']}")

    def write_run(self, status: str, error: str | None) -> None:
        self.info.update(status=status, error=error, ended_at=_now_iso())
        (self.report / "run.json").write_text(json.dumps(self.info, indent=2))
        self._write_incidents()


def run_action(incident: Incident) -> dict[str, Any]:
    """One incident through the chaos actions (blocking: the runner calls it in a thread)."""
    from storm_tools.chaos import actions

    a, took = incident.args, incident.duration_s
    if incident.action == "kill_role":
        return actions.kill_role(str(a.get("name", "gateway-1")), a.get("timeout_s", 120))
    if incident.action == "stop_role":
        return actions.stop_role(str(a.get("name", "gateway-1")), a.get("timeout_s", 120))
    if incident.action == "restart_service":
        stopped = actions.stop_service(incident.service)
        time.sleep(took)
        return {**stopped, **actions.start_service(incident.service)}
    if incident.action == "add_toxic":
        added = actions.add_toxic(incident.service, str(a.get("kind", "latency")),
                                  dict(a.get("attributes") or {"latency": 200}), a.get("children", "*"),
                                  str(a.get("stream", "downstream")))
        time.sleep(took)
        return {**added, **actions.restore_links()}
    if incident.action == "connect_spike":
        return actions.connect_spike(a.get("factor", 2), a.get("connections", 100), a.get("within_s", 5))
    raise ValueError(f"unknown incident action {incident.action!r}")


def cmd_day(args: argparse.Namespace) -> int:
    try:
        profile, path = load(args.profile)
        profile = profile.with_overrides(args.users, args.minutes)
    except ProfileError as exc:
        print(f"storm day: profile error: {exc}", file=sys.stderr)
        return 2
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    report = Path(args.report or ROOT / "reports" / "day" / stamp).resolve()
    report.mkdir(parents=True, exist_ok=True)
    run = Run(args, profile, path, report)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    status, error = "failed", None
    run.write_run("running", None)
    try:
        with run.view:
            try:
                run.open()
                asyncio.run(run.day())
                status = "completed"
            finally:
                run.close()
    except KeyboardInterrupt:
        status, error = "interrupted", "interrupted (Ctrl-C or SIGTERM); everything it started was stopped"
    except Exception as exc:  # the run folder says why; the traceback goes to stderr
        import traceback

        traceback.print_exc()
        status, error = "failed", f"{type(exc).__name__}: {exc}"[:1000]
    finally:
        signal.signal(signal.SIGTERM, previous)
        run.write_run(status, error)
    written = _report(report)
    checks = getattr(run, "checks", None)
    summary = {"report": str(report), "status": status, "error": error, "users": profile.users,
               "profile": profile.name, "checks": checks, "report_files": written}
    print(json.dumps(summary, indent=None if args.json else 2), flush=True)
    ok = status == "completed" and checks is not None and checks["acked"] > 0 and not (
        checks["lost"] or checks["duplicates"] or checks["inversions"])
    return 0 if ok else 1


def _report(folder: Path) -> Any:
    """G2's report writer, when it is there (storm_tools/day/report.py: report.json, report.md, plots)."""
    import importlib

    try:
        report_module = importlib.import_module("storm_tools.day.report")  # written in parallel: maybe absent
    except ImportError:
        return None
    writer = getattr(report_module, "write_report", None)
    if writer is None:
        return None
    try:
        out = writer(folder)
    except Exception as exc:  # the run's files are there; the report can be written again from them
        print(f"storm day: the report could not be written: {type(exc).__name__}: {exc}", file=sys.stderr)
        return f"failed: {exc}"
    return json.loads(json.dumps(out, default=str))  # whatever it returns, as JSON


def add_arguments(sub: Any) -> None:
    day = sub.add_parser("day", help="replay the launch day: ramp, traffic, incidents, checks, report "
                                     "(docs/storm-day.md)")
    day.add_argument("--profile", default="launch", help="a profile file, or launch|ci (storm_tools/day/profiles/)")
    day.add_argument("--users", type=int, default=None, help="peak concurrent users (default: the profile's)")
    day.add_argument("--minutes", type=float, default=None, help="length of the run (default: the profile's)")
    day.add_argument("--report", default="", help="run folder (default reports/day/<UTC time>)")
    day.add_argument("--json", action="store_true", help="the summary as one JSON line on stdout")
    day.add_argument("--gateways", type=int, default=None,
                     help="gateway processes (default: one per 18 000 users, plus one, >= 2)")
    day.add_argument("--no-services", action="store_true", help="the services run already (skip services.sh up)")
    day.add_argument("--start-timeout", type=float, default=180.0, help="seconds for the cluster to serve")
    day.set_defaults(fn=cmd_day)
