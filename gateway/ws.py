"""The WebSocket endpoint: it only moves frames between the socket and the session core.

Everything the protocol decides lives in :mod:`storm.protocol.session`; this module maps the socket's
life (accept, frames, disconnect) onto it, owns the per-connection :class:`~gateway.outbox.Outbox`, and
carries out the closes the session asks for.

The endpoint is a plain ASGI handler installed with Quart's documented middleware hook
(``app.asgi_app = ...``) in front of the app, not a Quart ``@app.websocket`` route: Quart's websocket
wrapper costs two extra tasks, a queue and a request context per socket and an ``asyncio.sleep(0)`` plus a
signal per frame sent.  Hypercorn still does the handshake, reading, control frames and closing.

Data frames take a shorter path still when Hypercorn serves the socket over HTTP/1.1: :func:`direct_writer`
finds the socket's asyncio transport behind the ASGI ``send`` and the outbox writes each frame (header +
payload, built here) with one ``transport.write``, as the benchmark floor does.  Whenever that is not
possible (another server, HTTP/2, the socket closing, its write buffer above the high-water mark) the
frame goes through the ASGI ``send``, which waits for the buffer to drain.  Why, and what an upgrade must
check: docs/adr/0006-gateway-websocket-as-raw-asgi.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from quart import Quart

from gateway.frames import OP_TEXT, frame_header
from gateway.outbox import DirectWrite, Outbox
from storm.protocol.codes import CloseCode
from storm.protocol.session import Session

if TYPE_CHECKING:
    from gateway.runtime import Gateway

log = logging.getLogger("storm.gateway.ws")

ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]],
                    Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[None]]
ASGISend = Callable[[dict[str, Any]], Coroutine[Any, Any, None]]


class WsConnection:
    """The session's Transport: queue frames on the outbox, close by closing the socket."""

    __slots__ = ("_gateway", "_send", "_task", "outbox", "send", "session")

    def __init__(self, send: ASGISend, gateway: Gateway, task: asyncio.Task[Any] | None) -> None:
        cfg = gateway.config
        self._send = send
        self._gateway = gateway
        self._task = task
        self.outbox = Outbox(self._send_frame, self._overflow, max_events=cfg.outbox_max_events,
                             max_bytes=cfg.outbox_max_bytes, coalesce_max_bytes=cfg.coalesce_max_bytes,
                             flusher=gateway.flusher, direct=direct_writer(send))
        self.send = self.outbox.push  # Transport.send, bound once: one call less per delivered event
        self.session: Session | None = None

    def _send_frame(self, frame: bytes) -> Coroutine[Any, Any, None]:
        # text frame: the protocol is UTF-8 JSON; the server's send coroutine is returned, not wrapped
        return self._send({"type": "websocket.send", "text": frame.decode()})

    def _overflow(self) -> None:
        if self.session is not None:
            self.session.close(CloseCode.SLOW_CONSUMER, "outgoing queue overflow: reconnect and resume")

    # Transport (send is the outbox's push, bound in __init__)
    def close(self, code: int, reason: str) -> None:
        self._gateway.spawn(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        if code == CloseCode.SLOW_CONSUMER:
            self.outbox.discard()
        else:
            await self.outbox.flush(1.0)  # let the error event that explains the close go first
            self.outbox.discard()
        with contextlib.suppress(Exception):
            await self._send({"type": "websocket.close", "code": code, "reason": reason[:120]})
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the peer may never answer the close: stop waiting for its frames


class WsEndpoint:
    """ASGI middleware: serves WebSocket connections to ``path`` itself and passes everything else on."""

    def __init__(self, app: ASGIApp, gateway: Gateway, path: str) -> None:
        self.app = app
        self.gateway = gateway
        self.path = path

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: ASGISend) -> None:
        if scope["type"] != "websocket" or scope["path"] != self.path:
            await self.app(scope, receive, send)
            return
        await self.serve(scope, receive, send)

    async def serve(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                    send: ASGISend) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        gateway = self.gateway
        refusal = gateway.admit(_headers(scope))
        await send({"type": "websocket.accept"})
        if refusal is not None:
            await send({"type": "websocket.close", "code": int(refusal[0]), "reason": refusal[1]})
            return
        conn = WsConnection(send, gateway, asyncio.current_task())
        session = Session(gateway.session_context, conn)
        conn.session = session
        gateway.hub.register(session)
        try:
            while True:
                message = await receive()
                kind = message["type"]
                if kind == "websocket.receive":
                    text = message.get("text")
                    await session.receive(text if text is not None else (message.get("bytes") or b""))
                elif kind == "websocket.disconnect":
                    break
        finally:
            gateway.hub.unregister(session)
            gateway.release()
            conn.outbox.discard()
            gateway.spawn(session.closed())


def direct_writer(send: Any) -> DirectWrite | None:
    """A function writing one text frame straight to the socket's transport, or None where that is unsafe.

    Only for Hypercorn's WSStream over HTTP/1.1 on asyncio (checked by type, so a Hypercorn release that
    reshapes these classes falls back to ``send`` instead of writing wrong bytes; tests/e2e/
    test_gateway_ws.py fails then, so the slowdown is noticed).  The returned function refuses (False)
    once the WebSocket is not OPEN for wsproto (a close was sent or received), when the transport is
    closing, and when its write buffer is at the high-water mark: that frame then goes through ``send``,
    whose drain waits, so a slow reader is still back-pressured and finally closed with 4008."""
    try:
        from hypercorn.asyncio.tcp_server import TCPServer
        from hypercorn.protocol.h11 import H11Protocol
        from hypercorn.protocol.ws_stream import WSStream
        from wsproto.connection import ConnectionState
    except ImportError:  # pragma: no cover - both are dependencies
        return None
    stream = getattr(send, "__self__", None)
    if not isinstance(stream, WSStream) or getattr(send, "__func__", None) is not WSStream.app_send:
        return None
    h11 = getattr(stream.send, "__self__", None)
    tcp = getattr(getattr(h11, "send", None), "__self__", None)
    if not isinstance(h11, H11Protocol) or not isinstance(tcp, TCPServer):
        return None
    transport = tcp.writer.transport
    try:
        high = transport.get_write_buffer_limits()[1]
    except (AttributeError, NotImplementedError):
        return None
    is_open = ConnectionState.OPEN

    def write(frame: bytes) -> bool:
        if (stream.closed or stream.connection.state is not is_open or transport.is_closing()
                or transport.get_write_buffer_size() >= high):
            return False
        transport.write(frame_header(OP_TEXT, len(frame)) + frame)
        return True

    return write


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    """Request headers as Quart presented them (title-cased names, plus Remote-Addr)."""
    headers = {"Remote-Addr": (scope.get("client") or ["<local>"])[0]}
    for name, value in scope.get("headers", ()):
        headers[name.decode("latin1").title()] = value.decode("latin1")
    return headers


def register_ws(app: Quart, gateway: Gateway, path: str = "/ws") -> None:
    app.asgi_app = WsEndpoint(app.asgi_app, gateway, path)  # type: ignore[method-assign]
