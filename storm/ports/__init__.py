"""Ports: the small interfaces STORM's core depends on (centrifuge's Broker/PresenceManager habit).

Each port has an embedded adapter with the same semantics (``storm.adapters``) and real adapters; one
contract suite per port (``tests/contract``) runs against all of them.
"""

from storm.ports.broker import BroadcastHandler, Broker, Delivery, Record, WorkSubscription
from storm.ports.cache import Cache, PresenceEntry
from storm.ports.clock import Clock, SystemClock
from storm.ports.identity import Claims, IdentityVerifier
from storm.ports.store import Store, UnitOfWork

__all__ = [
    "BroadcastHandler", "Broker", "Cache", "Claims", "Clock", "Delivery", "IdentityVerifier",
    "PresenceEntry", "Record", "Store", "SystemClock", "UnitOfWork", "WorkSubscription",
]
