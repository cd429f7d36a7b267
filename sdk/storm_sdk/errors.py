"""Errors of the STORM SDK, by fault and with a ``retriable`` flag (docs/sdk.md#errors)."""

from __future__ import annotations


class StormSdkError(Exception):
    """Base class.  ``code`` is stable; ``retriable`` says whether trying again may succeed."""

    code = "sdk_error"
    retriable = False


class StormError(StormSdkError):
    """The server answered a request with ``error{code, message}`` (docs/protocol.md#error-codes)."""

    def __init__(self, code: str, message: str = "", *, field: str | None = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.server_message = message
        self.field = field
        self.retriable = code in {"unavailable", "conflict", "rate_limited", "internal"}


class OutboxFull(StormSdkError):
    """``publish`` refused: ``outbox_max`` messages are already waiting for their ack."""

    code = "outbox_full"
    retriable = True

    def __init__(self, limit: int) -> None:
        super().__init__(f"outbox_full: {limit} messages are waiting for an ack; wait for some (client.pending) "
                         "or raise ClientOptions.outbox_max")
        self.limit = limit


class ClientClosed(StormSdkError):
    """The client was stopped, or the server closed the session for good (``close_code`` says why)."""

    code = "closed"

    def __init__(self, message: str = "the client is closed", *, close_code: int | None = None,
                 reason: str = "") -> None:
        super().__init__(message)
        self.close_code = close_code
        self.reason = reason


class ConnectionLost(StormSdkError):
    """The connection dropped before the reply came; the request was not retried."""

    code = "connection_lost"
    retriable = True


class RequestTimeout(StormSdkError, TimeoutError):
    """No reply (or no connection) within the timeout."""

    code = "timeout"
    retriable = True
