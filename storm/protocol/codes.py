"""Stable error codes and WebSocket close codes of protocol v1 (docs/protocol.md has the tables)."""

from __future__ import annotations

import enum


class ErrorCode(enum.StrEnum):
    MALFORMED = "malformed"  # not JSON, or not an object
    UNKNOWN_OP = "unknown_op"
    BAD_REQUEST = "bad_request"  # a field is missing or invalid; `field` names it
    TOO_LARGE = "too_large"
    UNAUTHENTICATED = "unauthenticated"
    ALREADY_AUTHENTICATED = "already_authenticated"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    NOT_SUBSCRIBED = "not_subscribed"
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"
    RATE_LIMITED = "rate_limited"
    QUOTA_EXCEEDED = "quota_exceeded"
    CONFLICT = "conflict"
    GONE = "gone"
    UNAVAILABLE = "unavailable"  # a backing service failed; retry with the same cmid
    INTERNAL = "internal"


class CloseCode(enum.IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    POLICY = 1008  # e.g. Origin not allowed
    TOO_BIG = 1009  # a frame over 2 x STORM_MAX_FRAME_BYTES (sent by the server library)
    INTERNAL = 1011
    SERVICE_RESTART = 1012  # gateway draining: reconnect (elsewhere) after the hinted delay
    UNAUTHENTICATED = 4001  # the first message was not a valid token
    IDLE_TIMEOUT = 4002  # no frame within STORM_IDLE_TIMEOUT_S
    AUTH_TIMEOUT = 4003  # no auth message within STORM_AUTH_TIMEOUT_S
    PROTOCOL_VIOLATION = 4004  # repeated malformed frames
    SLOW_CONSUMER = 4008  # outgoing queue overflowed; reconnect and resume with offsets
    TOKEN_EXPIRED = 4009
    REVOKED = 4010  # logout, ban or removal from the workspace
    WORKSPACE_DELETED = 4011  # the session's workspace was deleted
    TOO_MANY_CONNECTIONS = 4029


#: Close codes after which a client should reconnect (with backoff) and resume.
RECONNECTABLE = frozenset(
    {CloseCode.GOING_AWAY, CloseCode.INTERNAL, CloseCode.SERVICE_RESTART, CloseCode.IDLE_TIMEOUT,
     CloseCode.SLOW_CONSUMER, CloseCode.TOKEN_EXPIRED, CloseCode.TOO_MANY_CONNECTIONS}
)
