"""How a command handler ends badly, by how far the damage goes (docs/protocol.md, "Errors").

* :class:`Refused`: this one command is refused with a protocol error code that no ``storm.errors``
  exception carries (``rate_limited``, ``not_subscribed``, ``too_many_subscriptions``); the session goes on.
  Errors of the domain (``NotFound``, ``Forbidden``, …) are raised as ``storm.errors`` exceptions instead.
* :class:`Disconnect`: the session ends.  Raised anywhere under :meth:`Session.receive
  <storm.protocol.session.Session.receive>` and caught there once, which sends the ``error`` event (when
  there is one) and then closes the socket with the close code.  Ends decided outside a frame (deadlines,
  revocations from the control channel) hand the same value to the session's ``_end``.
"""

from __future__ import annotations

from storm.protocol.codes import CloseCode, ErrorCode


class Refused(Exception):
    """Answer one command with ``error{code}``; ``id`` and ``channel`` are the command's."""

    def __init__(self, code: ErrorCode, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


class Disconnect(Exception):
    """End the session: ``error{error_code, message}`` (none when ``error_code`` is None), then close with
    ``close_code`` and ``reason`` (the message when not given)."""

    def __init__(self, close_code: CloseCode, error_code: ErrorCode | None, message: str, *,
                 reason: str | None = None, id: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.close_code = close_code
        self.error_code = error_code
        self.message = message
        self.reason = reason if reason is not None else message
        self.id = id
        self.field = field


def revocation(reason: str, *, tell: bool = True) -> Disconnect:
    """The end of a session whose access was revoked (logout, ban, removal): 4010.  ``tell``: send the
    ``error`` event too (not to a session that was never told ``hello``)."""
    if reason == "workspace deleted":  # storm.revocation.WORKSPACE_DELETED: every session of it, 4011
        return Disconnect(CloseCode.WORKSPACE_DELETED, ErrorCode.GONE if tell else None,
                          "the workspace was deleted", reason="workspace deleted")
    return Disconnect(CloseCode.REVOKED, ErrorCode.UNAUTHENTICATED if tell else None, f"access revoked ({reason})",
                      reason=f"access revoked: {reason}")
