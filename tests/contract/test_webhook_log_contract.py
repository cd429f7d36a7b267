"""The webhook delivery log's retention, the same on every store adapter (memory, SQLite, PostgreSQL):
``prune_deliveries`` drops one webhook's entries older than a moment and nothing else.  The rest of the
webhook repository is in tests/contract/test_store_contract.py."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from storm.domain import Workspace
from storm.ports.store import Store, UnitOfWork
from storm.webhooks import DeliveryAttempt, DeliveryStatus, Webhook

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


async def test_pruning_drops_only_the_webhooks_old_entries(store: Store) -> None:
    ws, other_ws = (Workspace(id=uuid.uuid4(), slug=f"p-{uuid.uuid4().hex[:8]}", name="P", plan="free")
                    for _ in range(2))
    hook = Webhook(uuid.uuid4(), ws.id, "https://a.example/", "whsec_a", ("message.posted",), created_at=T0)
    sibling = Webhook(uuid.uuid4(), ws.id, "https://b.example/", "whsec_b", ("message.posted",), created_at=T0)
    theirs = Webhook(uuid.uuid4(), other_ws.id, "https://c.example/", "whsec_c", ("message.posted",),
                     created_at=T0)

    def entry(h: Webhook, minutes: int) -> DeliveryAttempt:
        return DeliveryAttempt(uuid.uuid4(), h.workspace_id, h.id, f"e{minutes}", "message.posted", 1,
                               DeliveryStatus.DELIVERED, 200, "", 3, at=T0 + timedelta(minutes=minutes))

    async def arrange(uow: UnitOfWork) -> None:
        for w in (ws, other_ws):
            await uow.workspaces.add(w)
        for h in (hook, sibling, theirs):
            await uow.webhooks.add(h)
            for minutes in (0, 10, 20):
                await uow.webhooks.log_delivery(entry(h, minutes))

    await store.run(arrange)

    async def prune(uow: UnitOfWork) -> int:
        # another workspace's id with this hook's id prunes nothing
        assert await uow.webhooks.prune_deliveries(other_ws.id, hook.id, T0 + timedelta(hours=1)) == 0
        return await uow.webhooks.prune_deliveries(ws.id, hook.id, T0 + timedelta(minutes=15))

    assert await store.run(prune) == 2
    async with store.unit_of_work() as uow:
        assert [d.event_id for d in await uow.webhooks.deliveries(ws.id, hook.id, limit=10)] == ["e20"]
        assert len(await uow.webhooks.deliveries(ws.id, sibling.id, limit=10)) == 3
        assert len(await uow.webhooks.deliveries(other_ws.id, theirs.id, limit=10)) == 3
