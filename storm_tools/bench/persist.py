"""`storm bench persist`: throughput of the persistence write path, broker -> workers -> SQL.

    storm bench persist --messages 100000 [--workers 2] [--batch 500] [--channels 16] [--broker memory]
                        [--database-url postgresql+asyncpg://…] [--inflight N] [--publisher process|inline]
                        [--json]

What it does (docs/benchmarks.md, "storm bench persist"; figures in docs/consumers.md, "Throughput"):

1. builds the services of the configured broker (``--broker``, i.e. ``STORM_BROKER``: the in-process one by
   default, Pulsar through :func:`storm.bootstrap.build_services` once it wires that adapter) and the SQL
   store at ``--database-url`` (default ``STORM_DATABASE_URL``, else the ``scripts/pg.sh`` cluster);
2. creates a throwaway workspace ``bench-<hex>`` with ``--channels`` channels (and their topics, when the
   broker is a :class:`~storm.ports.broker.ChannelPreparer`);
3. starts ``--workers`` :class:`~consumers.persistence.PersistenceWorker` s on the one ``persistence``
   subscription (the broker hands each channel to one worker at a time);
4. stores one warm-up message per channel, unmeasured;
5. publishes ``--messages`` message events, one publisher per channel (``--inflight`` at a time), from a
   child process (``--publisher process``, the default on a remote broker: in production the publishers
   are the gateways, other processes) or from this one (``inline``, the only way on the in-process broker);
6. waits until the workers report every message inserted (progress on stderr), then reads the table back
   and checks that every published message is stored exactly once;
7. deletes the workspace (unless ``--keep``) and returns one JSON object (storm_cli/main.py prints it).

``msgs_per_s`` = messages / ``wall_s``, where ``wall_s`` runs from the first publish to the moment the last
message is committed: publishing and persisting overlap, as they do in production.  With ``--backlog`` the
messages are published first with the consumers stopped, and ``wall_s`` runs from the consumers' start to
the last commit: the consumers' own throughput, broker → consumer → SQL.  With ``--publisher inline`` on
Pulsar the publisher shares this process's event loop and CPU with the consumers (≈ 50–75 µs of client CPU
per send, about the consumers' own cost), which no deployment does: that is why the publisher runs in
a child process by default there.  ``machine_busy`` and ``machine_cpu_us_per_msg`` (every process of the
host: broker, database, publisher, consumers, and whatever else runs) say how much of the machine the run
took, so a figure from a shared machine can be read for what it is; ``cpu_us_per_msg_by_role`` splits the
measured window's CPU per message between the consumers, the child publisher, Pulsar and PostgreSQL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from typing import Any

DEFAULT_PG_URL = "postgresql+asyncpg://storm:storm@127.0.0.1:{port}/storm_test"  # what scripts/pg.sh url prints
REQUIRED_KEYS = ("messages", "stored", "duplicates", "missing", "msgs_per_s", "wall_s", "batch", "workers")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("persist", help="persistence worker throughput: broker -> consumer -> SQL, verified")
    p.add_argument("--messages", type=int, default=100_000, help="messages published (default 100000)")
    p.add_argument("--workers", type=int, default=2, help="persistence workers on the subscription (default 2)")
    p.add_argument("--batch", type=int, default=500, help="records per worker batch, STORM_CONSUMER_BATCH "
                                                          "(default 500)")
    p.add_argument("--channels", type=int, default=16,
                   help="channels the messages are spread over; a channel goes to one worker at a time "
                        "(default 16)")
    p.add_argument("--broker", choices=("memory", "pulsar"), default=None,
                   help="broker adapter (default: STORM_BROKER, else memory)")
    p.add_argument("--database-url", default=None,
                   help="async SQLAlchemy URL (default: STORM_DATABASE_URL, else the scripts/pg.sh cluster)")
    p.add_argument("--inflight", type=int, default=None,
                   help="publishes in flight per channel (default 1 on the memory broker, whose publish "
                        "never waits, and 100 on others; above 1 a channel's records may be stored out of "
                        "publish order, which this bench does not check)")
    p.add_argument("--publisher", choices=("process", "inline"), default=None,
                   help="where the publishers run: a child process (default on a remote broker: the "
                        "consumers get this process to themselves, as in production) or this process "
                        "(inline; the only choice, and the default, on the in-process memory broker)")
    p.add_argument("--backlog", action="store_true",
                   help="publish every message with the consumers stopped, then time only the consumers "
                        "draining that backlog into the store (what a restarted or scaled-out consumer sees; "
                        "the publisher's own cost stays out of the figure)")
    p.add_argument("--body-bytes", type=int, default=64, help="approximate size of each message text (default 64)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="give up when no message was stored for this many seconds (default 60)")
    p.add_argument("--keep", action="store_true", help="keep the bench workspace and its rows afterwards")
    p.add_argument("--json", action="store_true", help="compact JSON on one line")


def validate(args: argparse.Namespace) -> None:
    if args.messages < 1 or args.workers < 1 or args.batch < 1 or args.channels < 1 or args.timeout <= 0:
        raise SystemExit("storm bench persist: --messages, --workers, --batch, --channels and --timeout "
                         "must be > 0")
    if args.inflight is not None and args.inflight < 1:
        raise SystemExit("storm bench persist: --inflight must be > 0")
    if args.body_bytes < 0:
        raise SystemExit("storm bench persist: --body-bytes must be >= 0")
    if getattr(args, "publisher", None) == "process" and (args.broker or os.environ.get("STORM_BROKER", "memory")) \
            == "memory":
        raise SystemExit("storm bench persist: --publisher process needs a broker other processes reach "
                         "(--broker pulsar); the memory broker lives in this process")


def database_url(args: argparse.Namespace) -> str:
    if args.database_url:
        return str(args.database_url)
    env = os.environ.get("STORM_DATABASE_URL")
    if env:
        return env
    return DEFAULT_PG_URL.format(port=os.environ.get("STORM_PG_PORT", "55432"))


def failed(result: dict[str, Any]) -> bool:
    return bool(result.get("error")) or result["stored"] != result["messages"] or result["duplicates"] != 0


def _say(text: str) -> None:
    import sys

    sys.stderr.write(text + "\n")
    sys.stderr.flush()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from storm.config import Config

    url = database_url(args)
    overrides: dict[str, Any] = {"database_url": url, "consumer_batch": args.batch, "consumer_max_wait_s": 0.05}
    if args.broker:
        overrides["broker"] = args.broker
    cfg = Config.from_env(**overrides)
    # Per-record INFO lines would dominate the measurement; warnings and errors still show.
    storm_log = logging.getLogger("storm")
    level = storm_log.level
    storm_log.setLevel(logging.WARNING)
    try:
        return await _run(args, cfg, url)
    finally:
        storm_log.setLevel(level)


async def _run(args: argparse.Namespace, cfg: Any, url: str) -> dict[str, Any]:
    from sqlalchemy import make_url

    from consumers.persistence import PersistenceWorker
    from storm.bootstrap import build_services
    from storm.ports.store import CountsRetries
    from storm_tools.bench.procs import Progress

    try:
        services = build_services(cfg)
    except NotImplementedError as exc:  # e.g. STORM_BROKER=pulsar before its adapter is in the build
        raise SystemExit(f"storm bench persist: {exc}") from None
    where = make_url(url).render_as_string(hide_password=True)
    _say(f"bench persist: {args.messages} messages, {args.channels} channels, {args.workers} workers, "
         f"batch {args.batch}, broker {cfg.broker}, store {where}")
    await services.start()
    workers: list[PersistenceWorker] = []
    workspace = None
    publisher: InlinePublisher | ChildPublisher | None = None
    try:
        workspace, channels, author = await _make_workspace(services, args.channels)
        from storm.domain import PLANS
        from storm.ports.broker import ChannelPreparer, WorkScope

        if isinstance(services.broker, WorkScope):  # Pulsar: the consumers attach to this workspace only
            slug = workspace.slug
            services.broker.limit_work_to(lambda ws: ws == slug)
        await services.broker.ensure_workspace(workspace.slug, PLANS["pro"])
        if isinstance(services.broker, ChannelPreparer):  # Pulsar: topics exist up front
            for channel in channels:
                await services.broker.ensure_channel(workspace.slug, channel)
        payloads, ids = _payloads(args.messages, channels, author, args.body_bytes)
        for _ in range(args.workers):
            worker = PersistenceWorker(services)
            await worker.start()
            workers.append(worker)
        # Warm-up, not measured: one message per channel, so that first-touch costs (the embedded broker's
        # offset lookup, Pulsar's topic discovery and producers, connection pools) stay out of the figure.
        warm, _ = _payloads(len(channels), channels, author, args.body_bytes, prefix="warmup")
        inflight = args.inflight or (1 if cfg.broker == "memory" else 100)
        publisher_mode = args.publisher or ("inline" if cfg.broker == "memory" else "process")
        publisher = (ChildPublisher(cfg.broker) if publisher_mode == "process"
                     else InlinePublisher(services.broker))
        await publisher.start(workspace.slug, {"warm": warm, "main": payloads}, inflight)
        await publisher.publish("warm")
        error = await _wait_inserted(workers, len(channels), 0, args.timeout, None)
        base = sum(w.stats["inserted"] for w in workers)
        backlog_publish_s = None
        if args.backlog:  # publish with no consumer attached, then time only the consumers draining it
            for worker in workers:
                await worker.stop()
            _say(f"bench persist: publishing {args.messages} messages with the consumers stopped (--backlog)")
            started = time.perf_counter()
            await publisher.publish("main")
            backlog_publish_s = time.perf_counter() - started
            workers = []
            for _ in range(args.workers):
                worker = PersistenceWorker(services)
                workers.append(worker)
            base = 0
        progress = Progress()
        meter = _service_meter(cfg.broker, make_url(url).get_backend_name())
        meter.start()
        t0, cpu0, machine0 = time.perf_counter(), time.process_time(), _machine_cpu()
        if args.backlog:
            for worker in workers:
                await worker.start()
            publishing = asyncio.ensure_future(asyncio.sleep(0))
        else:
            publishing = asyncio.ensure_future(publisher.publish("main"))
        marks: dict[str, float] = {}
        if not error:
            error = await _wait_inserted(workers, args.messages, base, args.timeout, publishing, progress, marks)
        t1, cpu1, machine1 = time.perf_counter(), time.process_time(), _machine_cpu()
        services_cpu = meter.stop()["cpu_s"]
        published_at = marks.get("published")
        progress.done(f"stored {sum(w.stats['inserted'] for w in workers) - base}/{args.messages} "
                      f"in {t1 - t0:.2f}s")
        if not publishing.done() and not error:
            # Everything is stored, so everything was published: the child's "published" answer (and the CPU
            # it reports) can trail the last insert by a moment.  Wait for it, outside the measured window.
            with contextlib.suppress(Exception):  # a timeout or a late failure: reported as no child CPU
                await asyncio.wait_for(asyncio.shield(publishing), args.timeout)
        if not publishing.done():
            publishing.cancel()
            with contextlib.suppress(BaseException):
                await publishing
        for worker in workers:
            await worker.stop()
        stats = {k: sum(w.stats[k] for w in workers) for k in workers[0].stats}
        workers = []
        await publisher.close()
        rows, distinct, found = await _verify(url, workspace.id, ids)
        wall = t1 - t0
        result: dict[str, Any] = {
            "messages": args.messages,
            "stored": found,
            "duplicates": rows - distinct,
            "missing": args.messages - found,
            "msgs_per_s": round(args.messages / wall, 1) if wall > 0 and not error else 0.0,
            "wall_s": round(wall, 3),
            "mode": "backlog" if args.backlog else "overlap",
            "publish_s": round(backlog_publish_s if backlog_publish_s is not None else (published_at or t1) - t0, 3),
            # CPU of this process (workers, broker client, and the publishers when inline) over wall_s:
            # steadier than msgs_per_s on a shared machine; the database server's CPU is not included.
            "cpu_s": round(cpu1 - cpu0, 3),
            "cpu_us_per_msg": round((cpu1 - cpu0) * 1e6 / args.messages, 1),
            "publisher": publisher_mode,
            # the child publisher's CPU for the measured messages (None inline: it is in cpu_s)
            "publisher_cpu_s": publisher.cpu_s.get("main"),
            # every process of the host over wall_s (broker, database, publisher, consumers, other jobs)
            "machine_busy": round((machine1[0] - machine0[0]) / max(machine1[1] - machine0[1], 1e-9), 3),
            "machine_cpu_us_per_msg": round((machine1[0] - machine0[0]) * 1e6 / args.messages, 1),
            "cpu_us_per_msg_by_role": _by_role(cpu1 - cpu0, publisher, services_cpu, args),
            "batch": args.batch,
            "inflight": inflight,
            "workers": args.workers,
            "channels": args.channels,
            "broker": cfg.broker,
            "database": make_url(url).get_backend_name(),
            "batches": stats["batches"],
            "avg_batch": round(stats["records"] / stats["batches"], 1) if stats["batches"] else 0.0,
            "redelivered": max(0, stats["records"] - args.messages - len(channels)),
            "retried": stats["retried"],
            "dead_lettered": stats["dead_lettered"],
            "serialization_retries": (services.store.serialization_retries
                                      if isinstance(services.store, CountsRetries) else None),
        }
        if error:
            result["error"] = error
        return result
    finally:
        for worker in workers:
            with contextlib.suppress(Exception):
                await worker.stop()
        if publisher is not None:
            with contextlib.suppress(Exception):
                await publisher.close()
        if workspace is not None and not args.keep:
            with contextlib.suppress(Exception):
                await services.broker.delete_workspace(workspace.slug)
            with contextlib.suppress(Exception):
                ws_id = workspace.id

                async def drop(uow: Any) -> None:
                    await uow.workspaces.delete(ws_id)

                await services.store.run(drop)
        await services.stop()


async def _make_workspace(services: Any, n_channels: int) -> tuple[Any, list[str], str]:
    from storm.domain import Channel, ChannelKind, Membership, Role, User, Workspace

    now = datetime.now(UTC)
    hexid = uuid.uuid4().hex[:12]
    workspace = Workspace(id=uuid.uuid4(), slug=f"bench-{hexid}", name="Persist bench", plan="pro",
                          created_at=now)
    user = User(id=uuid.uuid4(), subject=f"bench|{hexid}", name="Bench", created_at=now)
    channels = [Channel(id=uuid.uuid4(), workspace_id=workspace.id, name=f"c{i}", kind=ChannelKind.PUBLIC,
                        archived=False, created_by=user.id, created_at=now) for i in range(n_channels)]

    async def create(uow: Any) -> None:
        await uow.workspaces.add(workspace)
        await uow.users.add(user)
        await uow.memberships.add(Membership(workspace.id, user.id, Role.OWNER, now))
        for channel in channels:
            await uow.channels.add(channel)

    await services.store.run(create)
    return workspace, [str(c.id) for c in channels], str(user.id)


async def _wait_inserted(workers: list[Any], target: int, base: int, timeout: float, publishing: Any,
                         progress: Any = None, marks: dict[str, float] | None = None) -> str:
    """Wait until the workers have inserted ``target`` rows beyond ``base``; an error text, or "".  Sets
    ``marks["published"]`` (perf_counter) when the publisher task is first seen finished."""
    marks = {} if marks is None else marks
    start = last_change = time.perf_counter()
    last = -1
    while True:
        inserted = sum(w.stats["inserted"] for w in workers) - base
        now = time.perf_counter()
        if publishing is not None and publishing.done() and "published" not in marks:
            marks["published"] = now
            if publishing.exception() is not None:
                return f"publish failed: {publishing.exception()!r}"
        if inserted >= target:
            return ""
        if inserted != last:
            last, last_change = inserted, now
        elif now - last_change > timeout:
            return f"no progress for {timeout:g}s ({inserted}/{target} stored)"
        if progress is not None:
            rate = inserted / (now - start) if now > start else 0.0
            progress.update(f"stored {inserted}/{target}  {rate:,.0f} msgs/s", force=False)
        await asyncio.sleep(0.01)


def _payloads(n: int, channels: list[str], author: str, body_bytes: int,
              prefix: str = "bench") -> tuple[dict[str, list[bytes]], list[str]]:
    """Encoded message events per channel (round robin) and their ids, built before the clock starts."""
    from storm.protocol import events as e

    pad = "x" * max(0, body_bytes - 16)
    per_channel: dict[str, list[bytes]] = {c: [] for c in channels}
    ids: list[str] = []
    ts = time.time()
    for seq in range(n):
        channel = channels[seq % len(channels)]
        mid = str(uuid.uuid4())
        ids.append(mid)
        per_channel[channel].append(e.encode(e.MessageEvent(
            channel=channel, id=mid, author=author, author_name="Bench", text=f"{prefix}:{seq}:{pad}", ts=ts)))
    return per_channel, ids


async def _publish(broker: Any, workspace: str, per_channel: dict[str, list[bytes]], inflight: int) -> None:
    """One publisher per channel, all channels at once.  ``inflight`` = 1: sequential, the channel's order
    kept; more: windows of that many concurrent publishes (a remote broker's round trips overlap)."""

    async def one(channel: str, payloads: list[bytes]) -> None:
        if inflight > 1:
            for start in range(0, len(payloads), inflight):
                await asyncio.gather(*(broker.publish(workspace, channel, p)
                                       for p in payloads[start:start + inflight]))
            return
        for i, payload in enumerate(payloads):
            await broker.publish(workspace, channel, payload)
            if i % 256 == 255:
                await asyncio.sleep(0)  # an in-process broker never yields by itself: let the workers run

    await asyncio.gather(*(one(c, p) for c, p in per_channel.items()))


def _service_meter(broker: str, database: str) -> Any:
    """CPU of the services over the measured window: the Pulsar JVM and the PostgreSQL server that
    scripts/services.sh started (``STORM_SERVICES_DIR``), found as ``storm bench e2e`` finds them."""
    from storm_tools.bench.e2e import CpuMeter, service_roles

    pids = service_roles()
    roles = [role for role, used in (("pulsar", broker == "pulsar"), ("postgres", database == "postgresql")) if used]
    found = {role: pids[role] for role in roles if role in pids}
    return CpuMeter(found, jvms={"pulsar": found["pulsar"][0]} if "pulsar" in found else None)


def _by_role(consumers_cpu_s: float, publisher: Any, services_cpu: dict[str, float],
             args: argparse.Namespace) -> dict[str, float | None]:
    """µs of CPU per message of each role over ``wall_s``: ``consumers`` (this process: workers, broker
    client, and the publishers when inline), ``publisher`` (the child; None inline, where it is in
    ``consumers``, and with ``--backlog``, where it published before the clock), ``pulsar``, ``postgres``
    (None where not found), ``total`` (the roles measured)."""
    n = args.messages
    child = publisher.cpu_s.get("main") if isinstance(publisher, ChildPublisher) and not args.backlog else None
    out: dict[str, float | None] = {
        "consumers": round(consumers_cpu_s * 1e6 / n, 1),
        "publisher": round(child * 1e6 / n, 1) if child is not None else None,
        "pulsar": round(services_cpu["pulsar"] * 1e6 / n, 1) if "pulsar" in services_cpu else None,
        "postgres": round(services_cpu["postgres"] * 1e6 / n, 1) if "postgres" in services_cpu else None,
    }
    out["total"] = round(sum(v for v in out.values() if v is not None), 1)
    return out


def _machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole host, summed over its cores, since boot."""
    import psutil

    t = psutil.cpu_times()
    total = sum(t)
    idle = t.idle + getattr(t, "iowait", 0.0) + getattr(t, "steal", 0.0)
    return total - idle, total


class InlinePublisher:
    """Publishes from this process (the memory broker's only way)."""

    def __init__(self, broker: Any) -> None:
        self._broker = broker
        self._sets: dict[str, dict[str, list[bytes]]] = {}
        self._workspace = ""
        self._inflight = 1
        self.cpu_s: dict[str, float] = {}

    async def start(self, workspace: str, sets: dict[str, dict[str, list[bytes]]], inflight: int) -> None:
        self._workspace, self._sets, self._inflight = workspace, sets, inflight

    async def publish(self, name: str) -> None:
        await _publish(self._broker, self._workspace, self._sets[name], self._inflight)

    async def close(self) -> None:
        return None


class ChildPublisher:
    """Publishes from a child process (``python -m storm_tools.bench.persist --publisher-child``), as the
    gateways do in production: the consumers' process does not pay the producers' CPU.  The payloads go
    through a temporary file (msgpack); commands and answers are JSON lines on the child's stdin/stdout;
    the child reports the CPU it spent on each set.  It dies with the bench (PR_SET_PDEATHSIG) and is
    stopped by its PID."""

    START_TIMEOUT_S = 120.0

    def __init__(self, broker: str) -> None:
        self._broker = broker
        self._proc: asyncio.subprocess.Process | None = None
        self._file: str | None = None
        self.cpu_s: dict[str, float] = {}

    async def start(self, workspace: str, sets: dict[str, dict[str, list[bytes]]], inflight: int) -> None:
        import msgspec

        from storm_tools.bench.procs import child_setup

        fd, self._file = tempfile.mkstemp(prefix="storm-bench-persist-", suffix=".msgpack")
        with os.fdopen(fd, "wb") as f:
            f.write(msgspec.msgpack.encode(sets))
        env = {**os.environ, "STORM_BROKER": self._broker}
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "storm_tools.bench.persist", "--publisher-child",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env, preexec_fn=child_setup,
            limit=1 << 20)
        self._send({"workspace": workspace, "file": self._file, "inflight": inflight})
        await asyncio.wait_for(self._expect("ready"), self.START_TIMEOUT_S)

    def _send(self, message: dict[str, Any]) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(message).encode() + b"\n")

    async def _expect(self, event: str) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        line = await self._proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the publisher child exited (status {await self._proc.wait()}) before "
                               f"{event!r}; its stderr says why")
        answer: dict[str, Any] = json.loads(line)
        if answer.get("event") != event:
            raise RuntimeError(f"the publisher child answered {answer!r}, expected {event!r}")
        return answer

    async def publish(self, name: str) -> None:
        self._send({"cmd": "publish", "set": name})
        answer = await self._expect("published")
        self.cpu_s[name] = round(float(answer["cpu_s"]), 3)

    async def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(Exception):
                self._send_to(proc, {"cmd": "exit"})
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, 9)
                await proc.wait()
        if self._file is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._file)
            self._file = None

    @staticmethod
    def _send_to(proc: asyncio.subprocess.Process, message: dict[str, Any]) -> None:
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(message).encode() + b"\n")
        proc.stdin.close()


