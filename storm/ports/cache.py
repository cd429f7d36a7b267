"""Cache port: presence, cache-aside key/values (membership), put-if-absent (dedup), counters, shared
rate buckets and revocation lists.

Every key lives under a workspace: the workspace is the first argument of every call and
``drop_workspace`` removes all of a workspace's keys.  TTLs are seconds and must be > 0 (``BadRequest``
otherwise); an entry lives at least its TTL (Hazelcast: up to ~2 s more, its expiry is in whole seconds).
A backing service that is down raises ``Unavailable``.  Contract in
tests/contract/test_cache_contract.py; guarantees per adapter (what is atomic, what is eventually
consistent) in docs/cache.md.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from storm.errors import BadRequest


@dataclass(frozen=True, slots=True)
class PresenceEntry:
    user_id: str
    name: str


@dataclass(frozen=True, slots=True)
class PresenceKey:
    """One presence entry's address: the workspace first, as in every key."""

    workspace: str
    channel: str
    conn_id: str


PRESENCE_BATCH_MAX = 10_000  # keys one presence_refresh_many call takes (BadRequest beyond)


def check_presence_batch(keys: Sequence[PresenceKey]) -> None:
    """Every adapter's rule for ``presence_refresh_many``: at most ``PRESENCE_BATCH_MAX`` keys, each with a
    non-empty workspace."""
    if len(keys) > PRESENCE_BATCH_MAX:
        raise BadRequest(f"at most {PRESENCE_BATCH_MAX} presence keys per call, not {len(keys)}", field="keys")
    for key in keys:
        if not key.workspace:
            raise BadRequest("every presence key needs a workspace", field="workspace")


PresenceWanted = Callable[[str, str], bool]  # (workspace, channel) -> does this process care?
PresenceExpired = Callable[[str, str, PresenceEntry], None]  # (workspace, channel, the user who is gone)
Unwatch = Callable[[], Awaitable[None]]


_NUMBER = (int, float)  # a tuple: ``int | float`` in the body built a union object on every call (py-spy)


def check_ttl(ttl: float) -> float:
    """Every adapter's TTL rule: a finite number of seconds > 0 (Hazelcast would read 0 as "forever")."""
    if not (isinstance(ttl, _NUMBER) and math.isfinite(ttl) and ttl > 0):
        raise BadRequest(f"ttl must be a finite number of seconds > 0, not {ttl!r}", field="ttl")
    return float(ttl)


def check_bucket(rate: float, burst: int, cost: int) -> None:
    """Every adapter's token-bucket argument rule (see ``Cache.rate_take``)."""
    if not (isinstance(rate, _NUMBER) and math.isfinite(rate) and rate > 0):
        raise BadRequest(f"rate must be a finite number > 0, not {rate!r}", field="rate")
    if not (isinstance(burst, int) and burst >= 1):
        raise BadRequest(f"burst must be an integer >= 1, not {burst!r}", field="burst")
    if not (isinstance(cost, int) and 1 <= cost <= burst):
        raise BadRequest(f"cost must be an integer between 1 and burst ({burst}), not {cost!r}", field="cost")


