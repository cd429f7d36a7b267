"""StormClient against a real `storm dev` process: chat, resume after a dropped socket, and a SIGKILL of
the server with a restart on the same port while Alice keeps publishing.

The SIGKILL test checks what embedded mode promises (docs/delivery.md): the in-process broker loses what
the persistence worker had not stored yet, and forgets its cmid claims.  So the test pauses Alice's
publisher, waits until everything acked is **stored** (visible in `history`), kills, lets Alice publish
into her outbox while the server is down, restarts it, and checks that Bob sees every message once, in
Alice's order, and that Alice's outbox drained with one ack per message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from storm_sdk import (
    Acked,
    BackoffPolicy,
    ClientClosed,
    ClientOptions,
    ConnectionState,
    Message,
    SendState,
    StormClient,
    StormError,
    dev_token_provider,
    list_channels,
)

from tests.support.dev_server import StormProcess

pytestmark = [pytest.mark.e2e, pytest.mark.sdk]

FAST = ClientOptions(backoff=BackoffPolicy(initial_s=0.2, max_s=1.0), request_timeout_s=15.0)


class Recorder:
    """Collects a client's events in the background."""

    def __init__(self, client: StormClient) -> None:
        self.client = client
        self.events: list[Any] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for event in self.client.events():
            self.events.append(event)

    def messages(self, channel: str) -> list[Message]:
        return [e for e in self.events if isinstance(e, Message) and e.channel == channel]

    async def until(self, predicate: Callable[[], bool], timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; state {self.client.state}, last events {self.events[-5:]}")
            await asyncio.sleep(0.02)


class CountingProvider:
    def __init__(self, base: str, user: str) -> None:
        self.inner = dev_token_provider(base, user)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        return await self.inner()


@pytest.fixture
async def channels(storm_server: StormProcess) -> dict[str, str]:
    return await list_channels(storm_server.base, await dev_token_provider(storm_server.base, "alice")())


@pytest.fixture
async def pair(storm_server: StormProcess) -> AsyncIterator[tuple[StormClient, StormClient, Recorder, Recorder,
                                                                   CountingProvider]]:
    alice_tokens = CountingProvider(storm_server.base, "alice")
    alice = StormClient(storm_server.ws, alice_tokens, FAST)
    bob = StormClient(storm_server.ws, dev_token_provider(storm_server.base, "bob"), FAST)
    async with alice, bob:
        rec_a, rec_b = Recorder(alice), Recorder(bob)
        yield alice, bob, rec_a, rec_b, alice_tokens
    await asyncio.gather(rec_a.task, rec_b.task)  # the streams end after stop()


async def test_two_clients_chat_each_message_once_in_order(pair: Any, channels: dict[str, str]) -> None:
    alice, bob, rec_a, rec_b, _ = pair
    ch = channels["general"]
    await asyncio.gather(alice.subscribe(ch), bob.subscribe(ch))
    sent = []
    for i in range(5):
        sent.append(alice.publish(ch, f"alice {i}"))
        sent.append(bob.publish(ch, f"bob {i}"))
    done = await asyncio.gather(*(m.wait(10) for m in sent))
    assert all(m.message_id and m.offset for m in done)
    for rec in (rec_a, rec_b):
        await rec.until(lambda rec=rec: len(rec.messages(ch)) == 10)
        offsets = [m.offset for m in rec.messages(ch)]
        assert offsets == sorted(offsets) and len(set(offsets)) == 10
        assert {m.id for m in rec.messages(ch)} == {m.message_id for m in sent}
    # each side's own messages keep their publish order
    assert [m.text for m in rec_b.messages(ch) if m.text.startswith("alice")] == [f"alice {i}" for i in range(5)]
    acked = [e.message for e in rec_a.events if isinstance(e, Acked)]
    assert sorted(m.text for m in acked) == [f"alice {i}" for i in range(5)]  # one Acked per message
    assert alice.pending == [] and bob.pending == []


async def test_a_dropped_socket_resumes_from_the_last_offset(pair: Any, channels: dict[str, str]) -> None:
    alice, bob, _, rec_b, _ = pair
    ch = channels["random"]
    await asyncio.gather(alice.subscribe(ch), bob.subscribe(ch))
    await asyncio.gather(*(alice.publish(ch, f"before {i}").wait(10) for i in range(3)))
    await rec_b.until(lambda: len(rec_b.messages(ch)) == 3)
    seen = len(rec_b.events)
    bob._conn.ws.transport.abort()  # type: ignore[union-attr]  # the network drops: no close frame (1006)
    # the event, not the state: with a backoff drawn near 0 the client can be back online between two polls
    # of its state (CI of 2026-12-07: RECONNECTING and ONLINE again within 3 ms)
    await rec_b.until(lambda: any(getattr(e, "state", None) is ConnectionState.RECONNECTING
                                  for e in rec_b.events[seen:]), timeout=5)
    missed = [alice.publish(ch, f"missed {i}") for i in range(4)]
    await asyncio.gather(*(m.wait(10) for m in missed))
    await rec_b.until(lambda: len(rec_b.messages(ch)) == 7)
    texts = [m.text for m in rec_b.messages(ch)]
    assert texts == [f"before {i}" for i in range(3)] + [f"missed {i}" for i in range(4)]
    resumed = [e for e in rec_b.events if type(e).__name__ == "Subscribed" and e.channel == ch]
    assert len(resumed) == 2
    await asyncio.sleep(0.3)
    assert len(rec_b.messages(ch)) == 7  # nothing more came, no duplicate


async def test_messages_in_flight_when_the_socket_drops_are_resent_with_their_cmid_once(
        pair: Any, channels: dict[str, str]) -> None:
    alice, bob, _, rec_b, _ = pair
    ch = channels["general"]
    await asyncio.gather(alice.subscribe(ch), bob.subscribe(ch))
    start = len(rec_b.messages(ch))
    sent = [alice.publish(ch, f"flight {i}") for i in range(20)]
    while not any(m.state is SendState.SENT for m in sent):
        await asyncio.sleep(0)
    alice._conn.ws.transport.abort()  # type: ignore[union-attr]  # with publishes sent and not acked
    in_flight = [m for m in sent if m.state is SendState.SENT]
    assert in_flight
    await asyncio.gather(*(m.wait(15) for m in sent))
    assert all(m.attempts >= 2 for m in in_flight)  # resent on the new connection ...
    await rec_b.until(lambda: len(rec_b.messages(ch)) >= start + 20)
    await asyncio.sleep(0.3)
    got = rec_b.messages(ch)[start:]
    assert [m.text for m in got] == [f"flight {i}" for i in range(20)]  # ... and shown once, in order
    assert [m.id for m in got] == [m.message_id for m in sent]

    # the same cmid from another connection of the same user: the original ack, no second message
    async with StormClient(alice.url, dev_token_provider(alice.url.replace("ws://", "http://")[:-3], "alice"),
                           FAST) as again:
        retry = await again.publish(ch, "flight 0", cmid=sent[0].cmid).wait(10)
    assert retry.duplicate and retry.message_id == sent[0].message_id and retry.offset == sent[0].offset
    await asyncio.sleep(0.3)
    assert len(rec_b.messages(ch)) == start + 20


async def _stored_up_to(client: StormClient, ch: str, offset: int, timeout: float = 10.0) -> None:
    """Wait until the persistence worker stored offset `offset` of `ch` (it shows in history)."""
    deadline = time.monotonic() + timeout
    while True:
        page = await client.history(ch, limit=1)
        if page.messages and page.messages[0].offset >= offset:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"offset {offset} not stored within {timeout} s")
        await asyncio.sleep(0.05)


