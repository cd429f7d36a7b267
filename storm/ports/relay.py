"""Optional broker capability: relaying channel-log records to per-workspace broadcast logs.

A broker whose gateways follow channels through one broadcast log per workspace (Pulsar with
``STORM_BROADCAST=relay``, docs/adr/0013-following-channels.md, "Amendment: the relay") needs a worker to
copy each channel's records there; the memory broker broadcasts directly and needs none.  Asked with
``isinstance(broker, BroadcastRelay)`` (storm/ports/broker.py, "optional capabilities").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from storm.ports.broker import Record


@runtime_checkable
class BroadcastRelay(Protocol):
    async def relay(self, records: Sequence[Record]) -> None:
        """Append ``records`` (each channel's in offset order) to their workspaces' broadcast logs, with their
        channel and offset; return once every one is durable.  Raises :class:`storm.errors.Unavailable` when
        any of them could not be written: the caller hands the whole batch back (readers drop repeats)."""
        ...