class Cache(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    # -- key/value with TTL (cache-aside; values are small bytes) -----------------------------------------
    async def get(self, workspace: str, key: str) -> bytes | None: ...

    async def set(self, workspace: str, key: str, value: bytes, ttl: float) -> None: ...

    async def delete(self, workspace: str, key: str) -> None: ...

    async def put_if_absent(self, workspace: str, key: str, value: bytes, ttl: float) -> bytes | None:
        """Store ``value`` unless the key exists; returns the existing value, or None when stored.  Atomic:
        of two concurrent callers (in any process) exactly one gets None."""
        ...

    async def incr(self, workspace: str, key: str, delta: int = 1) -> int:
        """Add ``delta`` to a counter (created at 0) and return the new value.  Counters have no TTL; they go
        with ``drop_workspace``.  Across processes the value read back may lag other processes' increments
        (Hazelcast: a PN counter, eventually consistent), never the caller's own."""
        ...

    # -- limits shared by every process using the cache -------------------------------------------------
    async def rate_take(self, workspace: str, key: str, rate: float, burst: int, cost: int = 1) -> float:
        """Token bucket shared by every process using this cache: take `cost` tokens; 0.0 when allowed,
        otherwise the seconds to wait until `cost` tokens would be available (nothing is taken).

        The bucket refills at ``rate`` tokens per second up to ``burst`` and starts full.  ``rate`` > 0,
        1 <= ``cost`` <= ``burst`` (``BadRequest`` otherwise)."""
        ...

    async def revoke(self, workspace: str, subject: str, ttl: float) -> None:
        """Put `subject` (a user id, or `jti:<token id>`) on the workspace's revocation list for ttl s."""
        ...

    async def is_revoked(self, workspace: str, subject: str) -> bool:
        """True while ``subject`` is on the workspace's revocation list (until its ttl runs out)."""
        ...

    async def revoked_among(self, workspace: str, subjects: Sequence[str]) -> frozenset[str]:
        """The ones of ``subjects`` on the workspace's revocation list now: one call whatever their number
        (the presence keeper re-checks every session's token once per presence TTL; two ``is_revoked`` per
        token were ≈ 0.08 of a core for 50 000 held connections)."""
        ...

    # -- presence: one entry per (channel, connection), each with its own TTL --------------------------
    async def presence_add(
        self, workspace: str, channel: str, conn_id: str, entry: PresenceEntry, ttl: float, *, first: bool = True,
        lease: str | None = None,
    ) -> bool:
        """Record a connection's presence.  True when the user had no other live entry in the channel.

        ``lease``: the entry belongs to that lease (``presence_lease``, one per gateway process) and lives
        exactly as long as it; ``ttl`` is then not used.  Renew the lease first (``presence_lease``): under a
        lease that has lapsed nothing is written (False).  Without a lease the entry has its own ``ttl``
        (``presence_refresh`` extends it).

        ``first=False``: the caller does not want to know (the ``_workspace`` entry of a connect, a channel
        too large for join announcements); the adapter writes the entry without looking at the user's
        others and returns False.  With ``first=True`` the look-up is one count, never a listing of the
        user's entries.

        Within one process this is exact.  Across processes (Hazelcast) joins and leaves are announced at
        least once: two gateways adding a user's first two entries at the same moment may both return True
        (see docs/cache.md, "Presence races")."""
        ...

    async def presence_remove(self, workspace: str, channel: str, conn_id: str, *,
                              last: bool = True) -> PresenceEntry | None:
        """Drop a connection's entry.  Returns the user when that was their last entry (they left).  With
        ``last`` False the caller does not want to know (a channel whose leaves are not announced, the
        workspace's own presence): None, and the look-up for the user's other entries is not made (on
        Hazelcast a predicate query over the members, per disconnect)."""
        ...

    async def presence_refresh(self, workspace: str, channels: list[str], conn_id: str, ttl: float) -> None:
        """Extend the TTL of the connection's entries.  An entry that is gone (expired or removed) stays gone."""
        ...

    async def presence_refresh_many(self, keys: Sequence[PresenceKey], ttl: float) -> None:
        """``presence_refresh`` for many entries of any workspaces in one call: what a presence keeper without
        a lease does once per interval (storm/protocol/presence.py; a gateway's has one).  At most
        ``PRESENCE_BATCH_MAX`` keys (``BadRequest`` beyond); an entry that is gone stays gone; not atomic
        (a failure may leave some refreshed)."""
        ...

    async def presence_lease(self, lease: str, ttl: float) -> bool:
        """Keep the lease ``lease`` (a gateway process's id) alive for ``ttl`` s from now: every entry added
        with it lives as long as it does, so a gateway keeps all its connections' presence with this one
        call per interval, whatever their number (ADR 0010, amendment "the per-gateway presence lease").

        True when the lease was alive; False when it is new or had lapsed.  A lapse is final for the entries
        it held: they are gone (reported as expired to the watchers, never seen again), and the renewed
        lease starts empty.  The call also reaps: the entries of every lease lapsed for ``ttl`` s or more (a
        gateway that died) are removed from the cache, so a dead gateway's leftovers are cleaned by any
        surviving one (memory: at once, when the lapse is noticed).  O(leases), not O(entries)."""
        ...

    async def presence_list(self, workspace: str, channel: str) -> list[PresenceEntry]:
        """Users with at least one live entry in the channel, each once."""
        ...

    async def presence_count(self, workspace: str, channel: str) -> int:
        """Live entries in the channel: connections, not users (the connection quota's recount).  An entry
        whose lease lapsed is not live, whether or not it was reaped yet."""
        ...

    async def watch_presence_expiry(self, wanted: PresenceWanted, listener: PresenceExpired) -> Unwatch:
        """From now on, call ``listener(workspace, channel, entry)`` (on the event loop; it must not block)
        when ``entry``'s user has no live entry left in a channel because one **expired** — its
        connection stopped refreshing it, or its lease lapsed (its gateway died) — for the channels where
        ``wanted(workspace, channel)``.  Removals are not reported (``presence_remove`` already says who
        left).  Every process that watches is told, so each tells its own connections.  At least once,
        and late by the adapter's expiry granularity (memory: a sweep every second; Hazelcast: its
        expiration task, a few seconds, and for leases a poll of the lease map every second).  Returns a
        coroutine function that stops watching."""
        ...

    async def drop_workspace(self, workspace: str) -> None:
        """Remove everything the workspace has in the cache: keys, presence, counters, buckets, revocations."""
        ...
