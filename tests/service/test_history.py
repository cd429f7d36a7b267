"""History is built in one place (storm/protocol/chat.py): the WebSocket ``history`` command and
``GET /v1/workspaces/{slug}/channels/{id}/messages`` return the same messages, field for field, including
for a message whose author has no user record (``author_name`` is ``""`` on both; docs/protocol.md,
docs/tenants-api.md)."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from gateway.hub import Hub
from storm.domain import Message, Reaction
from storm.protocol.chat import UNKNOWN_AUTHOR
from storm.protocol.events import HistoryMessage
from storm.protocol.session import Session, SessionContext, State
from tenants.service import decode_cursor
from tests.service.conftest import TenantsApi
from tests.service.test_session import ListTransport


@pytest.fixture
async def ws_ctx(tenants_api: TenantsApi) -> AsyncIterator[SessionContext]:
    """A session context on the tenants API's services: both ways in read the same store."""
    s = tenants_api.services
    hub = Hub(s.broker, s.clock, sweep_interval_s=3600)
    await hub.start()
    try:
        yield SessionContext(config=s.config, clock=s.clock, broker=s.broker, cache=s.cache, store=s.store,
                             identity=s.identity, directory=s.directory, hub=hub)
    finally:
        await hub.stop()


async def _seed(api: TenantsApi, slug: str, channel_id: str, bob: uuid.UUID) -> dict[str, uuid.UUID]:
    """Four messages: bob's plain one, one by a user the store does not know, an edited reply with
    reactions, and a deleted one."""
    start = datetime(2026, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC)
    ghost = uuid.uuid4()  # no user row: an author_id the users table does not hold
    ids = {name: uuid.uuid4() for name in ("plain", "ghost", "reply", "deleted")}
    async with api.services.store.unit_of_work() as uow:
        ws = await uow.workspaces.get_by_slug(slug)
        assert ws is not None
        channel = uuid.UUID(channel_id)
        rows = [
            Message(ids["plain"], ws.id, channel, bob, "hello", 1, start, client_msg_id="c1"),
            Message(ids["ghost"], ws.id, channel, ghost, "boo", 2, start + timedelta(seconds=1)),
            Message(ids["reply"], ws.id, channel, bob, "a reply", 3, start + timedelta(seconds=2),
                    client_msg_id="c3", thread_id=ids["plain"]),
            Message(ids["deleted"], ws.id, channel, bob, "oops", 4, start + timedelta(seconds=3)),
        ]
        assert await uow.messages.add_many(rows) == len(rows)
        assert await uow.messages.edit(ws.id, ids["reply"], "a reply (edited)", start + timedelta(seconds=5))
        await uow.reactions.add(Reaction(ws.id, ids["reply"], bob, "tada"))
        await uow.reactions.add(Reaction(ws.id, ids["reply"], ghost, "tada"))
        await uow.messages.delete(ws.id, ids["deleted"], start + timedelta(seconds=6))
        await uow.commit()
    return ids


def _full(message: dict[str, Any]) -> dict[str, Any]:
    """A WebSocket history message with its omitted defaults filled in, as a plain dict."""
    return msgspec.structs.asdict(msgspec.convert(message, HistoryMessage))


async def test_websocket_and_rest_history_agree_field_for_field(tenants_api: TenantsApi, ws_ctx: SessionContext):
    api = tenants_api
    await api.workspace("acme")
    bob = await api.member("acme", "bob")
    ch = await api.channel("acme", "general")
    ids = await _seed(api, "acme", ch["id"], bob)

    t = ListTransport()
    session = Session(ws_ctx, t)
    await session.receive(json.dumps({"op": "auth", "token": api.token("bob", "acme")}))
    assert session.state is State.OPEN, t.events
    for limit in (3, 10):
        await session.receive(json.dumps({"op": "history", "id": 1, "channel": ch["id"], "limit": limit}))
        (page,) = t.take("history")
        r = await api.get(f"/v1/workspaces/acme/channels/{ch['id']}/messages", as_="bob",
                          query_string={"limit": limit})
        assert r.status == 200, r.body
        assert [_full(m) for m in page["messages"]] == r.body["messages"]
        cursor = r.body["next_cursor"]
        assert page.get("next_before") == (decode_cursor(cursor) if cursor else None)

    by_id = {uuid.UUID(m["id"]): m for m in r.body["messages"]}
    assert by_id[ids["ghost"]]["author_name"] == UNKNOWN_AUTHOR == ""
    assert by_id[ids["plain"]]["author_name"] == "Bob"
    reply = by_id[ids["reply"]]
    assert reply["text"] == "a reply (edited)" and reply["thread"] == str(ids["plain"])
    assert reply["reactions"] == {"tada": 2} and reply["edited_ts"] is not None
    assert by_id[ids["deleted"]]["deleted"] is True and by_id[ids["deleted"]]["text"] == ""
    assert by_id[ids["plain"]]["ts"] == datetime(2026, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC).timestamp()
