"""Client message ids across crashes and unknown outcomes (storm/protocol/claims.py, docs/delivery.md).

A gateway that dies, or a broker send that times out, between the cmid claim and the ack leaves the claim
pending.  These tests leave it so on purpose and check what the client's retry gets: it waits while the
first attempt could still finish, then exactly one message in the log, whether the first attempt reached
the log (the retry gets its ack back), reached the store too, or never got anywhere; and the client's
later messages stay behind it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from storm.domain import Message
from storm.errors import OffsetTruncated, PublishNotSent, Unavailable
from storm.protocol import claims
from storm.protocol.claims import MessageRef
from storm.protocol.context import SessionContext
from storm_tools.seed import DEMO_WORKSPACE, demo_id
from tests.service.test_session import GENERAL, connect, send

IN_DOUBT = 10.0 + 2.0  # STORM_PUBLISH_TIMEOUT_S (default) + the session's margin


async def _ref(services: Any, user: str, cmid: str) -> MessageRef:
    async with services.store.unit_of_work() as uow:
        ws = await uow.workspaces.get_by_slug(DEMO_WORKSPACE)
    assert ws is not None
    return MessageRef(DEMO_WORKSPACE, ws.id, uuid.UUID(GENERAL), demo_id("user", user), cmid)


async def _leave_pending(ctx: Any, services: Any, cmid: str) -> None:
    """What a gateway that died after claiming ``cmid`` leaves in the cache."""
    outcome = await ctx.cmids.claim(await _ref(services, "alice", cmid))
    assert isinstance(outcome, claims.Claimed)


def _other_gateway(services: Any, hub: Any) -> SessionContext:
    """A second gateway process on the same services: its own claims (nothing of the first's memory)."""
    s = services
    return SessionContext(config=s.config, clock=s.clock, broker=s.broker, cache=s.cache, store=s.store,
                          identity=s.identity, directory=s.directory, hub=hub)


async def _store(services: Any, ref: MessageRef, message_id: str, offset: int) -> None:
    """What the persistence worker does with the record of a publish."""
    row = Message(id=uuid.UUID(message_id), workspace_id=ref.workspace_id, channel_id=ref.channel_id,
                  author_id=ref.author_id, body="hello", offset=offset, client_msg_id=ref.cmid,
                  created_at=datetime.now(UTC))
    async with services.store.unit_of_work() as uow:
        await uow.messages.add_many([row])
        await uow.commit()


async def _messages_in_log(services: Any) -> list[bytes]:
    try:
        records = await services.broker.read(DEMO_WORKSPACE, GENERAL, 1, 1000)
    except OffsetTruncated as exc:  # the embedded log continues after the newest stored offset
        records = await services.broker.read(DEMO_WORKSPACE, GENERAL, exc.earliest, 1000)
    return [r.payload for r in records]


async def test_claims_in_doubt_after_the_publish_timeout_and_margin(ctx):
    assert ctx.cmids.in_doubt_s == IN_DOUBT


async def test_a_retry_waits_for_an_attempt_that_could_still_finish_and_gets_its_ack(ctx, services):
    ref = await _ref(services, "alice", "c1")
    first = await ctx.cmids.claim(ref)
    assert isinstance(first, claims.Claimed)
    a, ta = await connect(ctx, services)
    retry = asyncio.ensure_future(send(a, op="publish", id=1, channel=GENERAL, cmid="c1", text="hello"))
    await asyncio.sleep(0.5)
    assert not retry.done() and ta.take() == []  # waiting, not refused
    await ctx.cmids.confirm(ref, first.key, "m-first", 7)  # the first attempt succeeds after all
    await asyncio.wait_for(retry, 5)
    (ack,) = ta.take("ack")
    assert ack["duplicate"] is True and (ack["message_id"], ack["offset"]) == ("m-first", 7)
    assert await _messages_in_log(services) == []


async def test_a_retry_gives_up_with_conflict_when_nothing_settles_in_time(ctx, services):
    await _leave_pending(ctx, services, "c1b")
    ctx.cmids.max_wait_s = 0.3  # the default: the publish timeout + 4 s
    a, ta = await connect(ctx, services)
    await send(a, op="publish", id=1, channel=GENERAL, cmid="c1b", text="hello")
    (err,) = ta.take("error")
    assert err["code"] == "conflict" and err["field"] == "cmid" and "retry in" in err["message"]
    assert await _messages_in_log(services) == []


async def test_a_retry_behind_a_dead_attempt_keeps_the_senders_order(ctx, services):
    """The regression storm verify caught: c1 died in flight before the log; the client resends c1 and then
    c2 on one connection.  c1 must be published before c2, not 12 s after it."""
    await _leave_pending(ctx, services, "c1c")
    a, ta = await connect(ctx, services)

    async def client() -> None:  # a connection's frames are handled one at a time, in order
        await send(a, op="publish", id=1, channel=GENERAL, cmid="c1c", text="first")
        await send(a, op="publish", id=2, channel=GENERAL, cmid="c2c", text="second")

    sending = asyncio.ensure_future(client())
    await asyncio.sleep(0.3)
    services.clock.advance(IN_DOUBT + 1)  # the dead attempt is now in doubt: the waiting retry settles it
    await asyncio.wait_for(sending, 5)
    assert [ack["id"] for ack in ta.take("ack")] == [1, 2]
    texts = [json.loads(p)["text"] for p in await _messages_in_log(services)]
    assert texts == ["first", "second"]


async def test_an_attempt_that_died_before_the_log_is_published_once_by_the_retry(ctx, services):
    await _leave_pending(ctx, services, "c2")
    services.clock.advance(IN_DOUBT + 1)
    a, ta = await connect(ctx, services)
    await send(a, op="publish", id=1, channel=GENERAL, cmid="c2", text="hello")
    (ack,) = ta.take("ack")
    assert "duplicate" not in ack or ack["duplicate"] is False
    assert len(await _messages_in_log(services)) == 1
    await send(a, op="publish", id=2, channel=GENERAL, cmid="c2", text="hello")  # and it is Done now
    (again,) = ta.take("ack")
    assert again["duplicate"] is True and again["message_id"] == ack["message_id"]
    assert len(await _messages_in_log(services)) == 1


async def test_an_attempt_that_reached_the_log_but_not_the_ack_is_answered_from_the_log(ctx, services, hub):
    a, ta = await connect(ctx, services)
    await send(a, op="publish", id=1, channel=GENERAL, cmid="c3", text="hello")
    (first,) = ta.take("ack")
    ref = await _ref(services, "alice", "c3")
    await services.cache.delete(DEMO_WORKSPACE, ctx.cmids.key(ref))  # the crash: the ack was never recorded
    await _leave_pending(_other_gateway(services, hub), services, "c3")  # (and ctx's memory is gone with it)
    services.clock.advance(IN_DOUBT + 1)
    b, tb = await connect(_other_gateway(services, hub), services)  # the client reconnected elsewhere, resends
    await send(b, op="publish", id=1, channel=GENERAL, cmid="c3", text="hello")
    (ack,) = tb.take("ack")
    assert ack["duplicate"] is True
    assert (ack["message_id"], ack["offset"]) == (first["message_id"], first["offset"])
    assert len(await _messages_in_log(services)) == 1


async def test_an_attempt_stored_and_gone_from_the_log_is_answered_from_the_store(ctx, services):
    """The store is read first: the log may have dropped the record (retention) once it is persisted."""
    ref = await _ref(services, "alice", "c4")
    stored = Message(id=uuid.uuid4(), workspace_id=ref.workspace_id, channel_id=ref.channel_id,
                     author_id=ref.author_id, body="hello", offset=3, client_msg_id="c4",
                     created_at=datetime.now(UTC))
    async with services.store.unit_of_work() as uow:
        await uow.messages.add_many([stored])
        await uow.commit()
    await _leave_pending(ctx, services, "c4")
    services.clock.advance(IN_DOUBT + 1)
    a, ta = await connect(ctx, services)
    await send(a, op="publish", id=1, channel=GENERAL, cmid="c4", text="hello")
    (ack,) = ta.take("ack")
    assert ack["duplicate"] is True and (ack["message_id"], ack["offset"]) == (str(stored.id), 3)
    assert await _messages_in_log(services) == []


async def test_another_authors_message_with_the_same_cmid_is_not_taken_for_the_attempt(ctx, services):
    bob, tb = await connect(ctx, services, "bob")
    await send(bob, op="publish", id=1, channel=GENERAL, cmid="c5", text="bob's")
    assert tb.take("ack")[0]["cmid"] == "c5"
    await _leave_pending(ctx, services, "c5")
    services.clock.advance(IN_DOUBT + 1)
    a, ta = await connect(ctx, services)
    await send(a, op="publish", id=1, channel=GENERAL, cmid="c5", text="alice's")
    (ack,) = ta.take("ack")
    assert "duplicate" not in ack or ack["duplicate"] is False
    assert len(await _messages_in_log(services)) == 2


async def test_only_one_of_two_concurrent_retries_settles_a_claim(ctx, services):
    await _leave_pending(ctx, services, "c6")
    services.clock.advance(IN_DOUBT + 1)
    a, ta = await connect(ctx, services)
    b, tb = await connect(ctx, services)
    await asyncio.gather(send(a, op="publish", id=1, channel=GENERAL, cmid="c6", text="x"),
                         send(b, op="publish", id=1, channel=GENERAL, cmid="c6", text="x"))
    acks = ta.take("ack") + tb.take("ack")
    assert len(acks) == 2 and ta.take("error") + tb.take("error") == []
    assert len({ack["message_id"] for ack in acks}) == 1  # the other waited for the settler's answer
    assert sorted(bool(ack.get("duplicate")) for ack in acks) == [False, True]
    assert len(await _messages_in_log(services)) == 1


async def test_an_unknown_publish_outcome_keeps_the_claim_until_it_is_settled(ctx, services, monkeypatch):
    real_publish = services.broker.publish

    async def timed_out(workspace: str, channel: str, payload: bytes) -> int:
        raise Unavailable("send timed out")

    monkeypatch.setattr(services.broker, "publish", timed_out)
    a, ta = await connect(ctx, services)
    await send(a, op="publish", id=1, channel=GENERAL, cmid="c7", text="x")
    assert ta.take("error")[0]["code"] == "unavailable"
    monkeypatch.setattr(services.broker, "publish", real_publish)
    retry = asyncio.ensure_future(send(a, op="publish", id=2, channel=GENERAL, cmid="c7", text="x"))
    await asyncio.sleep(0.3)
    assert not retry.done() and ta.take() == []  # it might have been persisted: the retry waits
    services.clock.advance(IN_DOUBT + 1)
    await asyncio.wait_for(retry, 5)
    assert ta.take("ack")[0]["id"] == 2
    assert len(await _messages_in_log(services)) == 1


async def test_a_publish_refused_before_sending_releases_the_claim_at_once(ctx, services, monkeypatch):
    real_publish = services.broker.publish

    async def no_producer(workspace: str, channel: str, payload: bytes) -> int:
        raise PublishNotSent("no producer")

    monkeypatch.setattr(services.broker, "publish", no_producer)
    a, ta = await connect(ctx, services)
    await send(a, op="publish", id=1, channel=GENERAL, cmid="c8", text="x")
    assert ta.take("error")[0]["code"] == "unavailable"
    monkeypatch.setattr(services.broker, "publish", real_publish)
    await send(a, op="publish", id=2, channel=GENERAL, cmid="c8", text="x")
    assert ta.take("ack")[0]["id"] == 2
    assert len(await _messages_in_log(services)) == 1


async def test_a_successful_publish_costs_one_cache_write_and_leaves_the_claim_pending(ctx, services):
    """The second round trip per publish (``Done`` into the cache) is gone: success is remembered in the
    process, and a retry elsewhere reads the store (docs/delivery.md, "One message per cmid")."""
    a, ta = await connect(ctx, services)
    await send(a, op="publish", id=1, channel=GENERAL, cmid="c9", text="hello")
    (ack,) = ta.take("ack")
    raw = await services.cache.get(DEMO_WORKSPACE, ctx.cmids.key(await _ref(services, "alice", "c9")))
    assert raw is not None and isinstance(claims._decode(raw), claims.Pending)
    await send(a, op="publish", id=2, channel=GENERAL, cmid="c9", text="hello")  # same process: from memory
    (again,) = ta.take("ack")
    assert again["duplicate"] is True and (again["message_id"], again["offset"]) == (ack["message_id"], ack["offset"])
    assert len(await _messages_in_log(services)) == 1


async def test_a_retry_on_another_gateway_waits_for_the_message_to_be_stored_and_gets_its_ack(ctx, services, hub):
    a, ta = await connect(ctx, services)
    await send(a, op="publish", id=1, channel=GENERAL, cmid="c10", text="hello")
    (ack,) = ta.take("ack")
    b, tb = await connect(_other_gateway(services, hub), services)  # reconnected elsewhere, resends
    retry = asyncio.ensure_future(send(b, op="publish", id=1, channel=GENERAL, cmid="c10", text="hello"))
    await asyncio.sleep(0.3)
    assert not retry.done() and tb.take() == []  # not stored yet: it waits (no Done in the cache)
    await _store(services, await _ref(services, "alice", "c10"), ack["message_id"], ack["offset"])
    await asyncio.wait_for(retry, 5)  # found at its next look into the store (claims.STORE_POLL_S)
    (again,) = tb.take("ack")
    assert again["duplicate"] is True and (again["message_id"], again["offset"]) == (ack["message_id"], ack["offset"])
    assert len(await _messages_in_log(services)) == 1
