"""`storm bench persist`: throughput of the persistence write path, broker -> workers -> SQL.

    storm bench persist --messages 100000 [--workers 2] [--batch 500] [--channels 16] [--broker memory]
                        [--database-url postgresql+asyncpg://…] [--inflight N] [--json]

What it does (docs/benchmarks.md, "storm bench persist"; figures in docs/consumers.md, "Throughput"):

1. builds the services of the configured broker (``--broker``, i.e. ``STORM_BROKER``: the in-process one by
   default, Pulsar through :func:`storm.bootstrap.build_services` once it wires that adapter) and the SQL
   store at ``--database-url`` (default ``STORM_DATABASE_URL``, else the ``scripts/pg.sh`` cluster);
2. creates a throwaway workspace ``bench-<hex>`` with ``--channels`` channels (and their topics, when the
   broker is a :class:`~storm.ports.broker.ChannelPreparer`);
3. starts ``--workers`` :class:`~consumers.persistence.PersistenceWorker` s on the one ``persistence``
   subscription (the broker hands each channel to one worker at a time);
4. stores one warm-up message per channel, unmeasured;
5. publishes ``--messages`` message events, one publisher per channel (``--inflight`` at a time);
6. waits until the workers report every message inserted (progress on stderr), then reads the table back
   and checks that every published message is stored exactly once;
7. deletes the workspace (unless ``--keep``) and returns one JSON object (storm_cli/main.py prints it).

``msgs_per_s`` = messages / ``wall_s``, where ``wall_s`` runs from the first publish to the moment the last
message is committed: publishing and persisting overlap, as they do in production.  With ``--backlog`` the
messages are published first with the consumers stopped, and ``wall_s`` runs from the consumers' start to
the last commit: the consumers' own throughput, broker → consumer → SQL, without the publisher sharing
this process's CPU (it would otherwise be most of it on Pulsar, whose client costs ≈ 0.4 ms per send here).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
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
        # offset lookup, Pulsar's topic discovery, connection pools) stay out of the figure.
        warm, _ = _payloads(len(channels), channels, author, args.body_bytes, prefix="warmup")
        inflight = args.inflight or (1 if cfg.broker == "memory" else 100)
        await _publish(services.broker, workspace.slug, warm, inflight)
        error = await _wait_inserted(workers, len(channels), 0, args.timeout, None)
        base = sum(w.stats["inserted"] for w in workers)
        backlog_publish_s = None
        if args.backlog:  # publish with no consumer attached, then time only the consumers draining it
            for worker in workers:
                await worker.stop()
            _say(f"bench persist: publishing {args.messages} messages with the consumers stopped (--backlog)")
            started = time.perf_counter()
            await _publish(services.broker, workspace.slug, payloads, inflight)
            backlog_publish_s = time.perf_counter() - started
            workers = []
            for _ in range(args.workers):
                worker = PersistenceWorker(services)
                workers.append(worker)
            base = 0
        progress = Progress()
        t0, cpu0 = time.perf_counter(), time.process_time()
        if args.backlog:
            for worker in workers:
                await worker.start()
            publishing = asyncio.ensure_future(asyncio.sleep(0))
        else:
            publishing = asyncio.ensure_future(_publish(services.broker, workspace.slug, payloads, inflight))
        marks: dict[str, float] = {}
        if not error:
            error = await _wait_inserted(workers, args.messages, base, args.timeout, publishing, progress, marks)
        t1, cpu1 = time.perf_counter(), time.process_time()
        published_at = marks.get("published")
        progress.done(f"stored {sum(w.stats['inserted'] for w in workers) - base}/{args.messages} "
                      f"in {t1 - t0:.2f}s")
        if not publishing.done():
            publishing.cancel()
            with contextlib.suppress(BaseException):
                await publishing
        for worker in workers:
            await worker.stop()
        stats = {k: sum(w.stats[k] for w in workers) for k in workers[0].stats}
        workers = []
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
            # CPU of this process (publishers, broker, workers) over wall_s: steadier than msgs_per_s on a
            # shared machine; the database server's CPU is not included.
            "cpu_s": round(cpu1 - cpu0, 3),
            "cpu_us_per_msg": round((cpu1 - cpu0) * 1e6 / args.messages, 1),
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
