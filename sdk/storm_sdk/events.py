"""Typed events of the STORM Python SDK (docs/sdk.md).

Two kinds of events come out of :meth:`storm_sdk.StormClient.events`:

* **server events**, decoded from protocol v1 frames (docs/protocol.md) into frozen msgspec structs.
  They are the client's view of the protocol: channel events carry their ``offset``, unknown fields are
  ignored and unknown event types are skipped, so additions within v1 never break the SDK;
* **client events**, made by the SDK itself: a connection state change, an acknowledged or failed
  publish, and a request to reload history when a resume could not fill a gap.

This module does no I/O.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from storm_sdk.outbox import PendingMessage

log = logging.getLogger("storm_sdk")


class _Server(msgspec.Struct, tag_field="type", frozen=True, kw_only=True):
    pass


class User(msgspec.Struct, frozen=True):
    id: str
    name: str


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """``hello.limits``; the defaults are protocol v1's, used when a field is absent."""

    max_frame_bytes: int = 65536
    max_subscriptions: int = 200
    max_body_chars: int = 4000
    publish_rate: float = 20.0
    publish_burst: int = 40
    history_page_max: int = 100
    auth_timeout_s: float = 5.0
    idle_timeout_s: float = 60.0


class Hello(_Server, tag="hello", frozen=True):
    v: int
    session: str
    workspace: str
    user: User
    heartbeat_s: float = 25.0
    limits: Limits = Limits()


class ServerError(_Server, tag="error", frozen=True):
    """An ``error`` event that answers no request of the SDK (requests raise :class:`StormError`)."""

    code: str
    message: str = ""
    id: int | None = None
    field: str | None = None
    channel: str | None = None


class Ack(_Server, tag="ack", frozen=True):
    id: int | None = None
    channel: str | None = None
    cmid: str | None = None
    message_id: str | None = None
    offset: int | None = None
    duplicate: bool = False


class Subscribed(_Server, tag="subscribed", frozen=True):
    """A (re)subscription took effect: live events follow ``offset``; ``replayed`` events came first."""

    channel: str
    offset: int
    id: int | None = None
    recovered: bool = True
    replayed: int = 0
    read: int = 0  # the user's read marker in the channel (last offset read)
    unread: int = 0  # stored messages of others after ``read``, at most 1000 ("1000 or more")


class Unsubscribed(_Server, tag="unsubscribed", frozen=True):
    """The reply to ``unsubscribe``, or — with ``reason`` set, e.g. ``"removed"`` from a private channel —
    the server ending a subscription; the client then stops following the channel (no resubscribe)."""

    channel: str
    id: int | None = None
    reason: str | None = None


class Pong(_Server, tag="pong", frozen=True):
    id: int | None = None
    ts: float = 0.0


class Presence(_Server, tag="presence", frozen=True):
    """One page of a channel's users (user id order); ``next_cursor`` asks for the next one."""

    channel: str
    users: list[User] = []
    count: int = 0  # users present in all
    broadcast: bool = True  # False: joins and leaves are not announced here (a large channel); page instead
    next_cursor: str | None = None
    id: int | None = None


