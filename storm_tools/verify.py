"""`storm verify delivery --json`: the gateway-kill scenario against the running services (docs/delivery.md).

    storm verify delivery [--messages 1000] [--rate 200] [--listeners 1] [--json]

It provisions a fresh workspace (``verify-<hex>``) in-process on the services the environment names
(``STORM_DATABASE_URL``, ``STORM_PULSAR_*``, ``STORM_HAZELCAST_*``; by default those of ``scripts/services.sh
env``, database ``storm_cluster``), starts two gateway processes of its own (``storm serve gateway``) on free
loopback ports, and then:

1. connects SDK clients (sdk/storm_sdk): publisher alice and ``--listeners`` listeners on gateway A, publisher bob
   and as many listeners on gateway B, all subscribed to one channel;
2. alice and bob each publish ``--messages`` messages at ``--rate`` per second;
3. when half of alice's messages are published, SIGKILLs gateway A and starts it again on the same port
   (its clients reconnect with backoff, resume with their last offset and resend their outbox, same cmids);
4. waits until every message is acknowledged and every member has every acknowledged message (bounded);
5. prints ``{"acked", "delivered", "lost", "duplicates", "inversions", "reconnect_s_p99", ...}``.

``lost``: (member, acked message) pairs never delivered.  ``duplicates``: deliveries of a message id already
delivered to that member, plus acked messages that exist under two ids in the channel log (read back from
the broker).  ``inversions``: deliveries whose offset is not above the member's previous one, or whose
sender's sequence number is below that sender's previous one.  ``reconnect_s_p99``: from the SIGKILL to
``online`` again, over gateway A's clients.  Exit code 1 when lost, duplicates or inversions is not 0.
Progress goes to stderr.

The process helpers (``StormProcess``) and the scenario (``run_gateway_kill``) are also what
the fault tests (tests/e2e/test_faults.py) use, against their own topology.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 120.0


def say(message: str) -> None:
    print(f"storm verify: {message}", file=sys.stderr, flush=True)


# --- processes ----------------------------------------------------------------------------------------------


class StormProcess:
    """One ``storm serve <role>`` child process, logging to ``<log_dir>/<name>.log``; stopped by PID."""

    def __init__(self, name: str, role: str, port: int, env: dict[str, str], log_dir: Path,
                 host: str = "127.0.0.1") -> None:
        self.name, self.role, self.port, self.env, self.host = name, role, port, env, host
        self.log_path = log_dir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws"

    @property
    def pid(self) -> int:
        return self.popen.pid if self.popen else 0

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> None:
        if self.alive:
            raise RuntimeError(f"{self.name} is already running (pid {self.pid})")
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- start #{self.starts} at {time.strftime('%H:%M:%S')} ---\n".encode())
            log.flush()
            self.popen = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", "storm_cli", "serve", self.role, "--host", self.host, "--port", str(self.port)],
                cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.http_url}/healthz", timeout=2) as response:  # noqa: S310 - ours
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if not self.alive:
                code = self.popen.returncode if self.popen else None
                raise RuntimeError(f"{self.name} exited ({code}) before answering /healthz:\n{self.log_tail(40)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not answer /healthz within {timeout:.0f} s:\n"
                                   f"{self.log_tail(40)}")
            time.sleep(0.2)

    def signal(self, sig: int) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        self.signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(timeout=30)

    def stop(self, timeout: float) -> int | None:
        """SIGTERM (a graceful drain), SIGKILL past ``timeout``; the exit code."""
        if self.popen is None:
            return None
        if self.alive:
            self.signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.returncode

    def log_tail(self, lines: int) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            text = []
        return f"===== {self.name} (pid {self.pid}, {self.log_path}) =====\n" + "\n".join(text)


# --- databases ------------------------------------------------------------------------------------------------


# --- the scenario -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Provisioned:
    """A workspace made for one run: its slug, one channel every user may write, the users (first = owner)."""

    slug: str
    channel: str
    users: tuple[str, ...]
    secret: str

    def token_provider(self, user: str) -> Callable[[], str]:
        from storm.adapters.dev_identity import DevIdentity

        issuer = DevIdentity(self.secret, ttl_s=3600)
        return lambda: issuer.issue(f"dev|{user}", self.slug, user.title())


@dataclass
class Member:
    user: str
    gateway: str  # "a" or "b"
    client: Any = None
    deliveries: list[tuple[str, str, int, str]] = field(default_factory=list)  # (id, author cmid prefix, offset, cmid)
    online_at: list[float] = field(default_factory=list)
    task: asyncio.Task[None] | None = None


@dataclass(frozen=True)
class ScenarioOptions:
    messages: int = 1000  # per publisher
    rate: float = 200.0  # per publisher, messages per second
    listeners: int = 1  # per gateway, besides the publisher
    kill_at: float = 0.5  # fraction of alice's messages published when gateway A is killed
    settle_timeout_s: float = 90.0  # after the last publish: every ack, then every delivery
    backoff_max_s: float = 2.0


def scenario_users(listeners: int) -> tuple[str, ...]:
    return ("alice", "bob", *(f"listener{i}" for i in range(2 * listeners)))


def _cmid(author: str, seq: int) -> str:
    return f"{author}-{seq:06d}"


def _seq(cmid: str) -> tuple[str, int]:
    author, _, seq = cmid.rpartition("-")
    return author, int(seq)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def _collect(member: Member) -> None:
    from storm_sdk import ConnectionState, Message, StateChanged

    async for event in member.client.events():
        if isinstance(event, Message):
            member.deliveries.append((event.id, event.author, event.offset, event.cmid or ""))
        elif isinstance(event, StateChanged) and event.state == ConnectionState.ONLINE:
            member.online_at.append(time.monotonic())


async def run_gateway_kill(ws: Provisioned, urls: dict[str, str], kill_and_restart: Callable[[], Awaitable[None]],
                           options: ScenarioOptions,
                           log_reader: Callable[[], Awaitable[list[tuple[str, str]]]] | None = None) -> dict[str, Any]:
    """Run the scenario (module docstring) on gateways ``urls["a"]``/``urls["b"]``.  ``kill_and_restart``
    SIGKILLs gateway A and starts it again; ``log_reader`` (optional) returns the channel log as
    ``(message id, cmid)`` pairs, to count messages stored under two ids."""
    from storm_sdk import BackoffPolicy, ClientOptions, StormClient

    users = scenario_users(options.listeners)
    members = [Member(user, "a" if i % 2 == 0 else "b") for i, user in enumerate(users)]
    client_options = ClientOptions(outbox_max=options.messages + 100,
                                   backoff=BackoffPolicy(max_s=options.backoff_max_s), request_timeout_s=30.0)
    for m in members:
        m.client = StormClient(urls[m.gateway], ws.token_provider(m.user), client_options)
        await m.client.start()
        m.task = asyncio.create_task(_collect(m))
    try:
        for m in members:
            await m.client.subscribe(ws.channel)
        say(f"{len(members)} members online and subscribed ({sum(m.gateway == 'a' for m in members)} on gateway A)")
        publishers = [m for m in members if m.user in ("alice", "bob")]
        pending: dict[str, Any] = {}
        killed_at = 0.0
        kill_done = asyncio.Event()

        async def kill() -> None:
            nonlocal killed_at
            killed_at = time.monotonic()
            say("SIGKILL gateway A")
            await kill_and_restart()
            say(f"gateway A restarted after {time.monotonic() - killed_at:.1f} s")
            kill_done.set()

        async def publish(m: Member) -> None:
            interval = 1.0 / options.rate
            start = time.monotonic()
            for seq in range(options.messages):
                cmid = _cmid(m.user, seq)
                pending[cmid] = m.client.publish(ws.channel, f"{m.user} #{seq}", cmid=cmid)
                if m.user == "alice" and seq == int(options.messages * options.kill_at):
                    asyncio.get_running_loop().create_task(kill())
                await asyncio.sleep(max(0.0, start + (seq + 1) * interval - time.monotonic()))

        began = time.monotonic()
        await asyncio.gather(*(publish(m) for m in publishers))
        say(f"published {len(pending)} messages in {time.monotonic() - began:.1f} s; waiting for acks")
        await asyncio.wait_for(kill_done.wait(), options.settle_timeout_s)
        deadline = time.monotonic() + options.settle_timeout_s
        for p in pending.values():
            with contextlib.suppress(Exception):
                await p.wait(timeout=max(0.1, deadline - time.monotonic()))
        acked = {cmid: p.message_id for cmid, p in pending.items() if p.message_id is not None}
        say(f"{len(acked)} of {len(pending)} acknowledged; waiting for every member to have them")
        wanted = set(acked.values())
        while time.monotonic() < deadline:
            if all(wanted <= {d[0] for d in m.deliveries} for m in members):
                break
            await asyncio.sleep(0.2)
        stored = await log_reader() if log_reader is not None else []
    finally:
        for m in members:
            with contextlib.suppress(Exception):
                await m.client.stop()
            if m.task is not None:
                m.task.cancel()
                with contextlib.suppress(BaseException):
                    await m.task
    return _score(members, acked, len(pending), killed_at, stored)


def _score(members: list[Member], acked: dict[str, str], published: int, killed_at: float,
           stored: list[tuple[str, str]]) -> dict[str, Any]:
    wanted = set(acked.values())
    lost = duplicates = inversions = delivered = 0
    orders: list[list[str]] = []
    for m in members:
        seen: set[str] = set()
        last_offset = -1
        last_seq: dict[str, int] = {}
        order = []
        for message_id, _author, offset, cmid in m.deliveries:
            if message_id in seen:
                duplicates += 1
                continue
            seen.add(message_id)
            delivered += 1
            order.append(message_id)
            if offset <= last_offset:
                inversions += 1
            last_offset = max(last_offset, offset)
            with contextlib.suppress(ValueError):
                sender, seq = _seq(cmid)
                if seq < last_seq.get(sender, -1):
                    inversions += 1
                last_seq[sender] = max(seq, last_seq.get(sender, -1))
        lost += len(wanted - seen)
        orders.append([i for i in order if i in wanted])
    ids_by_cmid: dict[str, set[str]] = {}
    for message_id, cmid in stored:
        ids_by_cmid.setdefault(cmid, set()).add(message_id)
    stored_twice = sum(len(ids) - 1 for cmid, ids in ids_by_cmid.items() if cmid in acked)
    reconnects = [min(t for t in m.online_at if t > killed_at) - killed_at
                  for m in members if m.gateway == "a" and any(t > killed_at for t in m.online_at)]
    never_back = sum(1 for m in members if m.gateway == "a" and not any(t > killed_at for t in m.online_at))
    return {
        "acked": len(acked), "delivered": delivered, "lost": lost, "duplicates": duplicates + stored_twice,
        "inversions": inversions, "reconnect_s_p99": round(percentile(reconnects, 0.99), 3),
        "published": published, "members": len(members), "same_order": all(o == orders[0] for o in orders),
        "stored_twice": stored_twice, "log_checked": bool(stored), "not_reconnected": never_back,
    }


def failed(result: dict[str, Any]) -> bool:
    return bool(result["lost"] or result["duplicates"] or result["inversions"] or result.get("not_reconnected")
                or not result.get("same_order", True))


# --- the command ------------------------------------------------------------------------------------------------


def _service_env() -> dict[str, str]:
    """STORM_* settings for the gateways: the environment's, else those of scripts/services.sh env."""
    env = dict(os.environ)
    script = ROOT / "scripts" / "services.sh"
    if "STORM_DATABASE_URL" in env or not script.is_file():
        return env
    out = subprocess.run(["bash", str(script), "env", "all"], cwd=ROOT, capture_output=True, text=True,  # noqa: S603,S607
                         check=False, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"scripts/services.sh env failed: {out.stderr.strip()}; start them with "
                           "`make services-up` or set STORM_DATABASE_URL and STORM_PULSAR_*/STORM_HAZELCAST_*")
    pairs = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    from db.admin import cluster_database_url

    env.setdefault("STORM_PULSAR_URL", pairs["STORM_TEST_PULSAR_URL"])
    env.setdefault("STORM_PULSAR_ADMIN_URL", pairs["STORM_TEST_PULSAR_ADMIN_URL"])
    env.setdefault("STORM_HAZELCAST_MEMBERS", pairs["STORM_TEST_HAZELCAST_MEMBERS"])
    env["STORM_DATABASE_URL"] = cluster_database_url(pairs["STORM_TEST_PG_URL"])
    return env


