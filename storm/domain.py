"""Domain model: workspaces (tenants), users, memberships, channels, messages, reactions, read markers.

Plain frozen dataclasses with no I/O.  Identifiers are UUIDs (CockroachDB spreads UUID keys across ranges;
sequential integers would make one hot range).  The workspace id is part of every tenant-owned record.
See docs/architecture.md.
"""

from __future__ import annotations

import enum
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

MAX_BODY_CHARS = 4000
MAX_EMOJI_CHARS = 64
# Portable patterns (pydantic's Rust regex reads them too).  In Python use `fullmatch`: `$` alone would
# accept a trailing newline.
SLUG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{1,38}[a-z0-9])$")
CHANNEL_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,79}$")


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable(text: str) -> str | None:
    """Why the SQL store cannot hold ``text`` (PostgreSQL refuses NUL in text, and no database encodes a
    lone surrogate as UTF-8), or None when it can.  Writes check it before anything is published."""
    found = _UNSTORABLE.search(text)
    if found is None:
        return None
    char = found.group()
    if char == "\x00":
        return "text must not contain U+0000 (NUL)"
    return f"text must not contain U+{ord(char):04X} (a lone surrogate)"


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> uuid.UUID:
    return uuid.uuid4()


class Role(enum.StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"

    @property
    def rank(self) -> int:
        return {"owner": 3, "admin": 2, "member": 1}[self.value]

    def at_least(self, other: Role) -> bool:
        return self.rank >= other.rank


class ChannelKind(enum.StrEnum):
    PUBLIC = "public"
    PRIVATE = "private"
    DIRECT = "direct"  # a private channel of exactly two members


@dataclass(frozen=True, slots=True)
class Plan:
    name: str
    max_members: int
    max_channels: int
    max_connections: int
    messages_per_second: int
    retention_days: int


PLANS: dict[str, Plan] = {
    "free": Plan("free", max_members=50, max_channels=50, max_connections=200, messages_per_second=50,
                 retention_days=7),
    "pro": Plan("pro", max_members=1000, max_channels=1000, max_connections=5000, messages_per_second=1000,
                retention_days=90),
    "enterprise": Plan("enterprise", max_members=100000, max_channels=20000, max_connections=100000,
                       messages_per_second=20000, retention_days=365),
}


@dataclass(frozen=True, slots=True)
class Workspace:
    id: uuid.UUID
    slug: str
    name: str
    plan: str = "free"
    created_at: datetime = field(default_factory=utcnow)

    @property
    def quotas(self) -> Plan:
        return PLANS[self.plan]


@dataclass(frozen=True, slots=True)
class User:
    id: uuid.UUID
    subject: str  # identity provider subject, e.g. "dev|alice" or "auth0|64f…"
    name: str
    created_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True, slots=True)
class Membership:
    workspace_id: uuid.UUID
    user_id: uuid.UUID
    role: Role
    created_at: datetime = field(default_factory=utcnow)


@dataclass(frozen=True, slots=True)
class Channel:
    id: uuid.UUID
    workspace_id: uuid.UUID
    name: str
    kind: ChannelKind = ChannelKind.PUBLIC
    archived: bool = False
    created_by: uuid.UUID | None = None
    created_at: datetime = field(default_factory=utcnow)

    @property
    def is_private(self) -> bool:
        return self.kind is not ChannelKind.PUBLIC


@dataclass(frozen=True, slots=True)
class Message:
    id: uuid.UUID
    workspace_id: uuid.UUID
    channel_id: uuid.UUID
    author_id: uuid.UUID
    body: str
    offset: int  # position in the channel log, assigned by the broker
    created_at: datetime
    client_msg_id: str | None = None
    thread_id: uuid.UUID | None = None
    edited_at: datetime | None = None
    deleted_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Reaction:
    workspace_id: uuid.UUID
    message_id: uuid.UUID
    user_id: uuid.UUID
    emoji: str


@dataclass(frozen=True, slots=True)
class ReadMarker:
    workspace_id: uuid.UUID
    channel_id: uuid.UUID
    user_id: uuid.UUID
    offset: int


def direct_channel_name(a: uuid.UUID, b: uuid.UUID) -> str:
    """Deterministic name of the DM channel between two users, so creating it twice conflicts."""
    lo, hi = sorted((a.hex, b.hex))
    return f"dm-{lo[:12]}-{hi[:12]}"
