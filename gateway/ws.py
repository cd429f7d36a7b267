"""The WebSocket route: it only moves frames between the socket and the session core.

Everything the protocol decides lives in :mod:`storm.protocol.session`; this module maps the socket's
life (accept, frames, disconnect) onto it, owns the per-connection :class:`~gateway.outbox.Outbox`, and
carries out the closes the session asks for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from quart import Quart, websocket

from gateway.outbox import Outbox
from storm.protocol.codes import CloseCode
from storm.protocol.session import Session

if TYPE_CHECKING:
    from gateway.runtime import Gateway

log = logging.getLogger("storm.gateway.ws")


class WsConnection:
    """The session's Transport: queue frames on the outbox, close by closing the socket."""

    __slots__ = ("_gateway", "_task", "_ws", "outbox", "session")

    def __init__(self, ws: Any, gateway: Gateway, task: asyncio.Task[Any] | None) -> None:
        cfg = gateway.config
        self._ws = ws
        self._gateway = gateway
        self._task = task
        self.outbox = Outbox(self._send_frame, self._overflow, max_events=cfg.outbox_max_events,
                             max_bytes=cfg.outbox_max_bytes, coalesce_max_bytes=cfg.coalesce_max_bytes)
        self.session: Session | None = None

    async def _send_frame(self, frame: bytes) -> None:
        await self._ws.send(frame.decode())  # text frame: the protocol is UTF-8 JSON

    def _overflow(self) -> None:
        if self.session is not None:
            self.session.close(CloseCode.SLOW_CONSUMER, "outgoing queue overflow: reconnect and resume")

    # Transport
    def send(self, data: bytes) -> bool:
        return self.outbox.push(data)

    def close(self, code: int, reason: str) -> None:
        self._gateway.spawn(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        if code == CloseCode.SLOW_CONSUMER:
            self.outbox.discard()
        else:
            await self.outbox.flush(1.0)  # let the error event that explains the close go first
            self.outbox.discard()
        with contextlib.suppress(Exception):
            await self._ws.close(code, reason[:120])
        if self._task is not None and not self._task.done():
            self._task.cancel()


def register_ws(app: Quart, gateway: Gateway, path: str = "/ws") -> None:
    @app.websocket(path)
    async def ws_route() -> None:
        ws = websocket._get_current_object()  # a plain object other tasks can use
        refusal = gateway.admit(dict(ws.headers))
        if refusal is not None:
            await ws.accept()
            await ws.close(int(refusal[0]), refusal[1])
            return
        await ws.accept()
        conn = WsConnection(ws, gateway, asyncio.current_task())
        session = Session(gateway.session_context, conn)
        conn.session = session
        gateway.hub.register(session)
        try:
            while True:
                data = await ws.receive()
                await session.receive(data)
        finally:
            gateway.hub.unregister(session)
            gateway.release()
            conn.outbox.discard()
            gateway.spawn(session.closed())
