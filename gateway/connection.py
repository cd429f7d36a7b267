"""One WebSocket connection's life in the gateway, whatever carries its bytes (docs/architecture.md, "Gateway").

The driver (:mod:`gateway.frontdoor`) owns the socket: the HTTP upgrade, RFC 6455 framing, reading and
flow control, the close handshake.  It hands this module a :class:`Socket` (the socket reduced to writes,
a close and read pausing, as centrifuge's ``transport.go`` does) and complete messages; everything between
the socket and the session core happens here, once, each in one place:

* **open** (:meth:`Connection.open`): the gateway admits the socket (a draining gateway closes it at once
  with 1012), then the outbox, the session and the hub registration;
* **messages** (:meth:`Connection.receive`): handled one at a time, in order, by a task that exists only
  while there is something to handle; too many waiting pauses reading the socket;
* **overflow** (:meth:`Connection._overflow`): the outbox passed its bound, the session closes with 4008;
* **close** (:meth:`Connection.close`, the session's ``Transport.close``): what is queued leaves first
  (except for 4008), then the close frame;
* **end** (:meth:`Connection.ended`): the socket is gone, whoever closed it: the hub, the gateway's count,
  the outbox and the session's cleanup (presence, subscriptions, quota).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Protocol

from gateway.outbox import Outbox
from storm.protocol.codes import CloseCode
from storm.protocol.session import Session, State

if TYPE_CHECKING:
    from gateway.runtime import Gateway

INBOX_HIGH = 64  # messages read but not yet handled before the socket stops being read


class Socket(Protocol):
    """What a driver gives a connection."""

    def write_frame(self, frame: bytes) -> bool:
        """Write one text frame now; False when that is not possible now (the socket's buffer is full, or
        the WebSocket is closing): the frame then goes through :meth:`send_frame`."""
        ...

    def send_frame(self, frame: bytes) -> Coroutine[Any, Any, None]:
        """Write one text frame once the socket's buffer has drained; raises if the WebSocket closes first."""
        ...

    def close_socket(self, code: int, reason: str) -> None:
        """Send the close frame and end the connection (the driver's close handshake); no-op if closing."""
        ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class Connection:
    """A session, its outbox and its inbox over one socket; the session's ``Transport``."""

    __slots__ = ("_ended", "_gateway", "_inbox", "_on_open", "_paused", "_socket", "_worker", "outbox", "receiving",
                 "send", "session")

    def __init__(self, gateway: Gateway, socket: Socket, on_open: Callable[[], None] | None = None) -> None:
        """Use :meth:`open`, which admits the socket first."""
        cfg = gateway.config
        self._gateway = gateway
        self._socket = socket
        self._on_open = on_open  # called once, when the session has answered auth (the handshake is over)
        self._inbox: collections.deque[str | bytes] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._paused = False
        self._ended = False
        self.receiving = True  # False once the WebSocket is closing: messages still arriving are dropped
        self.outbox = Outbox(socket.send_frame, self._overflow, max_events=cfg.outbox_max_events,
                             max_bytes=cfg.outbox_max_bytes, coalesce_max_bytes=cfg.coalesce_max_bytes,
                             flusher=gateway.flusher, direct=socket.write_frame)
        self.send = self.outbox.push  # Transport.send, bound once: one call less per delivered event
        self.session = Session(gateway.session_context, self)
        gateway.hub.register(self.session)

    @classmethod
    def open(cls, gateway: Gateway, socket: Socket, *, on_open: Callable[[], None] | None = None) -> Connection | None:
        """The open point: a connection for an upgraded socket, or None when the gateway refuses it (it is
        draining: the socket is closed with 1012 at once and holds no session).  ``on_open`` is called once
        the session has answered ``auth`` (``hello``, or a close): the driver's admission control counts
        handshakes in progress until then."""
        refusal = gateway.admit()
        if refusal is not None:
            socket.close_socket(*refusal)
            return None
        return cls(gateway, socket, on_open)

    # -- messages from the peer -------------------------------------------------------------------------
    def receive(self, data: str | bytes) -> None:
        if not self.receiving:
            return
        self.session.arrived()  # deadlines count from here, not from when a busy loop gets to the frame
        inbox = self._inbox
        # nothing ahead of it: a ping is answered here, in this call (a heartbeat costs no task, issue 11)
        if self._worker is None and not inbox and self.session.answer_ping(data):
            return
        if inbox is None:
            inbox = self._inbox = collections.deque()
        inbox.append(data)
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._handle_inbox(inbox))
        if len(inbox) >= INBOX_HIGH and not self._paused:
            self._paused = True
            self._socket.pause_reading()

    async def _handle_inbox(self, inbox: collections.deque[str | bytes]) -> None:
        session = self.session
        try:
            while inbox and self.receiving:
                await session.receive(inbox.popleft())
                if self._on_open is not None and session.state is not State.AWAITING_AUTH:
                    on_open, self._on_open = self._on_open, None
                    on_open()
                if self._paused and len(inbox) <= INBOX_HIGH // 4:
                    self._paused = False
                    self._socket.resume_reading()
        finally:
            self._worker = None

    # -- Transport (storm.protocol.session): ``send`` is the outbox's push, bound in __init__ ---------------
    def close(self, code: int, reason: str) -> None:
        self._gateway.spawn(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        """The close point for closes the session decides (auth failures, revocation, drain, 4008...)."""
        if not self.receiving:
            return  # already closing: the peer's close, a protocol error, or an earlier close
        if code != CloseCode.SLOW_CONSUMER:
            await self.outbox.flush(1.0)  # the error event that explains the close goes first
        self.halt()
        worker = self._worker
        if worker is not None and worker is not asyncio.current_task():
            worker.cancel()  # the peer may never read again: stop handling what it sent
        self._socket.close_socket(code, reason)

    def halt(self) -> None:
        """The WebSocket is closing (the peer's close frame, its protocol error, or ours): drop what is
        queued for it and handle no more of its messages (the one being handled finishes)."""
        self.receiving = False
        self.outbox.discard()

    def _overflow(self) -> None:
        """The overflow point: the outbox dropped its queue; the client resumes from its offsets."""
        self.session.close(CloseCode.SLOW_CONSUMER, "outgoing queue overflow: reconnect and resume")

    # -- the end --------------------------------------------------------------------------------------------
    def ended(self) -> None:
        """The end point: the socket is gone.  Idempotent."""
        if self._ended:
            return
        self._ended = True
        self.halt()
        if self._worker is not None:
            self._worker.cancel()
        gateway = self._gateway
        gateway.hub.unregister(self.session)
        gateway.release()
        gateway.spawn(self.session.closed())
