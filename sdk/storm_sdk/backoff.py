"""Reconnect delays: capped exponential backoff with full jitter (docs/sdk.md#reconnecting).

Attempt ``n`` (0-based) waits a uniformly random time in ``[0, min(max_s, initial_s * multiplier**n)]``
("full jitter"), so that clients dropped together by one gateway restart do not come back together.
A close 1012 whose reason carries ``retry_ms=<n>`` waits about ``n`` ms plus up to ``hint_jitter_s``.
An overloaded gateway's answer — HTTP 503 or 429 with ``Retry-After: <s>`` before the upgrade, or a close 1013
with ``retry_ms=<n>`` — waits that long plus a random share of up to as much again (at least
``hint_jitter_s``): a storm of clients told "2 s" comes back spread over 2 to 4 s, not all at 2 s
(docs/protocol.md#handshake).
No I/O and no clock: the caller sleeps, and tests pass a seeded :class:`random.Random`.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

_RETRY_MS = re.compile(r"retry_ms=(\d{1,9})")


@dataclass(frozen=True, slots=True)
class BackoffPolicy:
    initial_s: float = 0.5  # ceiling of the first delay
    max_s: float = 30.0  # cap of the ceiling
    multiplier: float = 2.0
    hint_jitter_s: float = 1.0  # random extra added to a server's retry hint
    crowded_floor_s: float = 5.0  # minimum wait after 4029 (too many connections)

    def __post_init__(self) -> None:
        if not (0 < self.initial_s <= self.max_s):
            raise ValueError("BackoffPolicy: need 0 < initial_s <= max_s")
        if self.multiplier < 1:
            raise ValueError("BackoffPolicy: multiplier must be >= 1")
        if self.hint_jitter_s < 0 or self.crowded_floor_s < 0:
            raise ValueError("BackoffPolicy: hint_jitter_s and crowded_floor_s must be >= 0")


def retry_hint_s(reason: str | None) -> float | None:
    """Seconds asked by a ``retry_ms=<n>`` in a close reason, or None."""
    match = _RETRY_MS.search(reason or "")
    return int(match.group(1)) / 1000 if match else None


class Backoff:
    """The delays of one client; :meth:`reset` after a successful connection."""

    def __init__(self, policy: BackoffPolicy | None = None, rng: random.Random | None = None) -> None:
        self.policy = policy or BackoffPolicy()
        self.rng = rng or random.Random()  # jitter, not security
        self.attempt = 0

    def ceiling(self, attempt: int) -> float:
        """Upper bound of the delay of attempt ``attempt``."""
        p = self.policy
        ceiling = p.initial_s
        for _ in range(attempt):  # bounded loop instead of a power that could overflow
            ceiling *= p.multiplier
            if ceiling >= p.max_s:
                return p.max_s
        return min(ceiling, p.max_s)

    def next_delay(self, *, close_code: int | None = None, reason: str | None = None,
                   retry_after_s: float | None = None) -> float:
        """The delay before the next attempt, and count the attempt.  ``retry_after_s``: the server's
        ``Retry-After`` when it refused the upgrade (503 overload, 429 per address)."""
        p = self.policy
        overload = retry_after_s if retry_after_s is not None else (
            retry_hint_s(reason) if close_code == 1013 else None)
        hint = retry_hint_s(reason) if close_code == 1012 else None
        if overload is not None:
            wait = min(max(overload, 0.0), p.max_s)
            delay = wait + self.rng.uniform(0, max(wait, p.hint_jitter_s))
        elif hint is not None:
            delay = min(hint, p.max_s) + self.rng.uniform(0, p.hint_jitter_s)
        else:
            delay = self.rng.uniform(0, self.ceiling(self.attempt))
            if close_code == 4029:
                delay += p.crowded_floor_s
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
