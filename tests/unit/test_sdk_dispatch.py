"""The client's handling of server frames, fed in memory (no socket): dedup by (channel, offset) and by
(channel, author, cmid), local echo reconciled by the ack or by the own message, resync signals."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from storm_sdk import (
    Acked,
    ClientOptions,
    Message,
    Reaction,
    ResyncReason,
    ResyncRequired,
    SendFailed,
    SendState,
    StateChanged,
    StormClient,
    StormError,
    Subscribed,
    Unsubscribed,
)

pytestmark = pytest.mark.sdk

CH = "3433b194-d423-5967-a8d0-fea252d989f5"
ME = "5a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
BOB = "6b2c3d4e-5f6a-4b7c-9d8e-0f1a2b3c4d5e"
HELLO = {"type": "hello", "v": 1, "session": "s", "workspace": "demo", "user": {"id": ME, "name": "Alice"},
         "heartbeat_s": 25.0, "limits": {"max_body_chars": 4000}}


def feed(client: StormClient, *events: dict[str, Any]) -> None:
    client._on_frame("\n".join(json.dumps(e) for e in events), None)  # type: ignore[arg-type]


def msg(offset: int, text: str, *, author: str = BOB, cmid: str | None = None, mid: str | None = None
        ) -> dict[str, Any]:
    event = {"offset": offset, "type": "message", "channel": CH, "id": mid or f"id-{offset}", "author": author,
             "author_name": "x", "text": text, "ts": 1.0}
    if cmid:
        event["cmid"] = cmid
    return event


async def drain(client: StormClient) -> list[Any]:
    out = []
    stream = client.events()
    while True:
        try:
            out.append(await asyncio.wait_for(anext(stream), 0.05))
        except TimeoutError:
            return [e for e in out if not isinstance(e, StateChanged)]


def reconnect(client: StormClient) -> None:
    client._connection_lost(None)  # type: ignore[arg-type]
    feed(client, HELLO)


async def subscribed(client: StormClient, offset: int, **extra: Any) -> Subscribed:
    task = asyncio.create_task(client.subscribe(CH, timeout=1))
    await asyncio.sleep(0)
    feed(client, {"type": "subscribed", "channel": CH, "offset": offset, **extra})
    return await task


@pytest.fixture
async def client() -> StormClient:
    c = StormClient("ws://127.0.0.1:9/ws", lambda: "t", ClientOptions())
    feed(c, HELLO)
    return c


async def test_each_offset_once_in_order(client: StormClient) -> None:
    await subscribed(client, 2)
    feed(client, msg(1, "old"), msg(2, "head"), msg(3, "a"), msg(3, "a"), msg(4, "b"), msg(2, "head"), msg(5, "c"))
    events = await drain(client)
    assert [e.offset for e in events if isinstance(e, Message)] == [3, 4, 5]
    assert client.last_offset(CH) == 5


async def test_a_republished_message_with_the_same_cmid_is_shown_once(client: StormClient) -> None:
    await subscribed(client, 0)
    feed(client, msg(1, "hi", cmid="b-1", mid="first"), msg(2, "hi", cmid="b-1", mid="second"),
         msg(3, "other", cmid="b-2"))
    texts = [e.text for e in await drain(client) if isinstance(e, Message)]
    assert texts == ["hi", "other"]


async def test_local_echo_is_reconciled_once_by_whichever_comes_first(client: StormClient) -> None:
    await subscribed(client, 0)
    first, second = client.publish(CH, "one"), client.publish(CH, "two")
    assert first.state is SendState.QUEUED and len(client.pending) == 2
    feed(client, msg(1, "one", author=ME, cmid=first.cmid, mid="m1"),  # own message before the ack
         {"type": "ack", "channel": CH, "cmid": first.cmid, "message_id": "m1", "offset": 1},
         {"type": "ack", "channel": CH, "cmid": second.cmid, "message_id": "m2", "offset": 2},  # ack first
         msg(2, "two", author=ME, cmid=second.cmid, mid="m2"))
    events = await drain(client)
    acked = [e.message for e in events if isinstance(e, Acked)]
    assert acked == [first, second]
    assert (first.message_id, first.offset, second.message_id, second.offset) == ("m1", 1, "m2", 2)
    assert [e.id for e in events if isinstance(e, Message)] == ["m1", "m2"]
    assert client.pending == [] and await first.wait(0.1) is first


async def test_refused_publish_leaves_the_outbox_and_retriable_one_stays(client: StormClient) -> None:
    refused, retried = client.publish(CH, "no"), client.publish(CH, "later")
    from storm_sdk.client import _Request

    client._requests[901] = _Request("publish", channel=CH, cmid=refused.cmid)
    client._requests[902] = _Request("publish", channel=CH, cmid=retried.cmid)
    feed(client, {"type": "error", "id": 901, "code": "forbidden", "message": "archived"},
         {"type": "error", "id": 902, "code": "unavailable", "message": "broker down"})
    events = await drain(client)
    failed = [e for e in events if isinstance(e, SendFailed)]
    assert [(f.message, f.code) for f in failed] == [(refused, "forbidden")]
    with pytest.raises(StormError) as info:
        await refused.wait(0.1)
    assert info.value.code == "forbidden" and not info.value.retriable
    assert client.pending == [retried] and retried.state is SendState.QUEUED and retried.retry_at > 0


async def test_not_recovered_and_rewound_logs_ask_for_a_reload(client: StormClient) -> None:
    await subscribed(client, 10)
    feed(client, msg(11, "x"))
    await drain(client)
    # reconnect: the server's log is behind what we saw (embedded restart lost events)
    reconnect(client)
    reply = await subscribed(client, 7)
    assert reply.offset == 7
    feed(client, msg(8, "after restart"))
    events = await drain(client)
    assert ResyncRequired(CH, ResyncReason.LOG_REWOUND, 7) in events
    assert [e.text for e in events if isinstance(e, Message)] == ["after restart"]
    reconnect(client)
    await subscribed(client, 2000, recovered=False)
    events = await drain(client)
    assert ResyncRequired(CH, ResyncReason.NOT_RECOVERED, 2000) in events


async def test_subscribe_refused_raises_the_server_code(client: StormClient) -> None:
    from storm_sdk.client import _Request

    task = asyncio.create_task(client.subscribe("bad", timeout=1))
    await asyncio.sleep(0)
    client._requests[77] = _Request("subscribe", channel="bad")
    feed(client, {"type": "error", "id": 77, "code": "not_found", "message": "no such channel",
                  "channel": "bad"})
    with pytest.raises(StormError, match="not_found"):
        await task
    assert client.last_offset("bad") is None


async def test_a_subscription_the_server_ended_is_not_followed_again(client: StormClient) -> None:
    await subscribed(client, 5)
    feed(client, {"type": "unsubscribed", "channel": CH, "reason": "removed"})
    feed(client, msg(6, "sent after the removal"))
    events = await drain(client)
    assert events[-1] == Unsubscribed(channel=CH, reason="removed")
    assert not any(isinstance(e, Message) for e in events)
    assert client.last_offset(CH) is None
    sent: list[dict[str, Any]] = []
    client._connection_lost(None)  # type: ignore[arg-type]
    client._conn = object()  # type: ignore[assignment]
    client._write = sent.append  # type: ignore[method-assign]
    feed(client, HELLO)
    assert [f for f in sent if f.get("op") == "subscribe"] == []  # not resubscribed on the next connection


def _wire(client: StormClient) -> asyncio.Queue[str]:
    """Give the client a connection whose frames land in a queue (no socket)."""
    from storm_sdk.client import _Conn

    conn = _Conn(1, None)  # type: ignore[arg-type]
    client._conn = conn
    client._online.set()
    return conn.queue


async def _next_frame(queue: asyncio.Queue[str]) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(queue.get(), 1))
    return frame


async def test_open_channel_resumes_from_the_history_pages_offset_and_counts_do_not_double(
        client: StormClient) -> None:
    """The doubling (issue 13): the page's counts, then a subscription from the newest *message* replayed the
    reactions after it on top.  ``open_channel`` subscribes from the page's ``offset``, and reaction
    events carry their resulting ``count``, so a replayed one changes nothing."""
    queue = _wire(client)
    task = asyncio.create_task(client.open_channel(CH, limit=10))
    history = await _next_frame(queue)
    assert history["op"] == "history"
    feed(client, {"type": "history", "id": history["id"], "channel": CH, "offset": 7, "messages": [
        {"id": "m5", "offset": 5, "author": BOB, "text": "hi", "ts": 1.0, "reactions": {"👍": 2}, "mine": ["👍"]}]})
    subscribe = await _next_frame(queue)
    assert subscribe["op"] == "subscribe" and subscribe["since"] == 7  # the page's offset, not the message's 5
    feed(client, {"type": "subscribed", "id": subscribe["id"], "channel": CH, "offset": 8, "replayed": 1},
         {"offset": 8, "type": "reaction", "channel": CH, "message_id": "m5", "user": BOB, "emoji": "👍",
          "ts": 2.0, "count": 3})
    messages = await task
    assert [m.id for m in messages] == ["m5"] and messages[0].mine == ["👍"]
    (reaction,) = [e for e in await drain(client) if isinstance(e, Reaction)]
    assert reaction.count == 3 and not reaction.remove


async def test_unread_returns_every_channels_read_state(client: StormClient) -> None:
    queue = _wire(client)
    task = asyncio.create_task(client.unread(timeout=1))
    frame = await _next_frame(queue)
    assert frame == {"op": "unread", "id": frame["id"]}
    feed(client, {"type": "unread", "id": frame["id"],
                  "channels": [{"channel": CH, "read": 4, "unread": 2}, {"channel": BOB}]})
    state = await task
    assert [(c.channel, c.read, c.unread) for c in state.channels] == [(CH, 4, 2), (BOB, 0, 0)]


async def test_one_publish_in_flight_per_channel_so_a_retried_one_is_never_overtaken(client: StormClient) -> None:
    """A sender's order: publishes pipelined on one channel, the first refused `unavailable` and retried, would
    have the second stored first (the chaos matrix counted such inversions across service restarts)."""
    from storm_sdk.client import _Conn

    other = "4544c2a5-e534-6a78-b9e1-0fb363e09a06"
    written: list[dict[str, Any]] = []
    client._write = lambda frame: written.append(frame) or True  # type: ignore[method-assign]
    client._conn = conn = _Conn(7, None)  # type: ignore[arg-type]
    sender = asyncio.create_task(client._sender(conn))
    try:
        first, second, elsewhere = client.publish(CH, "one"), client.publish(CH, "two"), client.publish(other, "x")
        await asyncio.sleep(0.05)
        # the first of each channel goes; the second waits for the first's answer
        assert [(f["channel"], f["cmid"]) for f in written] == [(CH, first.cmid), (other, elsewhere.cmid)]
        feed(client, {"type": "error", "id": written[0]["id"], "code": "unavailable", "message": "broker down"})
        await asyncio.sleep(0.05)
        assert [f["cmid"] for f in written] == [first.cmid, elsewhere.cmid]  # `two` still waits behind `one`
        first.retry_at = 0.0  # skip the backoff: `one` is sent again, still before `two`
        client._wake.set()
        await asyncio.sleep(0.05)
        assert [f["cmid"] for f in written] == [first.cmid, elsewhere.cmid, first.cmid]
        feed(client, {"type": "ack", "channel": CH, "cmid": first.cmid, "message_id": "m1", "offset": 1})
        await asyncio.sleep(0.05)
        assert [f["cmid"] for f in written] == [first.cmid, elsewhere.cmid, first.cmid, second.cmid]
        assert [m.text for m in client.pending] == ["two", "x"]  # publish order, both waiting for an ack
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