async def provision_in_process(services: Any, users: tuple[str, ...], plan: str = "pro") -> tuple[str, str]:
    """A fresh workspace through tenants/service.py: (slug, channel id).  The first user owns it."""
    from storm.ports.identity import Claims
    from tenants import service

    slug = f"verify-{uuid.uuid4().hex[:10]}"

    def claims(user: str, ws: str) -> Claims:
        return Claims(subject=f"dev|{user}", workspace=ws, name=user.title(), expires_at=time.time() + 3600,
                      scopes=frozenset({"chat", "workspaces:create"}), token_id=uuid.uuid4().hex)

    await service.create_workspace(services, claims(users[0], "*"), slug=slug, name=slug, plan=plan)
    owner = await service.authorize(services, claims(users[0], slug), slug)
    for user in users[1:]:
        await service.add_member(services, owner, subject=f"dev|{user}", name=user.title(), role="member")
    channel = await service.create_channel(services, owner, name="general", kind="public", members=[])
    return slug, str(channel.id)


async def _verify_delivery(args: argparse.Namespace) -> dict[str, Any]:
    import tempfile

    from db.admin import ensure_database
    from db.migrate import upgrade_async
    from storm.bootstrap import build_services
    from storm.config import Config

    env = _service_env()
    env.update({"STORM_BROKER": "pulsar", "STORM_CACHE": "hazelcast", "STORM_SEED_DEMO": "false",
                "PYTHONUNBUFFERED": "1", "STORM_PUBLISH_RATE": str(max(20.0, args.rate * 2)),
                "STORM_PUBLISH_BURST": str(int(max(40, args.rate * 2))),
                "STORM_USER_PUBLISH_RATE": str(max(30.0, args.rate * 2)),
                "STORM_USER_PUBLISH_BURST": str(int(max(60, args.rate * 2)))})
    cfg = Config.from_env(env)
    if cfg.database_url.startswith("postgresql"):
        await ensure_database(cfg.database_url)
    await upgrade_async(cfg.database_url)
    options = ScenarioOptions(messages=args.messages, rate=args.rate, listeners=args.listeners,
                              settle_timeout_s=args.timeout, backoff_max_s=args.backoff_max)
    users = scenario_users(args.listeners)
    services = build_services(cfg)
    await services.start()
    log_dir = Path(tempfile.mkdtemp(prefix="storm-verify-"))
    gateways: dict[str, StormProcess] = {}
    slug: str | None = None  # set once provisioned: what the clean-up deletes
    try:
        slug, channel = await provision_in_process(services, users)
        say(f"workspace {slug}, channel {channel}; gateway logs in {log_dir}")
        ports = free_ports(2)
        for name, port in zip(("a", "b"), ports, strict=True):
            gateways[name] = StormProcess(f"gateway-{name}", "gateway", port,
                                          {**env, "STORM_GATEWAY_ID": f"verify-{name}-{uuid.uuid4().hex[:6]}"}, log_dir)
            gateways[name].start()
        for gw in gateways.values():
            await asyncio.to_thread(gw.wait_ready)
        say(f"gateways A (pid {gateways['a'].pid}) and B (pid {gateways['b'].pid}) ready")

        async def kill_and_restart() -> None:
            gw = gateways["a"]
            await asyncio.to_thread(gw.kill)
            gw.start()
            await asyncio.to_thread(gw.wait_ready)

        async def read_log() -> list[tuple[str, str]]:
            return await read_channel_log(services.broker, slug, channel)

        result = await run_gateway_kill(Provisioned(slug, channel, users, cfg.dev_secret),
                                        {k: g.ws_url for k, g in gateways.items()}, kill_and_restart, options,
                                        read_log)
        result["workspace"] = slug
        return result
    finally:
        for gw in gateways.values():
            await asyncio.to_thread(gw.stop, cfg.drain_timeout_s + 5)
        if not args.keep and slug is not None:
            from tenants import service

            with contextlib.suppress(Exception):
                owner = await service.authorize(services, _owner_claims(users[0], slug), slug)
                await service.delete_workspace(services, owner)
        await services.stop()


