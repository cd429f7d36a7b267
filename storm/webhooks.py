"""Webhooks, the pure part: records, event mapping, the signature scheme, backoff, target rules.  No I/O.

* **Outgoing** (:class:`Webhook`): an HTTPS endpoint an admin registered for some event types, optionally
  only for some channels.  The worker (consumers/webhooks.py) turns each channel-log record into at most
  one :class:`WebhookEvent` (:func:`event_of`), POSTs it to every matching webhook signed with
  :func:`sign`, and records every attempt as a :class:`DeliveryAttempt`.
* **Incoming** (:class:`IncomingWebhook`): a secret URL that posts into one channel as a named bot user;
  only the SHA-256 of its token is stored (:func:`token_hash`).

The scheme and its reasons are in docs/security.md ("Webhooks"); the worker's policy in docs/consumers.md.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import msgspec

from storm.errors import BadRequest

if TYPE_CHECKING:
    from storm.config import Config

# Event types, as the receiver sees them in the body's "type" and as an admin subscribes to them.
MESSAGE_POSTED = "message.posted"
MESSAGE_EDITED = "message.edited"
MESSAGE_DELETED = "message.deleted"
REACTION_ADDED = "reaction.added"
REACTION_REMOVED = "reaction.removed"
MEMBER_JOINED = "member.joined"
MEMBER_LEFT = "member.left"
MEMBER_EVENTS = (MEMBER_JOINED, MEMBER_LEFT)
EVENT_TYPES = (MESSAGE_POSTED, MESSAGE_EDITED, MESSAGE_DELETED, REACTION_ADDED, REACTION_REMOVED, *MEMBER_EVENTS)
# Membership changes go on a log of their own in the workspace, beside the channel logs, so the webhook
# worker reads them the same way.  No client can name it: channel ids are UUIDs (and "members" is not hex).
# No leading "_": the Pulsar work subscription's pattern leaves such topics out (system topics).
MEMBERS_LOG = "members"

# The header scheme (docs/security.md "Webhooks").
HEADER_ID = "Storm-Webhook-Id"
HEADER_TIMESTAMP = "Storm-Webhook-Timestamp"
HEADER_SIGNATURE = "Storm-Webhook-Signature"
SIGNATURE_VERSION = "v1"
TOLERANCE_S = 300  # a receiver refuses a timestamp further than this from its clock: a replay window
_EVENT_NS = uuid.UUID("5b0e3a52-9a3c-4f57-a7a3-0c0f1e6c7d11")  # event ids: uuid5 of (ws, channel, offset)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class DeliveryStatus(Enum):
    DELIVERED = "delivered"  # a 2xx answer
    FAILED = "failed"  # this attempt failed; another follows
    DEAD_LETTERED = "dead_lettered"  # the last attempt failed, or the failure is not worth retrying


@dataclass(frozen=True, slots=True)
class Webhook:
    id: uuid.UUID
    workspace_id: uuid.UUID
    url: str
    secret: str  # the HMAC key; shown once at creation (docs/security.md on how it is stored)
    events: tuple[str, ...]
    channels: tuple[uuid.UUID, ...] = ()  # empty: every channel of the workspace
    created_by: uuid.UUID | None = None
    created_at: datetime = field(default_factory=_utcnow)


@dataclass(frozen=True, slots=True)
class IncomingWebhook:
    id: uuid.UUID
    workspace_id: uuid.UUID
    channel_id: uuid.UUID
    bot_user_id: uuid.UUID  # a user record of its own, so history names the bot
    name: str
    token_hash: str  # hex SHA-256 of the URL's secret token; the token itself is never stored
    created_by: uuid.UUID | None = None
    created_at: datetime = field(default_factory=_utcnow)


@dataclass(frozen=True, slots=True)
class DeliveryAttempt:
    id: uuid.UUID
    workspace_id: uuid.UUID
    webhook_id: uuid.UUID
    event_id: str
    event_type: str
    attempt: int  # 1 for the first POST of this event to this webhook
    status: DeliveryStatus
    http_status: int | None  # None when no answer came (timeout, refused connection, refused target)
    error: str  # "" when delivered
    duration_ms: int
    at: datetime = field(default_factory=_utcnow)


# -- events ---------------------------------------------------------------------------------------------------
class WebhookEvent(msgspec.Struct, frozen=True):
    """The body of one POST (encoded once, signed as is)."""

    id: str  # stable for a record: a redelivered record keeps its id, so receivers can deduplicate
    type: str
    workspace: str  # slug
    channel: str
    offset: int
    ts: float
    data: dict[str, Any]


_record_decoder = msgspec.json.Decoder(dict[str, Any])
_encoder = msgspec.json.Encoder()


def event_of(workspace: str, channel: str, offset: int, payload: bytes) -> WebhookEvent | None:
    """The webhook event of a channel-log record; None for what webhooks do not carry (typing, presence).
    Raises ``ValueError`` for a payload that is not a JSON object with a known ``type``."""
    try:
        raw = _record_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise ValueError(f"undecodable record: {exc}") from None
    kind = raw.pop("type", None)
    if kind == "message":
        event_type = MESSAGE_POSTED
    elif kind == "edit":
        event_type = MESSAGE_EDITED
    elif kind == "delete":
        event_type = MESSAGE_DELETED
    elif kind == "reaction":
        event_type = REACTION_REMOVED if raw.get("remove") else REACTION_ADDED
        raw.pop("remove", None)
    elif kind in MEMBER_EVENTS:
        event_type = kind
    elif kind in ("typing", "presence.join", "presence.leave"):
        return None
    else:
        raise ValueError(f"unknown record type {kind!r}")
    ts = raw.pop("ts", 0.0)
    raw.pop("channel", None)
    raw.pop("cmid", None)  # the author's client id: not the receiver's business
    event_id = str(uuid.uuid5(_EVENT_NS, f"{workspace}/{channel}/{offset}"))
    shown = "" if channel == MEMBERS_LOG else channel  # membership events belong to no channel
    return WebhookEvent(id=event_id, type=event_type, workspace=workspace, channel=shown, offset=offset,
                        ts=float(ts) if isinstance(ts, int | float) else 0.0, data=raw)


def encode_event(event: WebhookEvent) -> bytes:
    return _encoder.encode(event)


def matches(webhook: Webhook, event: WebhookEvent) -> bool:
    """The event's type is one the webhook asked for, and its channel one of the webhook's channels (when
    it names any; membership events belong to the workspace, so the channel filter does not apply)."""
    if event.type not in webhook.events:
        return False
    return event.type in MEMBER_EVENTS or not webhook.channels or uuid.UUID(event.channel) in webhook.channels


def member_record(kind: str, user_id: uuid.UUID, ts: float, *, name: str = "", role: str = "") -> bytes:
    """The payload of a membership change on :data:`MEMBERS_LOG` (``member.joined`` carries name and role)."""
    if kind not in MEMBER_EVENTS:
        raise ValueError(f"not a membership event: {kind!r}")
    record: dict[str, Any] = {"type": kind, "user": str(user_id), "ts": ts}
    if name:
        record["name"] = name
    if role:
        record["role"] = role
    return _encoder.encode(record)


# -- signatures -------------------------------------------------------------------------------------------------
def new_secret() -> str:
    return "whsec_" + secrets.token_urlsafe(32)


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """``v1=<hex HMAC-SHA256(secret, "<timestamp>." + body)>``: the timestamp is inside the MAC, so a
    captured request cannot be replayed later with a fresh timestamp."""
    mac = hmac.new(secret.encode("utf-8"), b"%d." % timestamp + body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={mac}"


def headers(secret: str, event_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {"Content-Type": "application/json", "User-Agent": "storm-webhooks/1", HEADER_ID: event_id,
            HEADER_TIMESTAMP: str(timestamp), HEADER_SIGNATURE: sign(secret, timestamp, body)}


def verify(secret: str, received: Mapping[str, str], body: bytes, now: float,
           tolerance_s: float = TOLERANCE_S) -> bool:
    """What a receiver does (and what the tests' receiver does): the timestamp is an integer within
    ``tolerance_s`` of ``now``, and one of the signatures (comma-separated, for key rotation) matches."""
    lowered = {k.lower(): v for k, v in received.items()}
    stamp = lowered.get(HEADER_TIMESTAMP.lower(), "")
    if not stamp.isdigit() or abs(now - int(stamp)) > tolerance_s:
        return False
    expected = sign(secret, int(stamp), body)
    offered = [s.strip() for s in lowered.get(HEADER_SIGNATURE.lower(), "").split(",")]
    return any(hmac.compare_digest(expected, s) for s in offered)


# -- failure policy ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Attempts per (event, webhook) and the pauses between them: exponential backoff with full jitter.
    The defaults keep a whole series (5 × 4 s timeouts + at most 7.5 s of pauses) under the broker's
    30 s ack timeout, so a slow endpoint does not also cause a redelivery of the record."""

    max_attempts: int = 5
    base_s: float = 0.5
    cap_s: float = 8.0
    timeout_s: float = 4.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.base_s < 0 or self.cap_s < self.base_s or self.timeout_s <= 0:
            raise ValueError(f"invalid webhook retry policy {self}")

    @classmethod
    def of(cls, config: Config) -> RetryPolicy:
        return cls(max_attempts=config.webhook_max_attempts, base_s=config.webhook_backoff_s,
                   cap_s=config.webhook_backoff_cap_s, timeout_s=config.webhook_timeout_s)

    def backoff(self, attempt: int, rand: Callable[[], float]) -> float:
        """The pause after failed attempt ``attempt`` (1-based): uniform in [0, min(cap, base·2^(attempt-1))]."""
        return rand() * min(self.cap_s, self.base_s * 2.0 ** (attempt - 1))


def retriable(http_status: int | None) -> bool:
    """No answer, 408, 429 and 5xx are worth another attempt; any other 4xx (or a 3xx: redirects are not
    followed) is the receiver's final word."""
    return http_status is None or http_status in (408, 429) or http_status >= 500


# -- targets (SSRF) -------------------------------------------------------------------------------------------
def private_targets_allowed(config: Config) -> bool:
    """Plain http and loopback/private targets: in embedded mode, or by ``STORM_WEBHOOK_ALLOW_PRIVATE``."""
    return config.mode == "embedded" or config.webhook_allow_private


def check_url(url: str, *, allow_private: bool) -> str:
    """A webhook URL: https (http only when ``allow_private``, i.e. embedded mode), a host, no userinfo.
    An IP literal (or ``localhost``) that is loopback, private, link-local or otherwise not global is
    refused unless ``allow_private``.  Names are checked again after resolution, at delivery time
    (:func:`address_allowed`)."""
    if len(url) > 2000:
        raise BadRequest("url is longer than 2000 characters", field="url")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise BadRequest("url is not a valid URL", field="url") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise BadRequest("url must be an absolute https URL", field="url")
    if parts.scheme == "http" and not allow_private:
        raise BadRequest("url must use https", field="url")
    if parts.username is not None or parts.password is not None:
        raise BadRequest("url must not carry credentials", field="url")
    if port == 0:
        raise BadRequest("url has no valid port", field="url")
    host = parts.hostname
    if not allow_private and (host == "localhost" or host.endswith(".localhost")
                              or (_literal(host) is not None and not address_allowed(host, False))):
        raise BadRequest("url points to a private or loopback address", field="url")
    return url


def _literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def address_allowed(address: str, allow_private: bool) -> bool:
    """Whether the worker may connect to this resolved address: global unicast only, unless allowed."""
    ip = _literal(address.split("%", 1)[0])
    if ip is None:
        return False
    if allow_private:
        return True
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast
