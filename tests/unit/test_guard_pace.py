"""Admission by pace (gateway/guard.py): beyond QUEUE_FLOOR handshakes in progress, an upgrade is refused 503
when those in progress would take more than QUEUE_TARGET_S at the recent answering rate, with a Retry-After
of that wait; a fixed bound let storm day's gateways queue a minute of handshakes that then timed out."""

from __future__ import annotations

from gateway.guard import PACE_WINDOW_S, QUEUE_FLOOR, QUEUE_TARGET_S, HandshakeGuard
from storm.config import Config


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _guard(clock: Clock, **kw: object) -> HandshakeGuard:
    return HandshakeGuard(Config.from_env({}, store="memory", **kw), clock=clock)


def _admit(guard: HandshakeGuard, n: int) -> list[int]:
    """Statuses of n upgrades (0: admitted)."""
    out = []
    for _ in range(n):
        refusal = guard.admit({}, "127.0.0.2")
        out.append(0 if refusal is None else refusal.status)
    return out


def test_a_slow_gateway_refuses_beyond_what_it_answers_in_the_target_time() -> None:
    clock = Clock()
    guard = _guard(clock, max_handshakes=100_000, max_connections_per_ip=100_000, handshake_retry_after_s=1)
    assert _admit(guard, QUEUE_FLOOR) == [0] * QUEUE_FLOOR  # a cold start: the floor always gets in
    for _ in range(int(PACE_WINDOW_S * 4)):  # 10 answered and 10 new every 0.25 s: 40 per second
        clock.t += 0.25
        for _ in range(10):
            guard.handshake_over()
        assert _admit(guard, 10) == [0] * 10
    pace = guard.pace()
    assert 38 <= pace <= 42
    room = int(pace * QUEUE_TARGET_S) + 1 - guard.handshakes  # up to what the gateway answers in QUEUE_TARGET_S
    statuses = _admit(guard, 200)
    assert room > 0 and statuses == [0] * room + [503] * (200 - room)
    refusal = guard.admit({}, "127.0.0.2")
    assert refusal is not None and refusal.status == 503
    assert refusal.retry_after >= 5  # the wait at this pace, not the configured 1 s
    for _ in range(guard.handshakes):  # answered: room again
        guard.handshake_over()
    assert _admit(guard, 10) == [0] * 10


def test_a_fast_gateway_is_bounded_by_max_handshakes_only() -> None:
    clock = Clock()
    guard = _guard(clock, max_handshakes=500, max_connections_per_ip=100_000)
    for _ in range(20):  # 1 600 answered per second
        assert _admit(guard, 400) == [0] * 400
        for _ in range(400):
            guard.handshake_over()
        clock.t += 0.25
    assert _admit(guard, 600).count(0) == 500


def test_sockets_that_go_away_do_not_count_in_the_pace() -> None:
    clock = Clock()
    guard = _guard(clock, max_connections_per_ip=100_000)
    assert _admit(guard, 1000) == [0] * 1000  # nothing answered yet: no pace, the fixed bound (1 024) only
    for _ in range(20):
        guard.handshake_over()  # answered
    for _ in range(400):
        guard.handshake_over(answered=False)  # the peers went away: no work done for them
    clock.t += 0.75
    assert guard.pace() == 20.0  # 20 in the first second
    room = int(20 * QUEUE_TARGET_S) + 1 - guard.handshakes
    assert guard.handshakes == 580 and room < 0
    assert _admit(guard, 1) == [503]


def test_a_storm_after_a_lull_is_held_to_the_pace_last_measured() -> None:
    """The survivors of a gateway kill: a pace measured during the ramp, a quiet hold longer than the pace
    window, then thousands of upgrades within a second. The pace last measured bounds them, not the fixed
    bound: those admitted are answered within the target, the rest told to come back."""
    clock = Clock()
    guard = _guard(clock, max_handshakes=100_000, max_connections_per_ip=100_000, handshake_retry_after_s=2)
    for _ in range(int(PACE_WINDOW_S * 4)):  # a ramp answered at 40 per second
        assert _admit(guard, 10) == [0] * 10
        clock.t += 0.25
        for _ in range(10):
            guard.handshake_over()
    assert 38 <= guard.pace() <= 42
    clock.t += 10 * PACE_WINDOW_S  # the hold: nothing answered for a while
    statuses = _admit(guard, 2000)
    admitted = statuses.count(0)
    assert QUEUE_FLOOR <= admitted <= 42 * QUEUE_TARGET_S + 1  # ~200, not 2 000
    assert statuses == [0] * admitted + [503] * (2000 - admitted)
