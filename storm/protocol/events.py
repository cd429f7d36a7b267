"""Server -> client events of protocol v1 and their encoding.  No I/O.

A server text frame carries one or more events, each a JSON object with a ``type`` field, separated by a
single ``\\n`` (JSON never contains a raw newline, so splitting on it is safe).  The gateway encodes each
channel event once per broadcast and joins the bytes of queued events into one frame (coalescing).

Channel events (message, edit, delete, reaction) travel through the broker without their offset, which
the broker assigns; :func:`with_offset` splices it in without decoding.
"""

from __future__ import annotations

from typing import Any

import msgspec


class _Event(msgspec.Struct, tag_field="type", omit_defaults=True):
    pass


class UserRef(msgspec.Struct):
    id: str
    name: str


class Limits(msgspec.Struct):
    max_frame_bytes: int
    max_subscriptions: int
    max_body_chars: int
    publish_rate: float
    publish_burst: int
    history_page_max: int
    auth_timeout_s: float
    idle_timeout_s: float


class Hello(_Event, tag="hello"):
    v: int
    session: str
    workspace: str
    user: UserRef
    heartbeat_s: float
    limits: Limits


class Error(_Event, tag="error"):
    code: str
    message: str
    id: int | None = None
    field: str | None = None
    channel: str | None = None


class Ack(_Event, tag="ack"):
    id: int | None = None
    channel: str | None = None
    cmid: str | None = None
    message_id: str | None = None
    offset: int | None = None
    duplicate: bool = False  # this cmid was already published; the original ack is repeated


class Subscribed(_Event, tag="subscribed"):
    channel: str
    offset: int  # channel head when the subscription started: live events follow it
    id: int | None = None
    recovered: bool = True  # False: `since` is older than retention; reload history
    replayed: int = 0  # events replayed between `since` and `offset`, sent right after this one
    read: int = 0  # the user's read marker in the channel (the last offset they read; 0: none)
    unread: int = 0  # stored messages of others after `read`, not deleted


class Unsubscribed(_Event, tag="unsubscribed"):
    channel: str
    id: int | None = None
    reason: str | None = None  # set when the server ended it: "removed" (no longer a member of the channel)


class Pong(_Event, tag="pong"):
    id: int | None = None
    ts: float = 0.0


class PresenceList(_Event, tag="presence"):
    """One page of the users present in a channel, in user id order (docs/protocol.md, "Presence")."""

    channel: str
    users: list[UserRef]
    count: int  # users present in all (the page is at most `limit` of them)
    broadcast: bool  # whether presence.join/leave are sent for this channel (else: query pages)
    next_cursor: str | None = None  # pass as `cursor` for the next page; absent on the last page
    id: int | None = None


class HistoryMessage(msgspec.Struct, omit_defaults=True):
    id: str
    offset: int
    author: str
    author_name: str
    text: str
    ts: float
    cmid: str | None = None
    thread: str | None = None
    edited_ts: float | None = None
    deleted: bool = False
    reactions: dict[str, int] = {}
    mine: list[str] = []  # the emojis of `reactions` the requesting user reacted with


class HistoryPage(_Event, tag="history"):
    channel: str
    messages: list[HistoryMessage]
    offset: int = 0  # the channel offset the page reflects: resume with subscribe{since: offset}
    next_before: int | None = None
    id: int | None = None


class ChannelUnread(msgspec.Struct, omit_defaults=True):
    channel: str
    read: int = 0  # the user's read marker (last offset read; 0: none)
    unread: int = 0  # stored messages of others after `read`, not deleted


class UnreadList(_Event, tag="unread"):
    channels: list[ChannelUnread]  # every channel the user can read, not archived
    id: int | None = None


# ---- channel events: produced once by the publishing gateway, stored in the channel log -------------
class MessageEvent(_Event, tag="message"):
    channel: str
    id: str
    author: str
    author_name: str
    text: str
    ts: float
    cmid: str | None = None
    thread: str | None = None


class EditEvent(_Event, tag="edit"):
    channel: str
    id: str
    author: str
    text: str
    ts: float


class DeleteEvent(_Event, tag="delete"):
    channel: str
    id: str
    author: str
    ts: float


class ReactionEvent(_Event, tag="reaction"):
    channel: str
    message_id: str
    user: str
    emoji: str
    ts: float
    remove: bool = False  # false: `user` now reacts with `emoji`; true: no longer
    count: int | None = None  # users reacting with `emoji` on the message once this change was stored


# ---- ephemeral channel events: broadcast, never stored, no offset -----------------------------------
class TypingEvent(_Event, tag="typing"):
    channel: str
    user: str
    name: str


class PresenceJoin(_Event, tag="presence.join"):
    """Users whose first connection joined the channel, coalesced over STORM_PRESENCE_COALESCE_S."""

    channel: str
    users: list[UserRef]


class PresenceLeave(_Event, tag="presence.leave"):
    """Users whose last connection left the channel (or whose entry expired), coalesced likewise."""

    channel: str
    users: list[UserRef]


class TokenExpiring(_Event, tag="token.expiring"):
    expires_at: float


class TokenRefreshed(_Event, tag="token.refreshed"):
    expires_at: float  # the new token's expiry: the session now lasts until then


ChannelEvent = MessageEvent | EditEvent | DeleteEvent | ReactionEvent
EphemeralEvent = TypingEvent | PresenceJoin | PresenceLeave
ServerEvent = (
    Hello | Error | Ack | Subscribed | Unsubscribed | Pong | PresenceList | HistoryPage | UnreadList | MessageEvent
    | EditEvent | DeleteEvent | ReactionEvent | TypingEvent | PresenceJoin | PresenceLeave | TokenExpiring
    | TokenRefreshed
)

_encoder = msgspec.json.Encoder()
_record_decoder = msgspec.json.Decoder(ChannelEvent | EphemeralEvent)
encode = _encoder.encode


def with_offset(payload: bytes, offset: int) -> bytes:
    """``{"type":…}`` + offset -> ``{"offset":N,"type":…}``: the broadcast frame, built once."""
    if offset <= 0:
        return payload
    return b'{"offset":%d,%s' % (offset, payload[1:])


def decode_record(payload: bytes) -> Any:
    """Decode a channel event stored in the broker (used by consumers; gateways never decode)."""
    return _record_decoder.decode(payload)


def join_frames(events: list[bytes]) -> bytes:
    return b"\n".join(events)
