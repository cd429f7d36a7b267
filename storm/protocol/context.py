"""What a session needs from the world, and what it is handed to talk to its socket (docs/architecture.md,
"The session core").  Shared by the session and its parts (storm/protocol/subscriptions.py); the gateway
builds one :class:`SessionContext` per process (gateway/runtime.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from storm.config import Config
from storm.directory import Directory
from storm.metrics import GatewayMeters
from storm.ports.broker import Broker
from storm.ports.cache import Cache
from storm.ports.clock import Clock
from storm.ports.identity import IdentityVerifier
from storm.ports.store import Store
from storm.protocol.chat import Chat, SharedPages
from storm.protocol.claims import CmidClaims
from storm.protocol.presence import PresenceAnnouncer
from storm.protocol.quota import ConnectionQuota
from storm.ratelimit import SharedLimiter
from storm.revocation import ControlRouter

CLAIM_IN_DOUBT_MARGIN_S = 2.0  # a pending cmid claim is in doubt this long after the broker's send timeout


class Transport(Protocol):
    def send(self, data: bytes) -> bool:
        """Queue one encoded event (or several joined by newlines).  False if the connection is gone."""
        ...

    def close(self, code: int, reason: str) -> None:
        """Close the connection after the events already queued (or at once for SLOW_CONSUMER)."""
        ...


class Hub(Protocol):
    """Local fan-out (gateway/hub.py): ``session.on_channel_event`` is called for each event of the channel."""

    async def join(self, session: Any, workspace: str, channel: str) -> None: ...

    async def leave(self, session: Any, workspace: str, channel: str) -> None: ...

    def head(self, workspace: str, channel: str) -> int | None:
        """The head of a followed channel as this gateway knows it (None: ask the broker)."""
        ...

    def saw_head(self, workspace: str, channel: str, head: int) -> None:
        """The broker's answer for a followed channel's head."""
        ...

    async def fetch_head(self, workspace: str, channel: str) -> int:
        """Ask the broker for a followed channel's head (one request in flight per channel), combined with
        what this gateway's feed delivered."""
        ...


@dataclass
class SessionContext:
    config: Config
    clock: Clock
    broker: Broker
    cache: Cache
    store: Store
    identity: IdentityVerifier
    directory: Directory
    hub: Hub
    control: ControlRouter = field(default_factory=ControlRouter)  # revocations (storm/revocation.py)
    meters: GatewayMeters = field(default_factory=GatewayMeters)  # plain counters (docs/observability.md)
    cmids: CmidClaims = field(init=False)  # client message ids (storm/protocol/claims.py)
    chat: Chat = field(init=False)  # the chat rules (storm/protocol/chat.py)
    pages: SharedPages = field(init=False)  # the newest history pages, shared for STORM_HISTORY_SHARE_S
    limiter: SharedLimiter = field(init=False)  # user and workspace buckets, leased (storm/ratelimit.py)
    connections: ConnectionQuota = field(init=False)  # the plan's connection quota (storm/protocol/quota.py)
    presence: PresenceAnnouncer = field(init=False)  # joins/leaves, coalesced, small channels only (presence.py)
    # the gateway's presence lease (Cache.presence_lease, renewed by its PresenceKeeper): the sessions' presence
    # entries live by it.  None outside a gateway (tests): entries with a TTL each, as before the lease
    presence_lease: str | None = None

    def __post_init__(self) -> None:
        self.cmids = CmidClaims(self.cache, self.store, self.broker, self.clock, ttl_s=self.config.dedup_ttl_s,
                                in_doubt_s=self.config.publish_timeout_s + CLAIM_IN_DOUBT_MARGIN_S)
        self.chat = Chat(self.store, self.broker, self.clock, self.cmids)
        self.pages = SharedPages(self.store, self.clock, share_s=self.config.history_share_s)
        self.limiter = SharedLimiter(self.cache, self.clock)
        self.connections = ConnectionQuota(self.cache, self.clock)
        self.presence = PresenceAnnouncer(self.cache, self.broker, self.clock,
                                          max_size=self.config.presence_broadcast_max,
                                          coalesce_s=self.config.presence_coalesce_s)
