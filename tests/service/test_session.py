"""The session core driven without sockets: embedded adapters, a SQLite store, a list as transport.

Each test reads like a client conversation: frames in, events out (docs/protocol.md).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest

from consumers.persistence import PersistenceWorker
from storm.adapters.dev_identity import DevIdentity
from storm.bootstrap import Services
from storm.domain import Channel, ChannelKind, Role, Workspace
from storm.ports.clock import ManualClock
from storm.protocol.codes import CloseCode
from storm.protocol.session import MAX_BAD_FRAMES, Session, SessionContext, State
from storm_tools.seed import DEMO_WORKSPACE, channel_id
from tests.support.asyncapi import validate_server_event

GENERAL = channel_id(DEMO_WORKSPACE, "general")
RANDOM = channel_id(DEMO_WORKSPACE, "random")


class ListTransport:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None

    def send(self, data: bytes) -> bool:
        for part in data.split(b"\n"):
            event = json.loads(part)
            validate_server_event(event)  # every event a session emits matches the AsyncAPI schema
            self.events.append(event)
        return True

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def take(self, type_: str | None = None) -> list[dict[str, Any]]:
        out = [e for e in self.events if type_ is None or e["type"] == type_]
        self.events = [e for e in self.events if not (type_ is None or e["type"] == type_)]
        return out


def token(services: Services, user: str = "alice", workspace: str = DEMO_WORKSPACE, **kw: Any) -> str:
    return DevIdentity(services.config.dev_secret).issue(f"dev|{user}", workspace, user.title(), **kw)


async def connect(ctx: SessionContext, services: Services, user: str = "alice") -> tuple[Session, ListTransport]:
    t = ListTransport()
    s = Session(ctx, t)
    await s.receive(json.dumps({"op": "auth", "token": token(services, user)}))
    assert s.state is State.OPEN, t.events
    hello = t.take("hello")
    assert hello and hello[0]["workspace"] == DEMO_WORKSPACE
    return s, t


async def send(s: Session, **frame: Any) -> None:
    await s.receive(json.dumps(frame))


async def test_hello_after_auth_with_user_and_limits(ctx, services):
    t = ListTransport()
    s = Session(ctx, t)
    await send(s, op="auth", token=token(services, "bob"))
    (hello,) = t.take("hello")
    assert hello["user"]["name"] == "Bob"
    assert hello["limits"]["max_subscriptions"] == 3
    assert hello["heartbeat_s"] == services.config.heartbeat_s


@pytest.mark.parametrize("frame", [
    {"op": "ping"},
    {"op": "auth", "token": "not-a-jwt"},
])
async def test_anything_but_a_valid_auth_first_closes_4001(ctx, frame):
    t = ListTransport()
    s = Session(ctx, t)
    await send(s, **frame)
    assert t.closed and t.closed[0] == CloseCode.UNAUTHENTICATED
    assert t.take("error")[0]["code"] == "unauthenticated"


async def test_expired_token_and_token_of_unknown_workspace_are_refused(ctx, services):
    for bad in (token(services, ttl_s=-60), token(services, workspace="nowhere")):
        t = ListTransport()
        s = Session(ctx, t)
        await send(s, op="auth", token=bad)
        assert t.closed and t.closed[0] == CloseCode.UNAUTHENTICATED


async def test_non_member_cannot_open_a_session(ctx, services):
    t = ListTransport()
    s = Session(ctx, t)
    await send(s, op="auth", token=token(services, "mallory"))
    assert t.closed and t.closed[0] == CloseCode.UNAUTHENTICATED


async def test_auth_timeout_and_idle_timeout(ctx, services):
    clock: ManualClock = services.clock  # type: ignore[assignment]
    t = ListTransport()
    s = Session(ctx, t)
    clock.advance(services.config.auth_timeout_s - 0.1)
    s.check_deadlines(clock.monotonic())
    assert t.closed is None
    clock.advance(0.2)
    s.check_deadlines(clock.monotonic())
    assert t.closed and t.closed[0] == CloseCode.AUTH_TIMEOUT

    s2, t2 = await connect(ctx, services)
    clock.advance(services.config.idle_timeout_s - 1)
    await send(s2, op="ping", id=7)
    assert t2.take("pong")[0]["id"] == 7
    clock.advance(services.config.idle_timeout_s - 1)
    s2.check_deadlines(clock.monotonic(), clock.time())  # as the hub sweeps: the quick path first
    assert t2.closed is None  # the ping counted as activity
    clock.advance(2)
    s2.check_deadlines(clock.monotonic(), clock.time())  # as the hub sweeps: the quick path first
    assert t2.closed and t2.closed[0] == CloseCode.IDLE_TIMEOUT


async def test_an_auth_that_came_in_time_but_verifies_slowly_is_closed_reconnectable_not_4003(ctx, services,
                                                                                               monkeypatch):
    """Under a reconnect storm the gateway may take longer than auth_timeout_s to verify a token that came at
    once.  That is the server's overload, not the client's fault: 1011 (reconnect with backoff), never 4003,
    which is final for clients (the chaos connect-spike lost an SDK client that way)."""
    clock: ManualClock = services.clock  # type: ignore[assignment]
    release = asyncio.Event()
    verify = ctx.identity.verify

    async def slow_verify(tok: str) -> Any:
        await release.wait()
        return await verify(tok)

    monkeypatch.setattr(ctx.identity, "verify", slow_verify)
    t = ListTransport()
    s = Session(ctx, t)
    clock.advance(services.config.auth_timeout_s - 1)
    auth = asyncio.create_task(send(s, op="auth", token=token(services)))
    await asyncio.sleep(0)
    clock.advance(1.5)  # past the deadline counted from the upgrade: the auth frame came before it
    s.check_deadlines(clock.monotonic())
    assert t.closed is None
    clock.advance(services.config.auth_timeout_s)  # the verification itself overran the budget
    s.check_deadlines(clock.monotonic())
    release.set()
    await auth
    assert t.closed and t.closed[0] == CloseCode.INTERNAL
    assert t.take("error")[0]["code"] == "unavailable"
    assert s.state is State.CLOSED and not t.take("hello")


async def test_publish_is_acked_with_offset_and_delivered_once_to_every_subscriber(ctx, services):
    a, ta = await connect(ctx, services, "alice")
    b, tb = await connect(ctx, services, "bob")
    await send(a, op="subscribe", id=1, channel=GENERAL)
    await send(b, op="subscribe", id=1, channel=GENERAL)
    assert ta.take("subscribed")[0]["offset"] == 0
    await send(a, op="publish", id=2, channel=GENERAL, cmid="m1", text="hi bob")
    (ack,) = ta.take("ack")
    assert ack["offset"] == 1 and ack["cmid"] == "m1" and ack["id"] == 2
    (msg,) = tb.take("message")
    assert msg["text"] == "hi bob" and msg["offset"] == 1 and msg["id"] == ack["message_id"]
    assert msg["author_name"] == "Alice"
    assert len(ta.take("message")) == 1


async def test_retry_with_same_cmid_returns_the_original_ack_and_no_second_message(ctx, services):
    a, ta = await connect(ctx, services)
    await send(a, op="subscribe", id=1, channel=GENERAL)
    await send(a, op="publish", id=2, channel=GENERAL, cmid="same", text="once")
    await send(a, op="publish", id=3, channel=GENERAL, cmid="same", text="once")
    first, second = ta.take("ack")
    assert second["duplicate"] is True and second["message_id"] == first["message_id"]
    assert len(ta.take("message")) == 1
    # a reconnecting client (new session) retrying the same cmid is deduplicated too
    a2, ta2 = await connect(ctx, services)
    await send(a2, op="publish", id=1, channel=GENERAL, cmid="same", text="once")
    assert ta2.take("ack")[0]["duplicate"] is True
    assert await services.broker.head(DEMO_WORKSPACE, GENERAL) == 1


async def test_resubscribe_with_since_replays_the_gap_without_duplicates(ctx, services):
    a, ta = await connect(ctx, services)
    for i in range(5):
        await services.broker.publish(DEMO_WORKSPACE, GENERAL, b'{"type":"message","channel":"%s","id":"x%d",'
                                      b'"author":"a","author_name":"A","text":"t%d","ts":1.0}'
                                      % (GENERAL.encode(), i, i))
    await send(a, op="subscribe", id=1, channel=GENERAL, since=2)
    (sub,) = ta.take("subscribed")
    assert sub["offset"] == 5 and sub["replayed"] == 3 and sub.get("recovered", True) is True
    assert [m["offset"] for m in ta.take("message")] == [3, 4, 5]
    await services.broker.publish(DEMO_WORKSPACE, GENERAL, b'{"type":"message","channel":"%s","id":"x9",'
                                  b'"author":"a","author_name":"A","text":"t","ts":1.0}' % GENERAL.encode())
    assert [m["offset"] for m in ta.take("message")] == [6]


async def test_subscribing_again_with_since_replays_what_was_delivered_live_before(ctx, services):
    """The chat page follows every channel on one socket but shows only the open one: a message of another
    channel reaches it live and is only counted as unread.  Opening that channel reads history, which may not
    hold the newest message yet (persistence lags the broker), then subscribes again with ``since`` = the
    page's offset.  The server must replay from that ``since`` (docs/protocol.md: subscribing again acts as a
    resume from ``since``), not from what this subscription delivered before, or the message is never shown
    (CI, 2026-12-07: test_unread_badges_and_switching_channels_on_one_socket)."""
    a, ta = await connect(ctx, services)
    await send(a, op="subscribe", id=1, channel=GENERAL)
    ta.take("subscribed")
    for i in range(3):
        await services.broker.publish(DEMO_WORKSPACE, GENERAL, b'{"type":"message","channel":"%s","id":"x%d",'
                                      b'"author":"a","author_name":"A","text":"t%d","ts":1.0}'
                                      % (GENERAL.encode(), i, i))
    assert [m["offset"] for m in ta.take("message")] == [1, 2, 3]  # live, before the channel is opened
    await send(a, op="subscribe", id=2, channel=GENERAL, since=1)  # the page's history reflected offset 1
    (sub,) = ta.take("subscribed")
    assert sub["offset"] == 3 and sub["replayed"] == 2
    assert [m["offset"] for m in ta.take("message")] == [2, 3]
    await services.broker.publish(DEMO_WORKSPACE, GENERAL, b'{"type":"message","channel":"%s","id":"x9",'
                                  b'"author":"a","author_name":"A","text":"t","ts":1.0}' % GENERAL.encode())
    assert [m["offset"] for m in ta.take("message")] == [4]  # live again, once
    await send(a, op="subscribe", id=3, channel=GENERAL)  # again without `since`: nothing is replayed
    assert ta.take("subscribed")[0].get("replayed", 0) == 0 and ta.take("message") == []


async def test_since_older_than_retention_says_not_recovered(ctx, services):
    a, ta = await connect(ctx, services)
    for i in range(30):  # retention in this fixture: 20 entries
        await services.broker.publish(DEMO_WORKSPACE, GENERAL, b'{"type":"message","channel":"%s","id":"x%d",'
                                      b'"author":"a","author_name":"A","text":"t","ts":1.0}'
                                      % (GENERAL.encode(), i))
    await send(a, op="subscribe", id=1, channel=GENERAL, since=1)
    (sub,) = ta.take("subscribed")
    assert sub["recovered"] is False
    offsets = [m["offset"] for m in ta.take("message")]
    assert offsets == list(range(11, 31))


async def test_gap_wider_than_the_replay_window_replays_nothing_and_says_not_recovered(ctx, services, monkeypatch):
    from storm.protocol import subscriptions

    monkeypatch.setattr(subscriptions, "REPLAY_MAX", 5)
    a, ta = await connect(ctx, services)
    for i in range(12):
        await services.broker.publish(DEMO_WORKSPACE, GENERAL, b'{"type":"message","channel":"%s","id":"x%d",'
                                      b'"author":"a","author_name":"A","text":"t","ts":1.0}'
                                      % (GENERAL.encode(), i))
    await send(a, op="subscribe", id=1, channel=GENERAL, since=3)  # 9 missed > 5: a partial replay would leave a hole
    (sub,) = ta.take("subscribed")
    assert sub["recovered"] is False and sub.get("replayed", 0) == 0 and sub["offset"] == 12
    assert ta.take("message") == []


async def test_live_events_during_replay_are_held_back_and_deduplicated(ctx, services):
    a, ta = await connect(ctx, services)
    await services.broker.publish(DEMO_WORKSPACE, GENERAL, b'{"type":"message","channel":"%s","id":"early",'
                                  b'"author":"a","author_name":"A","text":"t","ts":1.0}' % GENERAL.encode())
    sub_state: Any = None

    real_head = services.broker.head

    async def head_then_publish(ws: str, ch: str) -> int:
        # a message arrives between the hub join and the head read: it must appear exactly once
        nonlocal sub_state
        await services.broker.publish(ws, ch, b'{"type":"message","channel":"%s","id":"late","author":"a",'
                                      b'"author_name":"A","text":"t","ts":1.0}' % ch.encode())
        sub_state = a.subscriptions.channels[GENERAL].replaying
        return await real_head(ws, ch)

    services.broker.head = head_then_publish  # type: ignore[method-assign]
    try:
        await send(a, op="subscribe", id=1, channel=GENERAL, since=0)
    finally:
        services.broker.head = real_head  # type: ignore[method-assign]
    assert sub_state is True
    assert [m["offset"] for m in ta.take("message")] == [1, 2]


async def test_rate_limit_rejects_publishes_beyond_the_bucket(ctx, services):
    a, ta = await connect(ctx, services)
    for i in range(5):  # burst 3
        await send(a, op="publish", id=i, channel=GENERAL, cmid=f"r{i}", text="x")
    assert len(ta.take("ack")) == 3
    errors = ta.take("error")
    assert [e["code"] for e in errors] == ["rate_limited", "rate_limited"]
    services.clock.advance(1.0)  # type: ignore[attr-defined]
    await send(a, op="publish", id=9, channel=GENERAL, cmid="r9", text="x")
    assert len(ta.take("ack")) == 1


async def test_subscription_limit(ctx, services):
    a, ta = await connect(ctx, services)
    chans = [channel_id(DEMO_WORKSPACE, n) for n in ("general", "random", "bench")]
    for i, ch in enumerate(chans):
        await send(a, op="subscribe", id=i, channel=ch)
    assert len(ta.take("subscribed")) == 3
    async with services.store.unit_of_work() as uow:
        ws = await uow.workspaces.get_by_slug(DEMO_WORKSPACE)
        assert ws is not None
        extra = Channel(id=uuid.uuid4(), workspace_id=ws.id, name="extra")
        await uow.channels.add(extra)
        await uow.commit()
    await send(a, op="subscribe", id=9, channel=str(extra.id))
    assert ta.take("error")[0]["code"] == "too_many_subscriptions"


async def test_bad_frames_get_errors_and_repeated_garbage_closes(ctx, services):
    a, ta = await connect(ctx, services)
    await a.receive("{not json")
    await send(a, op="publish", id=3, channel=GENERAL)
    await send(a, op="publish", id=4, channel=GENERAL, cmid="x", text="y" * 4001)
    await send(a, op="teleport", id=5)
    codes = [(e["code"], e.get("field"), e.get("id")) for e in ta.take("error")]
    assert codes == [("malformed", None, None), ("bad_request", "cmid", 3), ("bad_request", "text", 4),
                     ("unknown_op", "op", 5)]
    assert a.state is State.OPEN
    for _ in range(MAX_BAD_FRAMES):
        await a.receive(b"\xff\xfe")
    assert ta.closed and ta.closed[0] == CloseCode.PROTOCOL_VIOLATION


async def test_frame_over_the_limit_is_refused(ctx, services):
    a, ta = await connect(ctx, services)
    await a.receive("x" * (services.config.max_frame_bytes + 1))
    assert ta.take("error")[0]["code"] == "too_large"


async def test_channel_of_another_workspace_is_invisible(ctx, services):
    async with services.store.unit_of_work() as uow:
        other = Workspace(id=uuid.uuid4(), slug="other", name="Other")
        await uow.workspaces.add(other)
        secret = Channel(id=uuid.uuid4(), workspace_id=other.id, name="secret")
        await uow.channels.add(secret)
        await uow.commit()
    a, ta = await connect(ctx, services)
    for frame in ({"op": "subscribe"}, {"op": "publish", "cmid": "x", "text": "hi"}, {"op": "history"},
                  {"op": "presence"}, {"op": "typing"}):
        await send(a, id=1, channel=str(secret.id), **frame)
    errors = ta.take("error")
    assert [e["code"] for e in errors] == ["not_found"] * 5
    assert await services.broker.head("other", str(secret.id)) == 0


async def test_private_channel_needs_channel_membership(ctx, services):
    async with services.store.unit_of_work() as uow:
        ws = await uow.workspaces.get_by_slug(DEMO_WORKSPACE)
        bob = await uow.users.get_by_subject("dev|bob")
        assert ws and bob
        private = Channel(id=uuid.uuid4(), workspace_id=ws.id, name="private", kind=ChannelKind.PRIVATE)
        await uow.channels.add(private)
        await uow.channels.add_member(ws.id, private.id, bob.id)
        await uow.commit()
    a, ta = await connect(ctx, services, "alice")
    b, tb = await connect(ctx, services, "bob")
    await send(a, op="subscribe", id=1, channel=str(private.id))
    assert ta.take("error")[0]["code"] == "not_found"
    await send(b, op="subscribe", id=1, channel=str(private.id))
    assert tb.take("subscribed")


async def test_a_removal_racing_a_subscribe_does_not_let_the_subscription_through(ctx, services, monkeypatch):
    """The control event of a removal from a private channel lands while a subscribe to it is between its
    access check (answered from a stale cache, say) and joining: the subscribe is refused."""
    b, tb = await connect(ctx, services, "bob")
    check = ctx.directory.check_channel_access

    async def check_then_removed(p: Any, channel: str, **kw: Any) -> Any:
        ch = await check(p, channel, **kw)
        b.withdrawn(str(ch.id))  # what the ControlRouter calls when the control event arrives
        return ch

    monkeypatch.setattr(ctx.directory, "check_channel_access", check_then_removed)
    await send(b, op="subscribe", id=1, channel=GENERAL)
    assert tb.take("error")[0]["code"] == "not_found"
    assert GENERAL not in b.subscriptions.channels and not tb.take("subscribed")
    monkeypatch.setattr(ctx.directory, "check_channel_access", check)
    await send(b, op="subscribe", id=2, channel=GENERAL)  # a later subscribe is judged afresh
    assert tb.take("subscribed")[0]["id"] == 2
    b.withdrawn(RANDOM)  # not subscribed and idle: nothing to do, nothing remembered
    assert not tb.take("unsubscribed") and b.subscriptions._withdrawn is None


async def test_a_withdrawn_subscription_stops_its_events_and_leaves_presence(ctx, services):
    a, ta = await connect(ctx, services, "alice")
    b, tb = await connect(ctx, services, "bob")
    for s_, t_ in ((a, ta), (b, tb)):
        await send(s_, op="subscribe", id=1, channel=GENERAL)
        assert t_.take("subscribed")
    await _events(ta, "presence.join")
    ta.take()
    b.withdrawn(GENERAL)
    assert tb.take("unsubscribed") == [{"type": "unsubscribed", "channel": GENERAL, "reason": "removed"}]
    for _ in range(100):
        if ta.events:
            break
        await asyncio.sleep(0.01)
    assert [e["type"] for e in ta.take()] == ["presence.leave"]  # coalesced: after STORM_PRESENCE_COALESCE_S
    await send(a, op="publish", id=2, channel=GENERAL, cmid="m-1", text="bob is gone")
    assert ta.take("ack") and not tb.take("message")
    await b.closed()  # teardown after a withdrawal is clean


async def test_typing_is_broadcast_and_throttled(ctx, services):
    a, ta = await connect(ctx, services, "alice")
    b, _tb = await connect(ctx, services, "bob")
    await send(a, op="subscribe", channel=GENERAL)
    await send(b, op="typing", channel=GENERAL)
    await send(b, op="typing", channel=GENERAL)
    assert [e["name"] for e in ta.take("typing")] == ["Bob"]
    services.clock.advance(2.5)  # type: ignore[attr-defined]
    await send(b, op="typing", channel=GENERAL)
    assert len(ta.take("typing")) == 1


async def _events(t: ListTransport, type_: str) -> list[dict[str, Any]]:
    """The events of that type once one has come (announcements are coalesced: they come a moment later)."""
    for _ in range(200):
        if any(e["type"] == type_ for e in t.events):
            break
        await asyncio.sleep(0.01)
    return t.take(type_)


async def test_presence_join_leave_and_query(ctx, services):
    a, ta = await connect(ctx, services, "alice")
    await send(a, op="subscribe", channel=GENERAL)
    b, _tb = await connect(ctx, services, "bob")
    await send(b, op="subscribe", channel=GENERAL)
    joins = await _events(ta, "presence.join")  # both joins of the window in one event
    assert [[u["name"] for u in j["users"]] for j in joins] == [["Alice", "Bob"]]
    await send(a, op="presence", id=3, channel=GENERAL)
    (p,) = ta.take("presence")
    assert sorted(u["name"] for u in p["users"]) == ["Alice", "Bob"]
    assert p["count"] == 2 and p["broadcast"] is True and "next_cursor" not in p
    await b.closed()
    assert [[u["name"] for u in e["users"]] for e in await _events(ta, "presence.leave")] == [["Bob"]]
    online = await services.cache.presence_list(DEMO_WORKSPACE, "_workspace")
    assert [u.name for u in online] == ["Alice"]


async def test_history_edit_delete_react_and_read_markers(ctx, services):
    worker = PersistenceWorker(services)
    await worker.start()
    try:
        a, ta = await connect(ctx, services, "alice")
        b, tb = await connect(ctx, services, "bob")
        await send(a, op="subscribe", channel=GENERAL)
        for i in range(3):
            await send(a, op="publish", id=i, channel=GENERAL, cmid=f"h{i}", text=f"m{i}")
        acks = ta.take("ack")
        services.clock.advance(1)  # type: ignore[attr-defined]
        await _until_stored(services, 3)
        await send(a, op="history", id=10, channel=GENERAL, limit=2)
        (page,) = ta.take("history")
        assert [m["text"] for m in page["messages"]] == ["m2", "m1"] and page["next_before"] == 2
        await send(a, op="history", id=11, channel=GENERAL, limit=2, before=2)
        (page2,) = ta.take("history")
        assert [m["text"] for m in page2["messages"]] == ["m0"] and "next_before" not in page2

        target = acks[0]["message_id"]
        await send(b, op="edit", id=1, channel=GENERAL, message_id=target, text="hacked")
        assert tb.take("error")[0]["code"] == "forbidden"
        await send(a, op="edit", id=2, channel=GENERAL, message_id=target, text="m0 (edited)")
        await send(b, op="react", id=3, channel=GENERAL, message_id=target, emoji="👍")
        await send(a, op="delete", id=4, channel=GENERAL, message_id=acks[1]["message_id"])
        live = ta.take()
        kinds = [e["type"] for e in live if e["type"] in ("edit", "reaction", "delete")]
        assert kinds == ["edit", "reaction", "delete"]
        await _until_stored(services, 3, edits=True)
        await send(a, op="history", id=12, channel=GENERAL, limit=10)
        msgs = {m["offset"]: m for m in ta.take("history")[0]["messages"]}
        assert msgs[1]["text"] == "m0 (edited)" and msgs[1]["reactions"] == {"👍": 1}
        assert msgs[2]["deleted"] is True and msgs[2]["text"] == ""

        await send(a, op="read", id=20, channel=GENERAL, offset=3)
        await send(a, op="read", id=21, channel=GENERAL, offset=1)
        assert [e["offset"] for e in ta.take("ack")[-2:]] == [3, 3]  # never moves back
    finally:
        await worker.stop()


async def _until_stored(services: Services, n: int, *, edits: bool = False) -> None:
    for _ in range(200):
        async with services.store.unit_of_work() as uow:
            ws = await uow.workspaces.get_by_slug(DEMO_WORKSPACE)
            assert ws
            rows = await uow.messages.page(ws.id, uuid.UUID(GENERAL), before=None, limit=100)
        if len(rows) >= n and (not edits or (any(r.edited_at for r in rows) and any(r.deleted_at for r in rows))):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("persistence worker did not store the messages")


async def test_admin_may_delete_others_messages(ctx, services):
    async with services.store.unit_of_work() as uow:
        ws = await uow.workspaces.get_by_slug(DEMO_WORKSPACE)
        carol = await uow.users.get_by_subject("dev|carol")
        assert ws and carol
        await uow.memberships.set_role(ws.id, carol.id, Role.ADMIN)
        await uow.commit()
    worker = PersistenceWorker(services)
    await worker.start()
    try:
        b, tb = await connect(ctx, services, "bob")
        await send(b, op="publish", id=1, channel=GENERAL, cmid="x", text="spam")
        mid = tb.take("ack")[0]["message_id"]
        await _until_stored(services, 1)
        c, tc = await connect(ctx, services, "carol")
        await send(c, op="delete", id=2, channel=GENERAL, message_id=mid)
        assert tc.take("ack")[0]["message_id"] == mid
    finally:
        await worker.stop()


async def test_unsubscribe_stops_delivery(ctx, services):
    a, ta = await connect(ctx, services)
    await send(a, op="subscribe", channel=GENERAL)
    await send(a, op="unsubscribe", id=2, channel=GENERAL)
    assert ta.take("unsubscribed")[0]["id"] == 2
    await send(a, op="unsubscribe", id=3, channel=GENERAL)
    assert ta.take("error")[0]["code"] == "not_subscribed"
    await services.broker.publish(DEMO_WORKSPACE, GENERAL, b'{"type":"message","channel":"c","id":"i","author":"a",'
                                  b'"author_name":"A","text":"t","ts":1.0}')
    assert ta.take("message") == []


async def test_second_auth_is_an_error_not_a_new_identity(ctx, services):
    a, ta = await connect(ctx, services, "alice")
    await send(a, op="auth", token=token(services, "bob"))
    assert ta.take("error")[0]["code"] == "already_authenticated"
    assert a.principal is not None and a.principal.user.name == "Alice"


async def test_archived_channel_is_read_only(ctx, services):
    async with services.store.unit_of_work() as uow:
        ws = await uow.workspaces.get_by_slug(DEMO_WORKSPACE)
        assert ws
        await uow.channels.archive(ws.id, uuid.UUID(RANDOM))
        await uow.commit()
    await services.directory.forget_channel(DEMO_WORKSPACE, uuid.UUID(RANDOM))
    a, ta = await connect(ctx, services)
    await send(a, op="publish", id=1, channel=RANDOM, cmid="x", text="hi")
    assert ta.take("error")[0]["code"] == "forbidden"
    await send(a, op="subscribe", id=2, channel=RANDOM)
    assert ta.take("subscribed")



async def test_an_error_names_the_channel_in_canonical_form(ctx, services):
    """Whatever form the command used (upper case, no hyphens), the error's channel is the canonical id."""
    a, ta = await connect(ctx, services)
    unknown = uuid.uuid4()
    for form in (str(unknown).upper(), unknown.hex):
        await send(a, op="publish", id=1, channel=form, cmid="x", text="hi")
        (error,) = ta.take("error")
        assert (error["code"], error["channel"]) == ("not_found", str(unknown))
    await send(a, op="unsubscribe", id=2, channel=GENERAL.replace("-", "").upper())
    (error,) = ta.take("error")
    assert (error["code"], error["channel"]) == ("not_subscribed", GENERAL)