async def _publisher_child() -> None:
    """The child side of :class:`ChildPublisher`: the broker adapter alone, publishing on command."""
    import msgspec

    from storm.bootstrap import pulsar_settings
    from storm.config import Config
    from storm.ports.clock import SystemClock

    logging.basicConfig(level=logging.WARNING)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    def say(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    conf = json.loads(await reader.readline())
    from pathlib import Path

    sets: dict[str, dict[str, list[bytes]]] = msgspec.msgpack.decode(
        await asyncio.to_thread(Path(conf["file"]).read_bytes))
    cfg = Config.from_env()
    if cfg.broker != "pulsar":
        raise SystemExit(f"storm bench persist: no child publisher for the {cfg.broker!r} broker")
    from storm.adapters.pulsar_broker import PulsarBroker

    broker = PulsarBroker(pulsar_settings(cfg), SystemClock())
    await broker.start()
    try:
        say({"event": "ready"})
        while line := await reader.readline():
            cmd = json.loads(line)
            if cmd.get("cmd") != "publish":
                break
            cpu0 = time.process_time()
            await _publish(broker, conf["workspace"], sets[cmd["set"]], int(conf["inflight"]))
            say({"event": "published", "set": cmd["set"], "cpu_s": time.process_time() - cpu0})
    finally:
        await broker.stop()


async def _verify(database_url: str, workspace_id: uuid.UUID, ids: list[str]) -> tuple[int, int, int]:
    """(rows of the workspace, distinct message texts among them, published ids found)."""
    from sqlalchemy import func, select

    from db import models as m
    from storm_tools.bench.database import sql_transaction

    msgs = m.messages
    async with sql_transaction(database_url) as conn:
        rows, distinct = (await conn.execute(
            select(func.count(), func.count(msgs.c.body.distinct())).where(msgs.c.workspace_id == workspace_id)
        )).one()
        stored_ids = set((await conn.execute(select(msgs.c.id).where(msgs.c.workspace_id == workspace_id)))
                         .scalars())
    found = sum(1 for i in ids if uuid.UUID(i) in stored_ids)
    return int(rows), int(distinct), found


if __name__ == "__main__":
    if sys.argv[1:] != ["--publisher-child"]:
        raise SystemExit("usage: python -m storm_tools.bench.persist --publisher-child (run by storm bench persist)")
    import uvloop

    uvloop.run(_publisher_child())
