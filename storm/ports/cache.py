"""Cache port: presence, cache-aside key/values (membership), put-if-absent (dedup), counters.

Every key lives under a workspace: the workspace is the first argument of every call and
``drop_workspace`` removes all of a workspace's keys.  Contract in tests/contract/test_cache_contract.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class PresenceEntry:
    user_id: str
    name: str


class Cache(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    # -- key/value with TTL (cache-aside; values are small bytes) -----------------------------------------
    async def get(self, workspace: str, key: str) -> bytes | None: ...

    async def set(self, workspace: str, key: str, value: bytes, ttl: float) -> None: ...

    async def delete(self, workspace: str, key: str) -> None: ...

    async def put_if_absent(self, workspace: str, key: str, value: bytes, ttl: float) -> bytes | None:
        """Store ``value`` unless the key exists; returns the existing value, or None when stored."""
        ...

    async def incr(self, workspace: str, key: str, delta: int = 1) -> int:
        """Add ``delta`` to a counter (created at 0) and return the new value."""
        ...

    # -- presence: one entry per (channel, connection), each with its own TTL --------------------------
    async def presence_add(
        self, workspace: str, channel: str, conn_id: str, entry: PresenceEntry, ttl: float
    ) -> bool:
        """Record a connection's presence.  True when the user had no other live entry in the channel."""
        ...

    async def presence_remove(self, workspace: str, channel: str, conn_id: str) -> PresenceEntry | None:
        """Drop a connection's entry.  Returns the user when that was their last entry (they left)."""
        ...

    async def presence_refresh(self, workspace: str, channels: list[str], conn_id: str, ttl: float) -> None:
        """Extend the TTL of the connection's entries (called on heartbeats)."""
        ...

    async def presence_list(self, workspace: str, channel: str) -> list[PresenceEntry]:
        """Users with at least one live entry in the channel, each once."""
        ...

    async def drop_workspace(self, workspace: str) -> None: ...
