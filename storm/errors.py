"""Errors, split by who is at fault (wsproto's LocalProtocolError/RemoteProtocolError habit).

``StormError`` subclasses carry a stable ``code`` (the `code` of WebSocket error events and of REST error
bodies; listed in docs/protocol.md) and ``retriable`` (aiokafka's habit): a retriable error may succeed
if the same request is repeated later.
"""

from __future__ import annotations


class StormError(Exception):
    code = "internal"
    http_status = 500
    retriable = False

    def __init__(self, message: str = "", *, field: str | None = None) -> None:
        super().__init__(message or self.code)
        self.message = message or self.code
        self.field = field


# ---- the peer's fault ---------------------------------------------------------------------------------
class BadRequest(StormError):
    code = "bad_request"
    http_status = 400


class Unauthenticated(StormError):
    code = "unauthenticated"
    http_status = 401


class Forbidden(StormError):
    code = "forbidden"
    http_status = 403


class NotFound(StormError):
    code = "not_found"
    http_status = 404


class Conflict(StormError):
    code = "conflict"
    http_status = 409


class QuotaExceeded(StormError):
    code = "quota_exceeded"
    http_status = 409


# ---- ours or the infrastructure's ---------------------------------------------------------------------
class Unavailable(StormError):
    """A backing service (broker, store, cache) is down or timed out.  Safe to retry."""

    code = "unavailable"
    http_status = 503
    retriable = True


class PublishNotSent(Unavailable):
    """The broker refused a publish before sending anything (no producer, say): a retry cannot duplicate."""


class OffsetTruncated(StormError):
    """A read asked for offsets older than the log still holds (retention).  ``earliest`` says where it starts."""

    code = "offset_truncated"
    http_status = 410

    def __init__(self, message: str = "", *, earliest: int = 0) -> None:
        super().__init__(message or "offset no longer retained")
        self.earliest = earliest
