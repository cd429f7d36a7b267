"""SDK pieces without a server: backoff bounds (seeded, no sleeping), the outbox bound, frame decoding."""

from __future__ import annotations

import random

import pytest
from storm_sdk import (
    Backoff,
    BackoffPolicy,
    ClientClosed,
    ClientOptions,
    Message,
    OutboxFull,
    SendState,
    StormClient,
    retry_hint_s,
)
from storm_sdk.events import decode_frame

from tests.support.dev_server import free_port

pytestmark = pytest.mark.sdk


def test_full_jitter_stays_under_a_doubling_capped_ceiling() -> None:
    policy = BackoffPolicy(initial_s=0.5, max_s=8.0, multiplier=2.0)
    backoff = Backoff(policy, random.Random(1234))
    ceilings = [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    for attempt, ceiling in enumerate(ceilings):
        assert backoff.ceiling(attempt) == ceiling
    samples: dict[int, list[float]] = {i: [] for i in range(len(ceilings))}
    for _ in range(500):
        backoff.reset()
        for attempt in range(len(ceilings)):
            samples[attempt].append(backoff.next_delay(close_code=1006))
    for attempt, delays in samples.items():
        ceiling = ceilings[attempt]
        assert all(0.0 <= d <= ceiling for d in delays), attempt
        # full jitter: the whole range is used, not a band near the ceiling
        assert min(delays) < 0.1 * ceiling and max(delays) > 0.9 * ceiling, attempt
    assert backoff.ceiling(10_000) == 8.0  # no overflow on a very long outage


def test_same_seed_same_delays_and_reset_starts_over() -> None:
    a, b = Backoff(rng=random.Random(7)), Backoff(rng=random.Random(7))
    seq_a = [a.next_delay() for _ in range(6)]
    assert seq_a == [b.next_delay() for _ in range(6)]
    assert len(set(seq_a)) == 6
    a.reset()
    assert a.attempt == 0 and a.next_delay() <= a.policy.initial_s


def test_1012_retry_hint_is_honoured_with_bounded_jitter_and_4029_waits_longer() -> None:
    assert retry_hint_s("draining; retry_ms=2500") == 2.5
    assert retry_hint_s("going away") is None
    policy = BackoffPolicy(initial_s=0.5, max_s=30.0, hint_jitter_s=1.0, crowded_floor_s=5.0)
    backoff = Backoff(policy, random.Random(99))
    hinted = [backoff.next_delay(close_code=1012, reason="retry_ms=2500") for _ in range(200)]
    assert all(2.5 <= d <= 3.5 for d in hinted)
    backoff.reset()
    assert 0 <= backoff.next_delay(close_code=1012, reason="no hint") <= 0.5  # no hint: plain full jitter
    backoff.reset()
    crowded = [backoff.next_delay(close_code=4029) for _ in range(5)]
    assert all(d >= 5.0 for d in crowded)
    assert backoff.next_delay(close_code=1006) <= 30.0


@pytest.mark.parametrize("kwargs", [{"initial_s": 0}, {"initial_s": 5, "max_s": 1}, {"multiplier": 0.5}])
def test_bad_policy_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(**kwargs)


async def test_outbox_is_bounded_and_says_so_clearly() -> None:
    nowhere = f"ws://127.0.0.1:{free_port()}/ws"  # nothing listens: the client stays offline
    client = StormClient(nowhere, lambda: "unused",
                         ClientOptions(outbox_max=3, backoff=BackoffPolicy(initial_s=0.05, max_s=0.1)))
    async with client:
        kept = [client.publish("c", f"m{i}") for i in range(3)]
        with pytest.raises(OutboxFull) as info:
            client.publish("c", "one too many")
        assert info.value.code == "outbox_full" and info.value.limit == 3
        assert "3 messages" in str(info.value)
        assert [m.text for m in client.pending] == ["m0", "m1", "m2"]
        assert all(m.state is SendState.QUEUED for m in kept)
        with pytest.raises(ValueError, match="empty"):
            client.publish("c", "")
    # stopped with messages unacked: waiting on them says so, and the client refuses new work
    with pytest.raises(ClientClosed):
        await kept[0].wait(timeout=1)
    assert kept[0].state is SendState.QUEUED
    with pytest.raises(ClientClosed):
        client.publish("c", "late")


async def test_unreachable_server_reconnects_with_bounded_delays_then_gives_up() -> None:
    nowhere = f"ws://127.0.0.1:{free_port()}/ws"
    calls = 0

    def provider() -> str:
        nonlocal calls
        calls += 1
        return "token"

    options = ClientOptions(backoff=BackoffPolicy(initial_s=0.02, max_s=0.05), max_attempts=4, rng=random.Random(3))
    client = StormClient(nowhere, provider, options)
    seen = []
    async with client:
        async for event in client.events():
            seen.append(event)
    states = [e.state for e in seen]
    assert states[0] == "connecting" and states[-1] == "closed"
    assert "reconnecting" in states
    retry = [e.retry_in for e in seen if e.state == "reconnecting"]
    assert retry and all(0 <= r <= 0.05 for r in retry if r is not None)
    assert calls == 4  # the token provider is asked at every attempt


def test_frames_split_on_newlines_unknown_types_skipped() -> None:
    frame = ('{"offset":5,"type":"message","channel":"c","id":"m","author":"a","text":"x","new_field":1}\n'
             '{"type":"some.future.event","x":1}\n'
             '{"offset":6,"type":"message","channel":"c","id":"n","author":"a","text":"y"}')
    events = decode_frame(frame)
    assert [(type(e), e.offset) for e in events] == [(Message, 5), (Message, 6)]  # type: ignore[union-attr]


def test_bad_options_and_urls_are_refused() -> None:
    with pytest.raises(ValueError, match="outbox_max"):
        ClientOptions(outbox_max=0)
    with pytest.raises(ValueError, match="ws://"):
        StormClient("http://x/ws", lambda: "t")
