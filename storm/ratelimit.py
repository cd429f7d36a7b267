"""Token buckets: the local rate limiter used per connection (and, via the cache, per user/workspace)."""

from __future__ import annotations


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
