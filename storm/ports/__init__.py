"""Ports: the small interfaces STORM's core depends on (centrifuge's Broker/PresenceManager habit).

Each port has an embedded adapter with the same semantics (``storm.adapters``) and real adapters; one
contract suite per port (``tests/contract``) runs against all of them.  Optional capabilities of a port
(``ChannelPreparer``, ``WorkScope``, ``WorkBacklog``, ``CountsRetries``) are small protocols of their own;
every adapter module ends with a type-checked proof that it satisfies its port (docs/architecture.md,
"Ports and adapters").
"""

from storm.ports.broker import (
    BroadcastHandler,
    BroadcastSubscription,
    Broker,
    ChannelPreparer,
    Delivery,
    Record,
    WorkBacklog,
    WorkScope,
    WorkSubscription,
)
from storm.ports.cache import Cache, PresenceEntry
from storm.ports.clock import Clock, SystemClock
from storm.ports.identity import Claims, IdentityVerifier
from storm.ports.store import CountsRetries, Store, UnitOfWork

__all__ = [
    "BroadcastHandler", "BroadcastSubscription", "Broker", "Cache", "ChannelPreparer", "Claims", "Clock",
    "CountsRetries", "Delivery", "IdentityVerifier", "PresenceEntry", "Record", "Store", "SystemClock",
    "UnitOfWork", "WorkBacklog", "WorkScope", "WorkSubscription",
]
