"""`storm bench store`: the SQL store's own CPU per unit of work, in this process (docs/benchmarks.md).

    storm bench store [--database-url postgresql+asyncpg://…] [--reps 1000] [--json]

The gateway's reads on a connect (the directory's misses, first sights, read states) are small units of
work, and what SQLAlchemy and the driver spend around each statement is most of their cost on the gateway.
This bench measures it alone: a throwaway workspace with 20 channels of 40 messages each and 50 users
(half of them with read markers), then, per case, ``--reps`` units of work one after another, timed with
``time.process_time()`` (this process's CPU: the bench's own loop and SQLAlchemy and asyncpg; not the
database server's) and the wall clock:

* ``read``: a unit of work running one look-up (``workspaces.get``), in a transaction;
* ``read_only``: the same in ``unit_of_work(read_only=True)`` (no transaction, docs/database.md);
* ``read_states_<n>``: ``read_markers.unread_at`` for ``n`` (user, channel, head) triples in a read-only
  unit (``n`` = 1, 16, 64: the batches of subscribes that arrive together);
* ``first_sight_<n>``: the first-sight read of ``n`` known users (``users.get_many_by_subject`` and
  ``memberships.get_many``) in a read-only unit.

Every case's answer is checked against the first one it gave (the same data, the same answer), and the
workspace is deleted at the end.  Default database: ``STORM_DATABASE_URL``, else the ``scripts/pg.sh``
cluster.  One process, no server: the figures move with the machine's load; compare runs side by side.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from storm_tools.bench.persist import database_url

REQUIRED_KEYS = ("database", "reps", "cpu_us", "wall_us")
BATCHES = (1, 16, 64)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("store", help="the SQL store's CPU per unit of work (reads of a connect), in-process")
    p.add_argument("--database-url", default=None,
                   help="async SQLAlchemy URL (default: STORM_DATABASE_URL, else the scripts/pg.sh cluster)")
    p.add_argument("--reps", type=int, default=1000, help="units of work per case (default 1000)")
    p.add_argument("--json", action="store_true", help="compact JSON on one line")


def validate(args: argparse.Namespace) -> None:
    if args.reps < 1:
        raise SystemExit("storm bench store: --reps must be >= 1")


def failed(result: dict[str, Any]) -> bool:
    return bool(result.get("error"))


def _say(text: str) -> None:
    import sys

    print(f"bench store: {text}", file=sys.stderr, flush=True)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from sqlalchemy import make_url

    from db.store import SqlStore
    from storm.errors import Unavailable

    url = database_url(args)
    store = SqlStore(url)
    try:
        await store.start()
    except Unavailable as exc:
        where = make_url(url).render_as_string(hide_password=True)
        raise SystemExit(f"storm bench store: cannot reach the database at {where} ({exc.message}); start "
                         "it with scripts/pg.sh up, or pass --database-url") from None
    try:
        _say(f"{store.dialect}+{store.driver}: seeding a throwaway workspace")
        ws, users, channels = await _seed(store)
        try:
            cases = _cases(store, ws, users, channels)
            cpu: dict[str, float] = {}
            wall: dict[str, float] = {}
            for name, (read_only, work) in cases.items():
                cpu[name], wall[name] = await _measure(store, read_only, work, args.reps)
                _say(f"{name}: {cpu[name]:.1f} µs CPU, {wall[name]:.1f} µs wall per unit of work")
        finally:
            async def drop(uow: Any) -> None:
                await uow.workspaces.delete(ws)

            await store.run(drop)
    finally:
        await store.stop()
    return {"database": f"{store.dialect}+{store.driver}", "reps": args.reps, "cpu_us": cpu, "wall_us": wall}


async def _seed(store: Any) -> tuple[uuid.UUID, list[Any], list[uuid.UUID]]:
    from storm.domain import Channel, ChannelKind, Membership, Message, ReadMarker, Role, User, Workspace

    now = datetime.now(UTC)
    ws = Workspace(id=uuid.uuid4(), slug=f"bench-store-{uuid.uuid4().hex[:12]}", name="bench", plan="pro",
                   created_at=now)
    users = [User(id=uuid.uuid4(), subject=f"bench|{uuid.uuid4().hex}", name=f"u{i}", created_at=now)
             for i in range(50)]
    channels = [uuid.uuid4() for _ in range(20)]

    async def seed(uow: Any) -> None:
        await uow.workspaces.add(ws)
        for u in users:
            await uow.users.add(u)
            await uow.memberships.add(Membership(workspace_id=ws.id, user_id=u.id, role=Role.MEMBER, created_at=now))
        for i, c in enumerate(channels):
            await uow.channels.add(Channel(id=c, workspace_id=ws.id, name=f"c{i}", kind=ChannelKind.PUBLIC,
                                           created_by=users[0].id, created_at=now))
        await uow.messages.add_many([
            Message(id=uuid.uuid4(), workspace_id=ws.id, channel_id=c, author_id=users[j % 50].id, body="x",
                    offset=j + 1, created_at=now) for c in channels for j in range(40)])
        for u in users[:25]:
            for c in channels[:10]:
                await uow.read_markers.advance(ReadMarker(workspace_id=ws.id, channel_id=c, user_id=u.id, offset=10))

    await store.run(seed)
    return ws.id, users, channels


Work = Callable[[Any], Awaitable[Any]]


def _cases(store: Any, ws: uuid.UUID, users: list[Any], channels: list[uuid.UUID]) -> dict[str, tuple[bool, Work]]:
    cases: dict[str, tuple[bool, Work]] = {
        "read": (False, lambda uow: uow.workspaces.get(ws)),
        "read_only": (True, lambda uow: uow.workspaces.get(ws)),
    }
    for n in BATCHES:
        wanted = [(users[i % len(users)].id, channels[i % len(channels)], 30) for i in range(n)]

        async def read_states(uow: Any, wanted: list[tuple[uuid.UUID, uuid.UUID, int]] = wanted) -> Any:
            return await uow.read_markers.unread_at(ws, wanted)

        cases[f"read_states_{n}"] = (True, read_states)
    for n in (1, 16):
        subjects = [u.subject for u in users[:n]]

        async def first_sight(uow: Any, subjects: list[str] = subjects) -> Any:
            known = await uow.users.get_many_by_subject(subjects)
            return known, await uow.memberships.get_many(ws, [u.id for u in known])

        cases[f"first_sight_{n}"] = (True, first_sight)
    return cases


async def _measure(store: Any, read_only: bool, work: Work, reps: int) -> tuple[float, float]:
    async with store.unit_of_work(read_only=read_only) as uow:
        expected = await work(uow)  # warm: statement caches, the pool's connection
    for _ in range(min(50, reps)):
        async with store.unit_of_work(read_only=read_only) as uow:
            await work(uow)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(reps):
        async with store.unit_of_work(read_only=read_only) as uow:
            got = await work(uow)
        if got != expected:
            raise AssertionError(f"a unit of work answered {got!r}, the first answered {expected!r}")
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return round(cpu * 1e6 / reps, 1), round(wall * 1e6 / reps, 1)
