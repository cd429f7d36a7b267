"""The run's workspaces, users and channels in the database, from the planned population (population.py).

Each workspace is created through tenants/service.py (its Pulsar tenant and namespaces included, plan
``enterprise``: 100 000 connections and 20 000 messages/s, above what the profile offers), as an owner would;
users, memberships, channels and channel memberships are then inserted in bulk (what ``storm bench e2e``
does: thousands of POSTs to the tenants API would take longer than the run), and the channels' topics are
created up front.  :func:`unprovision` deletes the workspaces' Pulsar tenants at the end (the rows go with the
run's database).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from storm_tools.day.population import Population

if TYPE_CHECKING:
    from storm.bootstrap import Services

PLAN = "enterprise"
BATCH = 5000


@dataclass
class Provisioned:
    slugs: list[str]  # by workspace index
    channel_ids: list[list[str]]  # [workspace][channel index]
    names: list[str]  # rank -> user name (the dev token's subject is dev|<name>)


async def provision(services: Services, population: Population, prefix: str, run: str) -> Provisioned:
    from datetime import UTC, datetime

    from db import models as m
    from storm.ports.broker import ChannelPreparer
    from storm.ports.identity import Claims
    from storm_tools.bench.database import sql_transaction
    from tenants import service

    names = [f"{run}u{rank}" for rank in range(len(population.workspace_of))]
    slugs: list[str] = []
    channel_ids: list[list[str]] = []
    now = datetime.now(UTC)
    for ws in population.workspaces:
        slug = f"{prefix}w{ws.index}"
        owner_name = names[ws.users[0]]
        claims = Claims(subject=f"dev|{owner_name}", workspace="*", name=owner_name, expires_at=time.time() + 3600,
                        scopes=frozenset({"chat", service.CREATE_SCOPE}), token_id=uuid.uuid4().hex)
        view = await service.create_workspace(services, claims, slug=slug, name=f"storm day {run} #{ws.index}",
                                              plan=PLAN)
        ws_id = view.workspace.id
        owner = await services.directory.resolve_user(claims)
        user_ids = {ws.users[0]: owner.id, **{rank: uuid.uuid4() for rank in ws.users[1:]}}
        ids = [uuid.uuid4() for _ in ws.channels]
        async with sql_transaction(services.config.database_url) as conn:
            others = ws.users[1:]
            for start in range(0, len(others), BATCH):
                part = others[start:start + BATCH]
                await conn.execute(m.users.insert(), [{"id": user_ids[r], "subject": f"dev|{names[r]}",
                                                       "name": names[r], "created_at": now} for r in part])
                await conn.execute(m.memberships.insert(), [{"workspace_id": ws_id, "user_id": user_ids[r],
                                                             "role": "member", "created_at": now} for r in part])
            if ids:
                await conn.execute(m.channels.insert(), [
                    {"id": cid, "workspace_id": ws_id, "name": c.name, "kind": c.kind, "archived": False,
                     "created_by": owner.id, "created_at": now} for cid, c in zip(ids, ws.channels, strict=True)])
            rows = [{"workspace_id": ws_id, "channel_id": cid, "user_id": user_ids[r]}
                    for cid, c in zip(ids, ws.channels, strict=True) if c.kind != "public" for r in c.members]
            for start in range(0, len(rows), BATCH):
                await conn.execute(m.channel_members.insert(), rows[start:start + BATCH])
        broker = services.broker
        if isinstance(broker, ChannelPreparer):  # Pulsar: the topics up front, not on the first publish
            await _ensure_topics(broker, slug, ids)
        slugs.append(slug)
        channel_ids.append([str(c) for c in ids])
    return Provisioned(slugs, channel_ids, names)


async def _ensure_topics(broker: Any, slug: str, ids: list[uuid.UUID]) -> None:
    gate = asyncio.Semaphore(16)

    async def one(cid: uuid.UUID) -> None:
        async with gate:
            await broker.ensure_channel(slug, str(cid))

    await asyncio.gather(*(one(cid) for cid in ids))


async def unprovision(services: Services, slugs: list[str]) -> list[str]:
    """Delete the Pulsar tenants of the run's workspaces (best effort; the failures are returned)."""
    failed = []
    for slug in slugs:
        try:
            await services.broker.delete_workspace(slug)
        except Exception as exc:  # reported, not fatal: the run's figures are what matters
            failed.append(f"{slug}: {exc}"[:200])
    return failed


