"""Issue 13's consistency defects, each as a client conversation with the session core (docs/protocol.md):
reaction state and no-op reactions, the history page's offset, thread parents, text the store cannot
hold, one `auth` answer for a missing workspace and a non-member, `typing` for an unknown channel, binary
frames, and read state (`subscribed.read/unread`, `unread`)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime

from consumers.persistence import PersistenceWorker
from storm.bootstrap import Services
from storm.domain import Message, Workspace
from storm.protocol.session import Session, SessionContext, State
from storm_tools.seed import DEMO_WORKSPACE, channel_id
from tenants import service as tenants_service
from tests.service.test_session import ListTransport, _until_stored, connect, send, token

GENERAL = channel_id(DEMO_WORKSPACE, "general")
RANDOM = channel_id(DEMO_WORKSPACE, "random")


async def _stored_message(ctx: SessionContext, services: Services,
                          user: str = "alice") -> tuple[str, Session, ListTransport]:
    a, ta = await connect(ctx, services, user)
    await send(a, op="publish", id=1, channel=GENERAL, cmid="parent", text="react to me")
    (ack,) = ta.take("ack")
    await _until_stored(services, 1)
    return ack["message_id"], a, ta


async def test_a_noop_react_is_acked_without_event_and_events_carry_the_resulting_count(ctx, services):
    worker = PersistenceWorker(services)
    await worker.start()
    try:
        mid, a, ta = await _stored_message(ctx, services)
        b, tb = await connect(ctx, services, "bob")
        await send(a, op="subscribe", channel=GENERAL)
        ta.take()
        await send(a, op="react", id=2, channel=GENERAL, message_id=mid, emoji="👍")
        await send(b, op="react", id=3, channel=GENERAL, message_id=mid, emoji="👍")
        await send(b, op="react", id=4, channel=GENERAL, message_id=mid, emoji="👍")  # again: a no-op
        await send(a, op="react", id=5, channel=GENERAL, message_id=mid, emoji="🎉", remove=True)  # not there
        reactions = ta.take("reaction")
        assert [(r["user"] == str(a.principal.user.id), r["count"]) for r in reactions] == [(True, 1), (False, 2)]
        acks = {x["id"]: x for x in ta.take("ack") + tb.take("ack")}
        assert "offset" in acks[2] and "offset" in acks[3]
        assert "offset" not in acks[4] and "offset" not in acks[5]  # acknowledged, nothing happened
        assert acks[4]["message_id"] == mid
        await send(b, op="react", id=6, channel=GENERAL, message_id=mid, emoji="👍", remove=True)
        (removed,) = ta.take("reaction")
        assert removed["remove"] is True and removed["count"] == 1
        await send(a, op="history", id=7, channel=GENERAL)
        (page,) = ta.take("history")
        assert page["messages"][0]["reactions"] == {"👍": 1} and page["messages"][0]["mine"] == ["👍"]
    finally:
        await worker.stop()


async def test_a_page_resumed_from_its_offset_shows_the_stored_counts(ctx, services):
    """The doubling: history counts, then a resume from the newest *message* replayed the reactions after
    it on top.  Resuming from the page's offset and applying counts as the events say them converges."""
    worker = PersistenceWorker(services)
    await worker.start()
    try:
        mid, a, _ta = await _stored_message(ctx, services)
        b, _tb = await connect(ctx, services, "bob")
        await send(b, op="react", id=2, channel=GENERAL, message_id=mid, emoji="👍")
        await send(a, op="react", id=3, channel=GENERAL, message_id=mid, emoji="👍")
        for _ in range(100):  # the persistence worker has caught up with the log
            async with services.store.unit_of_work() as uow:
                ws = await uow.workspaces.get_by_slug(DEMO_WORKSPACE)
                assert ws
                if (await uow.reactions.counts(ws.id, [uuid.UUID(mid)])).get(uuid.UUID(mid)) == {"👍": 2}:
                    break
            await asyncio.sleep(0.02)
        # a fresh page: history, then subscribe from the page's offset, applying what is replayed
        c, tc = await connect(ctx, services, "carol")
        await send(c, op="history", id=1, channel=GENERAL)
        (page,) = tc.take("history")
        shown = dict(page["messages"][0]["reactions"])
        assert page["offset"] >= page["messages"][0]["offset"]
        await send(c, op="subscribe", id=2, channel=GENERAL, since=page["offset"])
        for ev in tc.take("reaction"):
            shown[ev["emoji"]] = ev["count"]
        assert shown == {"👍": 2}  # what GET …/messages says
    finally:
        await worker.stop()


