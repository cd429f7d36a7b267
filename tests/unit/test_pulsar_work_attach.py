"""Attaching a Pulsar work subscription to a workspace's channel topics in chunks (storm/adapters/pulsar_work.py,
docs/consumers.md "Attaching to a workspace"), without Pulsar: the client's subscribe is replaced by a fake
that hands out fake consumers or fails the chunks a test picks.

The real broker is in tests/integration/test_pulsar_work_attach.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, cast

import pulsar
import pulsar.asyncio as pulsar_async
import pytest

from storm.adapters.pulsar_admin import AdminError
from storm.adapters.pulsar_work import ATTACH_CONCURRENCY, PulsarWorkSubscription, WorkOptions, chunked

WS = "acme"


def topic(i: int, ws: str = WS) -> str:
    return f"persistent://{ws}/channels/c{i:03d}"


class FakeConsumer:
    def __init__(self, topics: list[str]) -> None:
        self.topics = topics
        self.paused = False
        self.closed = False

    def pause_message_listener(self) -> None:
        self.paused = True

    def resume_message_listener(self) -> None:
        self.paused = False

    def close_async(self, callback: Callable[[Any], None]) -> None:
        self.closed = True
        callback(pulsar.Result.Ok)


class FakeDirectory:
    def __init__(self, topics: dict[str, list[str]]) -> None:
        self.topics = topics
        self.listing_failures = 0  # the next listings that fail

    async def workspaces(self) -> list[str]:
        return list(self.topics)

    async def channel_topics(self, workspace: str) -> list[str]:
        if self.listing_failures:
            self.listing_failures -= 1
            raise AdminError("Pulsar admin GET: timed out")
        return list(self.topics.get(workspace, []))


class Sub(PulsarWorkSubscription):
    """The subscription with a fake client subscribe: ``fail(topics)`` says whether this subscribe times out;
    ``latency`` delays each answer (a slow broker)."""

    def __init__(self, directory: FakeDirectory, fail: Callable[[list[str]], bool] = lambda _t: False, *,
                 chunk: int = 10, latency: float = 0.0) -> None:
        options = WorkOptions(ack_timeout_s=30.0, discovery_period_s=0.05, pattern_discovery_s=0.05,
                              attach_chunk=chunk, attach_backoff_s=0.01, attach_backoff_cap_s=0.04)
        super().__init__(cast(Any, None), "persistence", options, directory, lambda _s: None)
        self.fail = fail
        self.latency = latency
        self.calls: list[list[str]] = []
        self.opened: list[FakeConsumer] = []
        self.in_flight = 0
        self.max_in_flight = 0

    def _subscribe(self, topics: list[str], conf: Any, done: Callable[[Any], None]) -> None:
        self.calls.append(topics)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

        def answer() -> None:
            self.in_flight -= 1
            if self.fail(topics):
                done(pulsar_async.PulsarException(pulsar.Result.Timeout, "injected"))
            else:
                consumer = FakeConsumer(topics)
                self.opened.append(consumer)
                done(consumer)

        asyncio.get_running_loop().call_later(self.latency, answer)

    def subscribed(self) -> list[str]:
        """Every topic of the consumers that were opened and are still open."""
        return sorted(t for c in self.opened if not c.closed for t in c.topics)


async def until(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_chunked_cuts_in_order_and_keeps_the_remainder() -> None:
    assert chunked(["a", "b", "c", "d", "e"], 2) == [["a", "b"], ["c", "d"], ["e"]]
    assert chunked([], 3) == []
    assert chunked(["a"], 0) == [["a"]]  # never a chunk of nothing


async def test_a_workspace_is_attached_in_chunks_of_at_most_the_chunk_size() -> None:
    topics = [topic(i) for i in range(25)]
    sub = Sub(FakeDirectory({WS: topics}))
    await sub.start()
    try:
        assert [len(c) for c in sub.calls] == [10, 10, 5]
        assert sub.subscribed() == topics
        assert sub.attached_topics(WS) == 25 and sub.consumer_count(WS) == 3
    finally:
        await sub.close()


async def test_only_channel_topics_are_attached_not_dead_letters_broadcast_or_system_topics() -> None:
    listed = [topic(1), f"persistent://{WS}/channels/persistence.dlq", f"persistent://{WS}/channels/workspace.broadcast",
              f"persistent://{WS}/channels/__change_events", topic(1, "other")]
    sub = Sub(FakeDirectory({WS: listed}))
    await sub.start()
    try:
        assert sub.calls == [[topic(1)]]
    finally:
        await sub.close()


async def test_failed_chunks_are_retried_alone_in_halves_and_the_attached_ones_stay() -> None:
    topics = [topic(i) for i in range(30)]
    failures = {topic(3): 0, topic(17): 0}  # the chunks holding these time out twice each

    def fail(chunk: list[str]) -> bool:
        hit = [t for t in chunk if t in failures and failures[t] < 2]
        for t in hit:
            failures[t] += 1
        return bool(hit)

    sub = Sub(FakeDirectory({WS: topics}), fail)
    await sub.start()
    try:
        assert sub.attached_topics(WS) == 10  # after the first round: the chunk without a slow topic
        await until(lambda: sub.attached_topics(WS) == 30)
        assert sub.subscribed() == topics  # every topic once: no chunk subscribed twice, nothing closed
        # 10s: the first round; 5s: the 20 missing (0-9, 10-19); 2s: the 10 of the two halves that failed
        assert [len(c) for c in sub.calls] == [10, 10, 10, 5, 5, 5, 5, 2, 2, 2, 2, 2]
        assert sub.calls[7:] == chunked([topic(i) for i in (0, 1, 2, 3, 4, 15, 16, 17, 18, 19)], 2)
    finally:
        await sub.close()


async def test_start_returns_after_the_first_round_even_when_it_fails_and_attaching_goes_on() -> None:
    down = {"broker": True}
    sub = Sub(FakeDirectory({WS: [topic(i) for i in range(4)]}), lambda _t: down["broker"])
    await asyncio.wait_for(sub.start(), 2.0)
    try:
        assert sub.attached_topics(WS) == 0
        down["broker"] = False
        await until(lambda: sub.attached_topics(WS) == 4)
    finally:
        await sub.close()


async def test_a_topic_listed_later_is_attached_in_a_consumer_of_its_own() -> None:
    directory = FakeDirectory({WS: [topic(i) for i in range(3)]})
    sub = Sub(directory)
    await sub.start()
    try:
        directory.topics[WS].append(topic(9))
        await until(lambda: sub.attached_topics(WS) == 4)
        assert sub.calls == [[topic(0), topic(1), topic(2)], [topic(9)]]
    finally:
        await sub.close()


async def test_a_failed_listing_is_retried_until_the_topics_are_attached() -> None:
    directory = FakeDirectory({WS: [topic(1)]})
    directory.listing_failures = 3
    sub = Sub(directory)
    await sub.start()
    try:
        await until(lambda: sub.attached_topics(WS) == 1)
        assert sub.calls == [[topic(1)]]
    finally:
        await sub.close()


async def test_subscribes_in_flight_are_capped_whatever_the_number_of_workspaces() -> None:
    directory = FakeDirectory({f"ws{n}": [topic(i, f"ws{n}") for i in range(25)] for n in range(6)})
    sub = Sub(directory, latency=0.02)
    await sub.start()
    try:
        assert sum(sub.attached_topics(f"ws{n}") for n in range(6)) == 150
        assert sub.max_in_flight == ATTACH_CONCURRENCY
    finally:
        await sub.close()


async def test_removing_a_workspace_closes_its_chunk_consumers_and_close_closes_the_rest() -> None:
    directory = FakeDirectory({"a": [topic(i, "a") for i in range(15)], "b": [topic(1, "b")]})
    sub = Sub(directory)
    await sub.start()
    a = [c for c in sub.opened if c.topics[0].startswith("persistent://a/")]
    assert len(a) == 2
    await sub.workspace_removed("a")
    assert all(c.closed for c in a) and not any(c.closed for c in sub.opened if c not in a)
    assert sub.attached_topics("a") == 0
    await sub.close()
    assert all(c.closed for c in sub.opened)


async def test_a_removed_workspace_is_not_attached_again_by_a_subscribe_that_was_under_way() -> None:
    directory = FakeDirectory({"a": [topic(1, "a")]})
    sub = Sub(directory, latency=0.2)
    start = asyncio.get_running_loop().create_task(sub.start())
    await until(lambda: sub.in_flight == 1)
    del directory.topics["a"]  # the tenant is deleted
    await sub.workspace_removed("a")
    await start
    await asyncio.sleep(0.3)  # the subscribe answers now: its consumer is closed, not kept
    assert [c.closed for c in sub.opened] == [True]
    assert sub.attached_topics("a") == 0
    await sub.close()


async def test_chunks_attached_while_the_listeners_are_paused_start_paused_and_resume_with_the_rest() -> None:
    directory = FakeDirectory({WS: [topic(1)]})
    sub = Sub(directory)
    await sub.start()
    try:
        sub._set_paused(True)
        directory.topics[WS].append(topic(2))
        await until(lambda: sub.attached_topics(WS) == 2)
        assert [c.paused for c in sub.opened] == [True, True]
        sub._set_paused(False)
        assert [c.paused for c in sub.opened] == [False, False]
    finally:
        await sub.close()


@pytest.mark.parametrize("chunk", [1, 7, 100])
async def test_every_topic_ends_in_exactly_one_consumer_whatever_the_chunk_size_and_failures(chunk: int) -> None:
    topics = [topic(i) for i in range(40)]
    attempts: dict[tuple[str, ...], int] = {}

    def fail(chunk_topics: list[str]) -> bool:  # every other first attempt fails
        key = tuple(chunk_topics)
        attempts[key] = attempts.get(key, 0) + 1
        return attempts[key] == 1 and len(attempts) % 2 == 0

    sub = Sub(FakeDirectory({WS: topics}), fail, chunk=chunk)
    await sub.start()
    try:
        await until(lambda: sub.attached_topics(WS) == 40)
        assert sub.subscribed() == topics
    finally:
        await sub.close()