async def test_subscribes_to_a_channel_the_gateway_follows_ask_the_broker_nothing(ctx, services):
    """gateway/hub.py, "Heads": once the hub has seen a followed channel's head, a subscribe, and a resume whose
    ``since`` is the head (most of a reconnect storm), cost no broker call; a resume with a gap reads the gap
    and nothing else.  On Pulsar each head was an admin REST call per subscribe."""
    calls: list[str] = []
    real_head, real_read = services.broker.head, services.broker.read

    async def head(ws: str, ch: str) -> int:
        calls.append("head")
        return await real_head(ws, ch)

    async def read(ws: str, ch: str, from_offset: int, limit: int, **kw: Any) -> Any:
        calls.append(f"read from {from_offset} head {kw.get('head')}")
        return await real_read(ws, ch, from_offset, limit, **kw)

    services.broker.head, services.broker.read = head, read  # type: ignore[method-assign]
    try:
        a, ta = await connect(ctx, services, "alice")
        await send(a, op="subscribe", id=1, channel=GENERAL)  # the first follow asks once
        assert calls == ["head"]
        for i in range(3):
            await send(a, op="publish", id=10 + i, channel=GENERAL, cmid=f"h{i}", text=f"t{i}")
        assert [m["offset"] for m in ta.take("message")] == [1, 2, 3]
        calls.clear()

        b, tb = await connect(ctx, services, "bob")
        await send(b, op="subscribe", id=1, channel=GENERAL)
        c, tc = await connect(ctx, services, "carol")
        await send(c, op="subscribe", id=1, channel=GENERAL, since=3)  # resumed at the head: nothing missed
        d, td = await connect(ctx, services, "dave")
        await send(d, op="subscribe", id=1, channel=GENERAL, since=1)  # missed two
        assert calls == ["read from 2 head 3"]
        assert tb.take("subscribed")[0]["offset"] == 3 and tc.take("subscribed")[0].get("replayed", 0) == 0
        assert td.take("subscribed")[0]["replayed"] == 2 and [m["offset"] for m in td.take("message")] == [2, 3]

        await services.broker.publish(DEMO_WORKSPACE, GENERAL, b'{"type":"message","channel":"%s","id":"live",'
                                      b'"author":"a","author_name":"A","text":"t","ts":1.0}' % GENERAL.encode())
        await asyncio.sleep(0.01)
        assert [[m["offset"] for m in t.take("message")] for t in (ta, tb, tc, td)] == [[4]] * 4
        calls.clear()  # an empty channel's head (0) is known too once asked
        await send(a, op="subscribe", id=40, channel=RANDOM)
        await send(b, op="subscribe", id=40, channel=RANDOM)
        await send(c, op="subscribe", id=40, channel=RANDOM, since=0)
        assert calls == ["head"]
        assert [t.take("subscribed")[-1]["offset"] for t in (ta, tb, tc)] == [0, 0, 0]
        for s in (a, b, c):
            await send(s, op="unsubscribe", id=41, channel=RANDOM)
        # unfollowed when its last subscriber leaves: a later follow asks the broker again
        for s in (a, b, c, d):
            await send(s, op="unsubscribe", id=30, channel=GENERAL)
        calls.clear()
        await send(a, op="subscribe", id=31, channel=GENERAL, since=4)
        assert calls == ["head"] and ta.take("subscribed")[-1]["offset"] == 4
    finally:
        services.broker.head, services.broker.read = real_head, real_read  # type: ignore[method-assign]