async def test_thread_parent_must_be_a_stored_message_of_the_same_channel(ctx, services):
    worker = PersistenceWorker(services)
    await worker.start()
    try:
        mid, a, ta = await _stored_message(ctx, services)
        await send(a, op="publish", id=2, channel=RANDOM, cmid="t1", text="reply elsewhere", thread=mid)
        await send(a, op="publish", id=3, channel=GENERAL, cmid="t2", text="reply to nothing",
                   thread=str(uuid.uuid4()))
        # a message of another workspace, in a channel with the same id: its id finds nothing here
        other = Workspace(id=uuid.uuid4(), slug=f"other-{uuid.uuid4().hex[:8]}", name="Other")
        foreign = Message(id=uuid.uuid4(), workspace_id=other.id, channel_id=uuid.UUID(GENERAL),
                          author_id=uuid.uuid4(), body="elsewhere", offset=1, created_at=datetime.now(UTC))
        async with services.store.unit_of_work() as uow:
            await uow.workspaces.add(other)
            await uow.messages.add_many([foreign])
            await uow.commit()
        services.clock.advance(1)  # type: ignore[attr-defined]  # refill the publish bucket
        await send(a, op="publish", id=5, channel=GENERAL, cmid="t5", text="reply across", thread=str(foreign.id))
        errors = {x["id"]: x for x in ta.take("error")}
        assert errors[2]["code"] == "not_found" and errors[2]["field"] == "thread"
        assert errors[3]["code"] == "not_found" and errors[3]["field"] == "thread"
        assert errors[5]["code"] == "not_found" and errors[5]["field"] == "thread"
        assert ta.take("ack") == []
        services.clock.advance(1)  # type: ignore[attr-defined]  # refill the publish bucket
        await send(a, op="publish", id=4, channel=GENERAL, cmid="t3", text="a real reply", thread=mid)
        assert [x["id"] for x in ta.take("ack")] == [4], ta.events
    finally:
        await worker.stop()


async def test_text_the_store_cannot_hold_is_refused_before_the_ack(ctx, services):
    a, ta = await connect(ctx, services)
    head = await services.broker.head(DEMO_WORKSPACE, GENERAL)
    await send(a, op="publish", id=1, channel=GENERAL, cmid="nul", text="a\x00b")
    (err,) = ta.take("error")
    assert err["code"] == "bad_request" and err["field"] == "text" and err["id"] == 1
    assert ta.take("ack") == [] and await services.broker.head(DEMO_WORKSPACE, GENERAL) == head


async def test_missing_workspace_and_non_member_get_the_same_auth_answer(ctx, services):
    answers = []
    for tok in (token(services, "alice", "no-such-workspace"), token(services, "mallory")):
        t = ListTransport()
        s = Session(ctx, t)
        await s.receive(json.dumps({"op": "auth", "token": tok}))
        (err,) = t.take("error")
        answers.append((err["code"], err["message"], t.closed[0] if t.closed else None))
    assert answers[0] == answers[1], answers
    assert "no-such-workspace" not in answers[0][1]


async def test_a_star_token_on_the_websocket_is_told_what_is_wrong(ctx, services):
    t = ListTransport()
    s = Session(ctx, t)
    await s.receive(json.dumps({"op": "auth", "token": token(services, "alice", "*")}))
    (err,) = t.take("error")
    assert err["code"] == "unauthenticated" and "one workspace" in err["message"], err
    assert s.state is State.CLOSED


async def test_typing_for_an_unknown_channel_is_answered_with_not_found(ctx, services):
    a, ta = await connect(ctx, services)
    await send(a, op="typing", id=9, channel=str(uuid.uuid4()))
    (err,) = ta.take("error")
    assert err["code"] == "not_found" and err["id"] == 9


async def test_a_binary_frame_is_read_like_a_text_frame(ctx, services):
    a, ta = await connect(ctx, services)
    await a.receive(json.dumps({"op": "ping", "id": 3}).encode())
    assert ta.take("pong")[0]["id"] == 3


async def test_read_state_in_subscribed_and_unread(ctx, services):
    worker = PersistenceWorker(services)
    await worker.start()
    try:
        b, tb = await connect(ctx, services, "bob")
        for i in range(3):
            await send(b, op="publish", id=i, channel=GENERAL, cmid=f"u{i}", text=f"m{i}")
        offsets = [x["offset"] for x in tb.take("ack")]
        await _until_stored(services, 3)
        a, ta = await connect(ctx, services, "alice")
        await send(a, op="read", id=1, channel=GENERAL, offset=offsets[0])
        await send(a, op="subscribe", id=2, channel=GENERAL)
        (sub,) = ta.take("subscribed")
        assert sub["read"] == offsets[0] and sub["unread"] == 2
        await send(a, op="unread", id=3)
        (unread,) = ta.take("unread")
        by_channel = {c["channel"]: c for c in unread["channels"]}
        assert by_channel[GENERAL]["unread"] == 2 and by_channel[GENERAL]["read"] == offsets[0]
        assert by_channel[RANDOM].get("unread", 0) == 0 and unread["id"] == 3
        await send(b, op="unread", id=4)  # bob's own messages are not unread for him
        assert {c["channel"]: c.get("unread", 0) for c in tb.take("unread")[0]["channels"]}[GENERAL] == 0
    finally:
        await worker.stop()


