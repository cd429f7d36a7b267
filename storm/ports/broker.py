"""Broker port: per-channel ordered logs, broadcast to gateways, work-sharing for consumers.

Contract (every adapter; guarded by tests/contract/test_broker_contract.py):

* A channel log is addressed by ``(workspace, channel)``; the workspace is always the first argument.
* The broker side of a workspace exists once ``ensure_workspace`` returned; publishing to a workspace that
  was never ensured is an error for Pulsar (no tenant) and tolerated by the memory adapter.
* ``publish`` returns the record's offset only once the record is durable (for Pulsar: persisted by
  BookKeeper and acknowledged to the producer).  Offsets of one channel are positive and **strictly
  increasing** in log order, but **not dense** in general: the Pulsar adapter's offsets are packed ledger
  positions and jump at every ledger boundary (ADR 0005).  Only the memory adapter's offsets are dense
  (1, 2, 3 …).  So a consumer never computes a gap by subtracting offsets; it counts by reading.
* A log keeps records for the retention configured for the workspace; ``read`` from an offset older than
  the earliest retained raises :class:`storm.errors.OffsetTruncated` carrying ``earliest``, the offset of
  the oldest record still retained.  ``read`` from an offset that falls between two records (a gap) starts
  at the next record; that is not truncation.
* Broadcast: every ``BroadcastSubscription`` (one per gateway) receives every durable record of every
  channel it has added, exactly once and in offset order, from the moment ``add`` returned.  Ephemeral
  records (typing, presence) have ``offset == 0``, are never stored, and are best effort.
* Work sharing: all consumers of one named ``WorkSubscription`` share its records, each record going to
  one consumer at a time.  A record not acknowledged within the ack timeout, or negatively acknowledged,
  is delivered again (``delivery_count`` grows).  Records of one channel are handed out in offset order,
  also across redeliveries: a later record of a channel is not handed out before a handed-back earlier one.
* ``dead_letter`` moves a record to the subscription's dead-letter log (Pulsar: a topic per workspace,
  ``{ws}/channels/{name}.dlq``) and acknowledges it.

Optional capabilities are their own small protocols at the end (centrifuge's ``Closer`` habit): a caller
holding a ``Broker`` asks ``isinstance(broker, ChannelPreparer)`` rather than probing with ``hasattr``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from storm.domain import Plan


@dataclass(frozen=True, slots=True)
class Record:
    workspace: str  # workspace slug
    channel: str  # channel id (hex UUID)
    offset: int  # strictly increasing per channel (dense only in memory); 0 for ephemeral records
    payload: bytes  # a JSON object, the channel event without its offset
    publish_time: float = 0.0  # epoch seconds, set by the broker


@dataclass(frozen=True, slots=True)
class Delivery:
    record: Record
    delivery_count: int  # 1 on first delivery
    token: object  # adapter-specific handle used by ack/nack


BroadcastHandler = Callable[[Record], None]


class BroadcastSubscription(Protocol):
    async def add(self, workspace: str, channel: str) -> None:
        """Start receiving ``channel``'s records.  Idempotent."""
        ...

    async def remove(self, workspace: str, channel: str) -> None:
        """Stop receiving ``channel``'s records.  Idempotent."""
        ...

    async def close(self) -> None: ...


class WorkSubscription(Protocol):
    async def receive(self, max_records: int, timeout: float) -> list[Delivery]:
        """Up to ``max_records`` deliveries; waits at most ``timeout`` seconds for the first one."""
        ...

    async def ack(self, deliveries: Sequence[Delivery]) -> None: ...

    async def nack(self, deliveries: Sequence[Delivery], delay: float) -> None:
        """Hand the deliveries back; they are redelivered after ``delay`` seconds."""
        ...

    async def dead_letter(self, delivery: Delivery, reason: str) -> None:
        """Move a delivery to the subscription's dead-letter log and acknowledge it."""
        ...

    async def close(self) -> None: ...


class Broker(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def ensure_workspace(self, workspace: str, plan: Plan) -> None:
        """Create (or update) the broker side of a workspace: for Pulsar its tenant, namespaces, policies."""
        ...

    async def delete_workspace(self, workspace: str) -> None:
        """Remove the workspace's logs and everything under it.  Idempotent."""
        ...

    async def publish(self, workspace: str, channel: str, payload: bytes) -> int:
        """Append a durable record; returns its offset once durable."""
        ...

    async def publish_ephemeral(self, workspace: str, channel: str, payload: bytes) -> None:
        """Broadcast a record that is never stored (typing, presence).  Best effort, no offset."""
        ...

    async def read(self, workspace: str, channel: str, from_offset: int, limit: int, *,
                   head: int | None = None) -> list[Record]:
        """Records with ``offset >= from_offset`` in order, at most ``limit``.  ``head``: the caller's
        :meth:`head`, when it has one (records above it may or may not be returned; it saves a lookup)."""
        ...

    async def head(self, workspace: str, channel: str) -> int:
        """Offset of the last durable record of the channel; 0 when it has none."""
        ...

    async def subscribe_broadcast(self, handler: BroadcastHandler) -> BroadcastSubscription: ...

    async def subscribe_work(self, name: str) -> WorkSubscription: ...


# -- optional capabilities -----------------------------------------------------------------------------------
@runtime_checkable
class ChannelPreparer(Protocol):
    """A broker whose channel logs are better created ahead of their first record (Pulsar: a topic), so
    that work subscriptions already attached to the workspace find them at once (tools and tests that
    publish right after subscribing).  The memory broker needs nothing of the kind."""

    async def ensure_channel(self, workspace: str, channel: str) -> None: ...


@runtime_checkable
class WorkScope(Protocol):
    """A broker whose work subscriptions discover workspaces by themselves (Pulsar: they cover every
    tenant); ``limit_work_to`` narrows the subscriptions opened from now on to the workspaces
    ``workspace_filter`` accepts (benches and tests sharing one cluster)."""

    def limit_work_to(self, workspace_filter: Callable[[str], bool]) -> None: ...


@runtime_checkable
class WorkBacklog(Protocol):
    """A broker that can tell how many records wait on a work subscription (the ``storm.consumer.backlog``
    gauge, docs/observability.md).  Raises :class:`storm.errors.StormError` when it cannot tell now."""

    async def work_backlog(self, name: str) -> int: ...