async def test_first_subscribes_that_arrive_together_share_one_broker_head(ctx, services):
    """gateway/hub.py, ``fetch_head``: during a connect ramp hundreds of clients subscribe to a channel the
    gateway has just begun to follow, and each asked the broker for the head (on Pulsar an admin REST call,
    10 % of a gateway's samples in storm day).  They now share one request; each still gets the head and
    every later record live, once."""
    calls: list[str] = []
    real_head = services.broker.head

    async def slow_head(ws: str, ch: str) -> int:
        calls.append("head")
        await asyncio.sleep(0.05)  # an admin round trip
        return await real_head(ws, ch)

    a, _ = await connect(ctx, services, "alice")
    for i in range(2):
        await send(a, op="publish", id=1 + i, channel=RANDOM, cmid=f"r{i}", text=f"t{i}")
    users = [await connect(ctx, services, ("bob", "carol", "dave")[i % 3]) for i in range(30)]
    services.broker.head = slow_head  # type: ignore[method-assign]
    try:
        await asyncio.gather(*(send(s, op="subscribe", id=1, channel=RANDOM) for s, _ in users))
        assert calls == ["head"]
        assert {t.take("subscribed")[0]["offset"] for _, t in users} == {2}
        await send(a, op="publish", id=9, channel=RANDOM, cmid="r9", text="live")
        await asyncio.sleep(0.01)
        assert all([m["offset"] for m in t.take("message")] == [3] for _, t in users)
    finally:
        services.broker.head = real_head  # type: ignore[method-assign]