async def test_deleting_the_workspace_closes_its_sockets_with_4011(ctx, services):

    a, ta = await connect(ctx, services, "alice")
    _b, tb = await connect(ctx, services, "bob")
    assert a.principal is not None and a.principal.role.value == "owner"
    await tenants_service.delete_workspace(services, a.principal)
    for _ in range(50):  # within a second: the control event crosses the broker
        if ta.closed and tb.closed:
            break
        await asyncio.sleep(0.02)
    assert ta.closed and ta.closed[0] == 4011 and tb.closed and tb.closed[0] == 4011
    assert tb.take("error")[0]["code"] == "gone"


async def test_subscribe_works_without_the_read_state_when_the_store_fails(ctx, services, monkeypatch):
    from storm.adapters.memory_store import MemoryReadMarkerRepository
    from storm.errors import Unavailable

    async def down(*args: object, **kwargs: object) -> object:
        raise Unavailable("store down")

    monkeypatch.setattr(MemoryReadMarkerRepository, "unread", down)
    monkeypatch.setattr(MemoryReadMarkerRepository, "unread_at", down)
    a, ta = await connect(ctx, services)
    await send(a, op="subscribe", id=1, channel=GENERAL)
    (sub,) = ta.take("subscribed")
    assert sub["id"] == 1 and "read" not in sub and "unread" not in sub


async def test_a_reaction_that_could_not_be_published_is_taken_back(ctx, services, monkeypatch):
    """The store changes before the event is published: when the broker refuses the event (nothing reached
    the log), the change is undone, so the store never holds a reaction nobody was told of."""
    from storm.errors import PublishNotSent

    worker = PersistenceWorker(services)
    await worker.start()
    try:
        mid, a, ta = await _stored_message(ctx, services)
        real = services.broker.publish

        async def refuse(workspace: str, channel: str, payload: bytes) -> int:
            if b'"reaction"' in payload:
                raise PublishNotSent("broker refused")
            return await real(workspace, channel, payload)

        monkeypatch.setattr(services.broker, "publish", refuse)
        await send(a, op="react", id=2, channel=GENERAL, message_id=mid, emoji="👍")
        assert ta.take("error")[0]["id"] == 2
        async with services.store.unit_of_work() as uow:
            ws = await uow.workspaces.get_by_slug(DEMO_WORKSPACE)
            assert ws
            assert await uow.reactions.counts(ws.id, [uuid.UUID(mid)]) == {}
    finally:
        await worker.stop()


async def test_subscribes_that_arrive_together_read_their_read_states_in_one_unit_of_work(ctx, services,
                                                                                          monkeypatch):
    """A transaction per subscribe was 15 % of a day connect's gateway CPU (docs/storm-day.md), and its two
    statements most of an embedded subscribe's (docs/benchmarks.md): the read states of subscribes that
    arrive together are read in one unit of work by one ``unread_at`` (Directory.read_state), each with its
    own user's marker."""
    from storm.adapters.memory_store import MemoryReadMarkerRepository
    from storm.domain import ReadMarker
    from storm_tools.seed import DEMO_USERS

    users = [*DEMO_USERS, *DEMO_USERS, *DEMO_USERS]  # 12 sessions of 4 users
    sessions = [await connect(ctx, services, u) for u in users]
    for i, (s, _) in enumerate(sessions[:len(DEMO_USERS)]):
        p = s.principal
        assert p is not None
        marker = ReadMarker(p.workspace.id, uuid.UUID(GENERAL), p.user.id, 100 + i)
        await services.store.run(lambda uow, m=marker: uow.read_markers.advance(m))
    await send(sessions[0][0], op="subscribe", id=1, channel=GENERAL)  # the channel's access, cached
    units = 0
    real = services.store.unit_of_work

    kinds: list[bool] = []

    def counted(*, read_only: bool = False) -> object:
        nonlocal units
        units += 1
        kinds.append(read_only)
        return real(read_only=read_only)

    asked: list[int] = []
    unread_at = MemoryReadMarkerRepository.unread_at

    async def counted_reads(self: MemoryReadMarkerRepository, workspace_id: uuid.UUID,
                            wanted: list[tuple[uuid.UUID, uuid.UUID, int]]) -> list[tuple[int, int]]:
        asked.append(len(wanted))
        return await unread_at(self, workspace_id, wanted)

    monkeypatch.setattr(MemoryReadMarkerRepository, "unread_at", counted_reads)
    services.store.unit_of_work = counted  # type: ignore[method-assign]
    try:
        await asyncio.gather(*(send(s, op="subscribe", id=1, channel=GENERAL) for s, _ in sessions[1:]))
    finally:
        services.store.unit_of_work = real  # type: ignore[method-assign]
    assert units <= 2  # 11 subscribes: one batch, or two when the first starts before the others arrive
    assert kinds and all(kinds)  # read without a transaction (docs/database.md "Reads without a transaction")
    assert sum(asked) == 11 and len(asked) <= 2  # one read of many pairs per batch, not one per subscribe
    for i, (_, t) in enumerate(sessions):
        (sub,) = t.take("subscribed")
        assert sub["read"] == 100 + i % len(DEMO_USERS)  # nobody got another's marker
