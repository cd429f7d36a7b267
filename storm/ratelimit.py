"""Token buckets: the local one of each connection, and the shared ones (per user, per workspace) that every
gateway takes from through the cache, in leases."""

from __future__ import annotations

import asyncio
import math

from storm.ports.cache import Cache
from storm.ports.clock import Clock


class TokenBucket:
    """``rate`` tokens per second up to ``burst``.  ``take(now)`` is O(1) and never allocates."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = now

    def take(self, now: float, n: float = 1.0) -> bool:
        elapsed = now - self._last
        if elapsed > 0:
            self._tokens = min(self._burst, self._tokens + elapsed * self._rate)
            self._last = now
        if self._tokens >= n:
            self._tokens -= n
            return True
        return False

    def retry_after(self, n: float = 1.0) -> float:
        missing = n - self._tokens
        return 0.0 if missing <= 0 else missing / self._rate


LEASE_S = 0.1  # a lease is this much of a shared bucket's rate ...
# ... and is dropped when not used up within this.  Long enough that a user publishing every few seconds
# keeps their lease between publishes (at 0.25 s every publish of such a user cost a rate_take, i.e. two or
# three Hazelcast round trips); what a lease holds is bounded by its size, not by its age (see SharedLimiter).
LEASE_TTL_S = 10.0
MAX_LEASES = 50_000  # keys remembered per process before expired leases are forgotten


class _Lease:
    __slots__ = ("expires", "pending", "tokens")

    def __init__(self) -> None:
        self.tokens = 0
        self.expires = 0.0
        self.pending: asyncio.Future[float] | None = None


class SharedLimiter:
    """Buckets shared by every gateway through the cache, taken in leases (docs/cache.md, "Rate buckets").

    ``Cache.rate_take`` on Hazelcast is a compare-and-set on one key: a workspace bucket taken once per
    publish by every session of every gateway is a hot key, and racing takers lose and are refused (a
    5 000 msg/s bench was refused 95 % of its publishes).  Instead, a gateway takes ``LEASE_S`` worth of the
    bucket's rate in one ``rate_take`` (``cost`` = the lease) and serves its sessions from it; concurrent
    takers of one key wait for the one refill in flight.  What the gateways admit never exceeds what the
    shared bucket granted: over any window, at most the bucket's burst plus its rate over the window, plus
    the unused part of one lease per gateway taken before the window (a lease is refilled only once used
    up, so that is at most ``ceil(rate * LEASE_S)`` tokens per gateway).  A lease unused after
    ``LEASE_TTL_S`` is dropped, so a gateway does not hold tokens it no longer uses for long (they are
    lost, as in any lease scheme; the bucket refills regardless).  Near the limit, when a whole lease is not
    available, single tokens are taken.
    """

    def __init__(self, cache: Cache, clock: Clock) -> None:
        self._cache = cache
        self._clock = clock
        self._leases: dict[tuple[str, str], _Lease] = {}

    async def take(self, workspace: str, key: str, rate: float, burst: int) -> float:
        """0.0 when one token was taken, else the seconds to wait (nothing taken)."""
        k = (workspace, key)
        while True:  # ends: a refill either fails (refused) or serves at least the taker that made it
            lease = self._leases.get(k)
            if lease is not None and lease.tokens > 0 and self._clock.monotonic() < lease.expires:
                lease.tokens -= 1
                return 0.0
            if lease is not None and lease.pending is not None:
                wait = await asyncio.shield(lease.pending)
                if wait > 0:
                    return wait
                continue  # refilled (or the refill failed: refill ourselves)
            wait = await self._refill(k, rate, burst)
            if wait > 0:
                return wait

    async def _refill(self, k: tuple[str, str], rate: float, burst: int) -> float:
        lease = self._leases.get(k)
        if lease is None:
            if len(self._leases) >= MAX_LEASES:
                self._forget_expired()
            lease = self._leases[k] = _Lease()
        done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        lease.pending = done
        outcome = 0.0  # what waiters see: > 0 refused, 0 refilled (or failed: they try themselves)
        try:
            size = max(1, min(burst, math.ceil(rate * LEASE_S)))
            wait = await self._cache.rate_take(k[0], k[1], rate, burst, size)
            if wait > 0 and size > 1:
                size = 1
                wait = await self._cache.rate_take(k[0], k[1], rate, burst, 1)
            if wait <= 0:
                lease.tokens, lease.expires = size, self._clock.monotonic() + LEASE_TTL_S
            outcome = wait
            return wait
        finally:
            lease.pending = None
            done.set_result(outcome)

    def _forget_expired(self) -> None:
        now = self._clock.monotonic()
        for key in [key for key, lease in self._leases.items() if lease.pending is None and lease.expires <= now]:
            del self._leases[key]