async def test_sigkill_and_restart_lose_nothing_and_duplicate_nothing(
        pair: Any, channels: dict[str, str], storm_server: StormProcess) -> None:
    alice, bob, rec_a, rec_b, alice_tokens = pair
    ch = channels["bench"]
    await asyncio.gather(alice.subscribe(ch), bob.subscribe(ch))
    gate = asyncio.Event()
    gate.set()
    published = []

    async def publisher(total: int) -> None:  # Alice keeps publishing, before, during and after the outage
        for i in range(total):
            await gate.wait()
            published.append(alice.publish(ch, f"n{i:03d}"))
            await asyncio.sleep(0.03)

    task = asyncio.create_task(publisher(60))
    await rec_a.until(lambda: len(published) >= 15)
    gate.clear()  # pause at a point where nothing is in flight, then wait until all of it is stored
    await asyncio.gather(*(m.wait(10) for m in published))
    await _stored_up_to(alice, ch, max(m.offset for m in published))
    connects_before = alice_tokens.calls

    await asyncio.to_thread(storm_server.kill)
    await rec_a.until(lambda: alice.state is ConnectionState.RECONNECTING, timeout=10)
    await rec_b.until(lambda: bob.state is ConnectionState.RECONNECTING, timeout=10)
    gate.set()  # publishing goes on while the server is down: into the outbox
    await rec_a.until(lambda: len(published) >= 30)
    offline = [m for m in published if not m.acked]
    assert len(offline) >= 10 and alice.pending == offline

    await asyncio.to_thread(storm_server.start)
    await task
    results = await asyncio.gather(*(m.wait(30) for m in published))
    assert len(results) == 60 and alice.pending == []
    await rec_b.until(lambda: len(rec_b.messages(ch)) >= 60, timeout=30)
    await asyncio.sleep(0.3)  # a duplicate would show up now

    got = rec_b.messages(ch)
    assert [m.text for m in got] == [f"n{i:03d}" for i in range(60)]  # nothing lost, nothing twice, in order
    assert len({m.id for m in got}) == 60
    assert [m.offset for m in got] == sorted(m.offset for m in got)
    assert {m.message_id for m in published} == {m.id for m in got}  # acks name the delivered messages
    assert alice_tokens.calls > connects_before  # a fresh token for the new connection
    assert alice.state is ConnectionState.ONLINE and bob.state is ConnectionState.ONLINE
    assert all(m.offset == got[i].offset for i, m in enumerate(published))


async def test_a_refused_token_closes_for_good_with_the_servers_reason(storm_server: StormProcess) -> None:
    client = StormClient(storm_server.ws, lambda: "not-a-token", FAST)
    async with client:
        seen = [event async for event in client.events()]
    errors = [e for e in seen if type(e).__name__ == "ServerError"]
    assert errors and errors[0].code == "unauthenticated"
    assert seen[-1].state is ConnectionState.CLOSED and seen[-1].code == 4001  # not retried: 4001 is final
    with pytest.raises(ClientClosed) as info:
        await client.subscribe("x")
    assert info.value.close_code == 4001


async def test_subscribing_to_an_unknown_channel_raises_not_found(pair: Any) -> None:
    alice = pair[0]
    with pytest.raises(StormError) as info:
        await alice.subscribe("00000000-0000-4000-8000-000000000000")
    assert info.value.code == "not_found" and not info.value.retriable