def _owner_claims(user: str, slug: str) -> Any:
    from storm.ports.identity import Claims

    return Claims(subject=f"dev|{user}", workspace=slug, name=user.title(), expires_at=time.time() + 3600,
                  scopes=frozenset({"chat"}), token_id=uuid.uuid4().hex)


async def read_channel_log(broker: Any, workspace: str, channel: str) -> list[tuple[str, str]]:
    """Every message of a channel's broker log as (message id, cmid)."""
    import msgspec

    out: list[tuple[str, str]] = []
    start = await broker.earliest(workspace, channel)
    while start is not None:
        records = await broker.read(workspace, channel, start, 500)
        for record in records:
            event = msgspec.json.decode(record.payload)
            if isinstance(event, dict) and event.get("type") == "message":
                out.append((str(event.get("id")), str(event.get("cmid") or "")))
        if len(records) < 500:
            break
        start = records[-1].offset + 1
    return out


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports free right now (bound at once, then released)."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _bad_arguments(args: argparse.Namespace) -> str | None:
    if args.messages < 2:
        return f"--messages must be at least 2 (the kill comes halfway), got {args.messages}"
    for name in ("rate", "timeout", "backoff_max"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            return f"--{name.replace('_', '-')} must be a positive number, got {value}"
    if args.listeners < 0:
        return f"--listeners must not be negative, got {args.listeners}"
    return None


def cmd_verify(args: argparse.Namespace) -> int:
    from gateway.serve import run

    problem = _bad_arguments(args)
    if problem:
        print(f"storm verify: {problem}", file=sys.stderr)
        return 2
    try:
        result = run(lambda: _verify_delivery(args))
    except (RuntimeError, OSError, TimeoutError) as exc:
        print(f"storm verify: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=None if args.json else 2), flush=True)
    return 1 if failed(result) else 0


def add_arguments(sub: Any) -> None:
    verify = sub.add_parser("verify", help="check delivery guarantees on the running services (JSON on stdout)")
    verify.add_argument("what", choices=("delivery",))
    verify.add_argument("--messages", type=int, default=1000, help="per publisher (2 publishers; default 1000)")
    verify.add_argument("--rate", type=float, default=200.0, help="messages per second per publisher")
    verify.add_argument("--listeners", type=int, default=1, help="listeners per gateway besides the publisher")
    verify.add_argument("--timeout", type=float, default=90.0, help="seconds to settle after the last publish")
    verify.add_argument("--backoff-max", type=float, default=2.0, help="the clients' reconnect backoff cap, s")
    verify.add_argument("--keep", action="store_true", help="keep the workspace (default: delete it)")
    verify.add_argument("--json", action="store_true", help="one line of JSON")
    verify.set_defaults(fn=cmd_verify)