async def test_a_resume_past_a_lagging_feed_gets_no_record_twice(ctx, services, hub):
    """The storm day run of 2026-12-07 (100 000 users, a Pulsar restart and gateway kills): 209 duplicate
    deliveries and 252 inversions, none stored twice.  A client resumed on a gateway whose feed was behind
    what it had seen elsewhere; the hub's head was below its ``since``, so the feed's late records up to
    ``since`` reached it again.  The subscribe now asks the broker when ``since`` is above the hub's head."""
    a, ta = await connect(ctx, services, "alice")
    await send(a, op="subscribe", id=1, channel=GENERAL)  # the gateway follows the channel
    feed = next(iter(services.broker._logs[(DEMO_WORKSPACE, GENERAL)].subscribers))
    held: list[Any] = []
    real_deliver = feed.deliver
    feed.deliver = held.append  # the feed lags: records reach the log, not yet this gateway
    try:
        for i in range(3):
            await services.broker.publish(DEMO_WORKSPACE, GENERAL, b'{"type":"message","channel":"%s","id":"l%d",'
                                          b'"author":"a","author_name":"A","text":"t","ts":1.0}'
                                          % (GENERAL.encode(), i))
        assert hub.head(DEMO_WORKSPACE, GENERAL) == 0 and len(held) == 3
        b, tb = await connect(ctx, services, "bob")
        await send(b, op="subscribe", id=1, channel=GENERAL, since=3)  # bob saw 1..3 on another gateway
    finally:
        feed.deliver = real_deliver
    for record in held:  # the feed catches up
        real_deliver(record)
    (sub,) = tb.take("subscribed")
    assert sub["offset"] == 3 and sub.get("replayed", 0) == 0
    assert tb.take("message") == []  # nothing bob had already
    assert [m["offset"] for m in ta.take("message")] == [1, 2, 3]  # alice, live, gets them once


async def test_a_closing_session_does_not_ask_whether_it_was_the_users_last_workspace_entry(ctx, services, monkeypatch):
    """Nobody announces a leave of the workspace's own presence: the close removes the entry without the
    look-up for the user's other entries (a predicate query over the Hazelcast members, per disconnect), while
    a small channel's leave still asks (its ``presence.leave`` needs the answer)."""
    from storm.protocol.quota import WORKSPACE_PRESENCE

    s, _ = await connect(ctx, services)
    await send(s, op="subscribe", id=1, channel=GENERAL)
    asked: dict[str, bool] = {}
    remove = services.cache.presence_remove

    async def recorded(workspace: str, channel: str, conn_id: str, *, last: bool = True) -> Any:
        asked[channel] = last
        return await remove(workspace, channel, conn_id, last=last)

    monkeypatch.setattr(services.cache, "presence_remove", recorded)
    await s.closed()
    assert asked == {WORKSPACE_PRESENCE: False, GENERAL: True}
    assert await services.cache.presence_list(DEMO_WORKSPACE, WORKSPACE_PRESENCE) == []