async def stored_rows(database_url: str, slugs: list[str]) -> list[tuple[str, str, str, int]]:
    """(cmid, message id, channel id, offset) of every stored message with a cmid in the run's workspaces."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(text(
                'SELECT m.client_msg_id, m.id, m.channel_id, m."offset" FROM messages m JOIN workspaces w '
                "ON w.id = m.workspace_id WHERE w.slug = ANY(:slugs) AND m.client_msg_id IS NOT NULL"),
                {"slugs": slugs})
            return [(str(a), str(b), str(c), int(d)) for a, b, c, d in rows]
    finally:
        with contextlib.suppress(Exception):
            await engine.dispose()


def check(acked: list[list[Any]], rows: list[tuple[str, str, str, int]], delivery: dict[str, int],
          connect_attempts: int, connect_success: int) -> dict[str, Any]:
    """checks.json: every acked message against the database (lost, stored twice or under another id, sender
    order), plus what the receivers saw (duplicate deliveries, offsets going back)."""
    from storm_tools.chaos.judge import cmid_seq

    stored: dict[str, list[tuple[str, str, int]]] = {}
    for cmid, mid, channel, offset in rows:
        stored.setdefault(cmid, []).append((mid, channel, offset))
    acked_by_cmid = {a[0]: a for a in acked}
    lost = [cmid for cmid in acked_by_cmid if cmid not in stored]
    twice = [cmid for cmid in acked_by_cmid if len(stored.get(cmid, [])) > 1]
    other_id = [cmid for cmid, a in acked_by_cmid.items()
                if cmid in stored and a[1] not in {s[0] for s in stored[cmid]}]
    # sender order: a sender's messages in one channel are stored at increasing offsets in send order
    by_sender: dict[tuple[str, str], list[tuple[int, int, str]]] = {}
    for cmid, entries in stored.items():
        parsed = cmid_seq(cmid)
        if parsed is None or cmid not in acked_by_cmid:
            continue
        mid, channel, offset = entries[0]
        by_sender.setdefault((parsed[0], channel), []).append((parsed[1], offset, cmid))
    inverted = []
    for seq_offsets in by_sender.values():
        seq_offsets.sort()
        for (_, a, _), (_, b, cmid) in itertools.pairwise(seq_offsets):
            if b <= a:
                inverted.append(cmid)
    duplicates = len(twice) + len(other_id) + int(delivery.get("delivery_duplicates", 0))
    inversions = len(inverted) + int(delivery.get("delivery_inversions", 0))
    return {
        "acked": len(acked_by_cmid), "stored": sum(1 for cmid in acked_by_cmid if cmid in stored),
        "lost": len(lost), "duplicates": duplicates, "inversions": inversions,
        "stored_exactly_once": not lost and not twice and not other_id,
        "connect_attempts": connect_attempts, "connect_success": connect_success,
        "detail": {"stored_twice": len(twice), "stored_under_other_id": len(other_id),
                   "sender_order_inversions": len(inverted),
                   "delivery_duplicates": int(delivery.get("delivery_duplicates", 0)),
                   "delivery_inversions": int(delivery.get("delivery_inversions", 0)),
                   "acked_records": len(acked)},
        "examples": {"lost": sorted(lost)[:10], "duplicates": sorted(twice + other_id)[:10],
                     "inversions": sorted(inverted)[:10]},
    }