class HistoryMessage(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    offset: int
    author: str
    author_name: str = ""
    text: str = ""
    ts: float = 0.0
    cmid: str | None = None
    thread: str | None = None
    edited_ts: float | None = None
    deleted: bool = False
    reactions: dict[str, int] = {}
    mine: list[str] = []  # the emojis of ``reactions`` the user reacted with


class History(_Server, tag="history", frozen=True):
    """One page of stored messages, **newest first**; ``next_before`` pages further back.  ``offset`` is the
    channel offset the page reflects: follow on with ``subscribe(channel, since=offset)``."""

    channel: str
    messages: list[HistoryMessage] = []
    offset: int = 0
    next_before: int | None = None
    id: int | None = None


class ChannelUnread(msgspec.Struct, frozen=True, kw_only=True):
    channel: str
    read: int = 0  # the user's read marker (last offset read)
    unread: int = 0  # stored messages of others after ``read``, at most 1000 ("1000 or more")


class Unread(_Server, tag="unread", frozen=True):
    """The read state of every channel the user can read (reply to :meth:`StormClient.unread`)."""

    channels: list[ChannelUnread] = []
    id: int | None = None


class Message(_Server, tag="message", frozen=True):
    offset: int
    channel: str
    id: str
    author: str
    author_name: str = ""
    text: str = ""
    ts: float = 0.0
    cmid: str | None = None
    thread: str | None = None


class Edit(_Server, tag="edit", frozen=True):
    offset: int
    channel: str
    id: str
    author: str
    text: str = ""
    ts: float = 0.0


class Delete(_Server, tag="delete", frozen=True):
    offset: int
    channel: str
    id: str
    author: str
    ts: float = 0.0


class Reaction(_Server, tag="reaction", frozen=True):
    offset: int
    channel: str
    message_id: str
    user: str
    emoji: str
    ts: float = 0.0
    remove: bool = False  # True: ``user`` withdrew it; else ``user`` now reacts with ``emoji``
    count: int | None = None  # users with ``emoji`` on the message after this change: show this number


class Typing(_Server, tag="typing", frozen=True):
    channel: str
    user: str
    name: str = ""


class PresenceJoin(_Server, tag="presence.join", frozen=True):
    """Users who joined the channel within the server's coalescing window (small channels only)."""

    channel: str
    users: list[User] = []


class PresenceLeave(_Server, tag="presence.leave", frozen=True):
    """Users who left the channel within the window (small channels only)."""

    channel: str
    users: list[User] = []


class TokenExpiring(_Server, tag="token.expiring", frozen=True):
    expires_at: float


class TokenRefreshed(_Server, tag="token.refreshed", frozen=True):
    """The server accepted the fresh token sent after ``token.expiring``: the session lasts until ``expires_at``."""

    expires_at: float


#: Events stored in a channel's log, with an offset: de-duplicated and ordered by the SDK.
ChannelEvent = Message | Edit | Delete | Reaction
ServerEvent = (
    Hello | ServerError | Ack | Subscribed | Unsubscribed | Pong | Presence | History | Unread | Message | Edit
    | Delete | Reaction | Typing | PresenceJoin | PresenceLeave | TokenExpiring | TokenRefreshed
)
CHANNEL_EVENT_TYPES = (Message, Edit, Delete, Reaction)
# Events that may answer a request of the client: their ``id`` is the request's (an int), not a message id.
REPLY_TYPES = (ServerError, Ack, Subscribed, Unsubscribed, Pong, Presence, History, Unread)

_decoder = msgspec.json.Decoder(ServerEvent)
_probe = msgspec.json.Decoder(dict[str, Any])


def decode_frame(data: str | bytes) -> list[ServerEvent]:
    """Split one server frame on ``\\n`` and decode each event.

    Unknown event types are skipped (protocol.md: clients ignore what they do not know); an event that
    cannot be decoded is logged and skipped, so one bad event never loses the rest of the frame.
    """
    raw = data.encode() if isinstance(data, str) else data
    out: list[ServerEvent] = []
    for part in raw.split(b"\n"):
        if not part.strip():
            continue
        try:
            out.append(_decoder.decode(part))
        except msgspec.ValidationError as exc:
            try:
                kind = _probe.decode(part).get("type")
            except msgspec.DecodeError:
                kind = None
            if isinstance(kind, str) and kind not in _KNOWN_TYPES:
                continue  # a newer event type: ignore it
            log.warning("storm_sdk: undecodable %s event skipped: %s", kind, exc)
        except msgspec.DecodeError as exc:
            log.warning("storm_sdk: malformed event skipped: %s", exc)
    return out


_KNOWN_TYPES = frozenset(t.__struct_config__.tag for t in ServerEvent.__args__)


# ---- client events: made by the SDK ------------------------------------------------------------------
class ConnectionState(enum.StrEnum):
    IDLE = "idle"  # created, not started
    CONNECTING = "connecting"  # first connection attempt
    ONLINE = "online"  # authenticated (hello received); subscriptions and outbox are being resumed
    RECONNECTING = "reconnecting"  # lost or refused: waiting for the next attempt, or attempting
    CLOSED = "closed"  # stopped, or closed for good by the server (see StateChanged.code)


@dataclass(frozen=True, slots=True)
class StateChanged:
    state: ConnectionState
    previous: ConnectionState
    code: int | None = None  # close code of the connection that was lost, if any
    reason: str = ""
    retry_in: float | None = None  # seconds until the next attempt (RECONNECTING)


@dataclass(frozen=True, slots=True)
class Acked:
    """Your message is durable: ``message.message_id`` and ``message.offset`` are set."""

    message: PendingMessage


@dataclass(frozen=True, slots=True)
class SendFailed:
    """The server refused your message for good (``code`` is its error code); it left the outbox."""

    message: PendingMessage
    code: str
    detail: str = ""


class ResyncReason(enum.StrEnum):
    NOT_RECOVERED = "not_recovered"  # subscribed{recovered: false}: the log could not fill the gap
    LOG_REWOUND = "log_rewound"  # the channel head is behind what we saw (an embedded server lost its log)


@dataclass(frozen=True, slots=True)
class ResyncRequired:
    """What you show of ``channel`` may have holes: reload it, e.g. with ``await client.history(channel)``."""

    channel: str
    reason: ResyncReason
    head: int


ClientEvent = StateChanged | Acked | SendFailed | ResyncRequired
#: Everything :meth:`StormClient.events` yields.
Event = (
    Message | Edit | Delete | Reaction | Typing | PresenceJoin | PresenceLeave | TokenExpiring | TokenRefreshed
    | Subscribed | ServerError | StateChanged | Acked | SendFailed | ResyncRequired
)
