"""Tokens already verified, so a client reconnecting with the same token pays no signature check again
(docs/security.md, "Identity"; issue 11: the verification was ≈ 30 % of a connect's CPU).

An entry is the claims of a token whose signature and claims an identity adapter has verified, keyed by
the SHA-256 of the token (32 bytes, not the token: tokens are never kept or logged).  Only successful
verifications are remembered.  An entry lives at most ``ttl_s`` seconds and never past the token's own
``exp`` (the adapter re-checks ``exp`` on every hit with its leeway); the table holds at most
``max_entries`` (the oldest goes first).  What a cached verification does **not** skip: the revocation list
(logout revokes a ``jti``, a ban a subject) and the membership are checked at every connect by the session
(storm/protocol/session.py ``_admit``, storm/directory.py), so revoking access is as immediate as before.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from storm.ports.identity import Claims

MAX_ENTRIES = 20_000  # ≈ 10 MB at most per process
TTL_S = 120.0


class VerifiedTokens:
    __slots__ = ("_entries", "_max", "_now", "_ttl", "hits")

    def __init__(self, *, max_entries: int = MAX_ENTRIES, ttl_s: float = TTL_S,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if max_entries < 0 or ttl_s < 0:
            raise ValueError("max_entries and ttl_s must be >= 0")
        self._entries: dict[bytes, tuple[Claims, float, object]] = {}
        self._max = max_entries
        self._ttl = ttl_s
        self._now = monotonic
        self.hits = 0

    @staticmethod
    def digest(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    def get(self, digest: bytes, tag: object = None) -> Claims | None:
        """The claims verified for this token, if still remembered and verified under ``tag`` (the
        adapter's key generation: a rotated key set forgets every earlier verification)."""
        entry = self._entries.get(digest)
        if entry is None:
            return None
        claims, until, seen_tag = entry
        if until <= self._now() or seen_tag != tag:
            del self._entries[digest]
            return None
        self.hits += 1
        return claims

    def put(self, digest: bytes, claims: Claims, tag: object = None) -> None:
        if self._max == 0 or self._ttl == 0:
            return
        entries = self._entries
        if digest not in entries and len(entries) >= self._max:
            del entries[next(iter(entries))]  # the oldest
        entries[digest] = (claims, self._now() + self._ttl, tag)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
