"""The gateway's front door: ``/ws`` served by a lean asyncio protocol, everything else piped to Hypercorn
(ADR 0007, docs/architecture.md "Processes").

One :class:`asyncio.Protocol` object per TCP connection, listening on the gateway's public port:

* It reads the HTTP request head (at most ``MAX_HEAD`` bytes, within ``STORM_HANDSHAKE_TIMEOUT_S``).
* A ``GET /ws`` upgrade is checked by the :class:`~gateway.guard.HandshakeGuard` (Origin, per-IP limit) and
  answered ``101`` here; from then on the same object is the WebSocket: :mod:`gateway.frames` parses the
  client's frames, the session core (:mod:`storm.protocol.session`) gets the messages, and the per
  connection :class:`~gateway.outbox.Outbox` writes text frames straight to the transport.  An idle socket
  holds this object, its transport, its session and outbox: no task, no queue, no HTTP parser state.
* Any other request is piped, byte for byte in both directions with flow control, to Hypercorn listening on
  a Unix socket in a private directory: the chat page, ``/healthz``, the tenants API and ``/dev/token``
  keep Quart and Hypercorn (keep-alive, chunking, errors) unchanged.

Why (measured, docs/benchmarks.md): Hypercorn's handling of one idle WebSocket (its stream reader/writer,
task group, WSStream, h11 and wsproto state, the ASGI queue) was ≈ 19 700 of the ≈ 28 000 bytes an idle
connection cost, against the 15 000-byte target.  ``STORM_WS_FRONT_DOOR=false`` serves ``/ws`` through
Hypercorn and :mod:`gateway.ws` again (the in-process tests drive that ASGI path).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from gateway import frames as f
from gateway.outbox import Outbox
from storm.protocol.codes import CloseCode
from storm.protocol.session import Session

if TYPE_CHECKING:
    from gateway.guard import HandshakeGuard
    from gateway.runtime import Gateway

log = logging.getLogger("storm.gateway.frontdoor")

INBOX_HIGH = 64  # messages read but not yet handled before the socket stops being read
CLOSE_WAIT_S = 2.0  # after our close frame, how long the peer has to answer before the socket is cut
UPSTREAM_RETRY_S = 5.0  # at start-up Hypercorn's socket may not listen yet: keep trying this long

_HEAD, _WS, _CLOSING, _PIPE, _DONE = range(5)


class FrontDoor:
    def __init__(self, gateway: Gateway, guard: HandshakeGuard, upstream_path: str, *, path: str = "/ws") -> None:
        cfg = gateway.config
        self.gateway = gateway
        self.guard = guard
        self.upstream_path = upstream_path
        self.path = path
        self.host, self.port = cfg.host, cfg.port
        self.handshake_timeout_s = cfg.handshake_timeout_s
        self.max_message = 2 * cfg.max_frame_bytes  # what Hypercorn enforced (1009), for the same behaviour
        self.connections: set[_Connection] = set()
        self._server: asyncio.Server | None = None

    async def start(self, backlog: int = 4096) -> None:
        if self._server is not None:
            raise RuntimeError("the front door is already open")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), self.host, self.port, backlog=backlog,
                                                reuse_address=True)

    def stop_listening(self) -> None:
        """No new connections (open ones go on); idempotent."""
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        """Stop listening and cut whatever is still open (after the drain, only stragglers)."""
        self.stop_listening()
        for conn in list(self.connections):
            conn.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)
            self._server = None


class _Connection(asyncio.Protocol):
    """One TCP connection: reading its request head, then a WebSocket or a pipe to Hypercorn."""

    __slots__ = ("_admitted", "_buf", "_door", "_drained", "_inbox", "_ip", "_paused_reading", "_reader",
                 "_timer", "_transport", "_upstream", "_worker", "_writing_paused", "outbox", "send", "session",
                 "state")

    def __init__(self, door: FrontDoor) -> None:
        self._door = door
        self.state = _HEAD
        self._buf: bytearray | None = bytearray()
        self._transport: Any = None
        self._timer: asyncio.TimerHandle | None = None
        self._ip = ""
        self._admitted = False  # counted by the guard and the gateway: released when the socket ends
        self._reader: f.FrameReader | None = None
        self._inbox: collections.deque[str | bytes] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._paused_reading = False
        self._writing_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._upstream: Any = None  # the pipe's transport to Hypercorn
        self.outbox: Outbox | None = None
        self.session: Session | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        self._door.connections.add(self)
        self._timer = asyncio.get_running_loop().call_later(self._door.handshake_timeout_s, self._too_slow)

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == _WS or state == _CLOSING:
            self._frames(data)
        elif state == _PIPE:
            if self._upstream is not None:
                self._upstream.write(data)
            else:
                assert self._buf is not None
                self._buf += data  # still connecting to Hypercorn
        elif state == _HEAD:
            assert self._buf is not None
            self._buf += data
            try:
                request = f.parse_head(self._buf)
            except f.HeadTooLarge:
                self._respond(431, "Request Header Fields Too Large", b'{"error":{"code":"bad_request"}}')
                return
            if request is not None:
                self._route(request)

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self.state == _PIPE and self._upstream is not None:
            self._upstream.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if self.state == _PIPE and self._upstream is not None:
            self._upstream.resume_reading()
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    def connection_lost(self, exc: BaseException | None) -> None:
        previous, self.state = self.state, _DONE
        self._door.connections.discard(self)
        self._cancel_timer()
        if self._worker is not None:
            self._worker.cancel()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        if previous == _PIPE and self._upstream is not None:
            self._upstream.close()
        if self._admitted:
            self._admitted = False
            gateway = self._door.gateway
            self._door.guard.release(self._ip)
            if self.session is not None:
                gateway.hub.unregister(self.session)
                gateway.release()
                gateway.spawn(self.session.closed())
            if self.outbox is not None:
                self.outbox.discard()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    # -- the request head ------------------------------------------------------------------------------
    def _too_slow(self) -> None:
        self._timer = None
        if self.state == _HEAD:
            self._transport.abort()  # what Hypercorn's keep-alive timer did: no answer, the socket is cut

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _respond(self, status: int, reason: str, body: bytes, extra: tuple[tuple[str, str], ...] = ()) -> None:
        self._cancel_timer()
        self.state = _DONE
        self._transport.write(f.http_response(status, reason, body, extra))
        self._transport.close()

    def _route(self, request: f.Request) -> None:
        if not request.method:
            self._respond(400, "Bad Request", b'{"error":{"code":"bad_request","message":"malformed request"}}')
        elif request.path == self._door.path and request.wants_websocket:
            self._upgrade(request)
        else:
            self._pipe()

    # -- WebSocket -------------------------------------------------------------------------------------
    def _upgrade(self, request: f.Request) -> None:
        door = self._door
        problem = f.handshake_problem(request)
        if problem is not None:
            status, reason = problem
            body = b'{"error":{"code":"bad_request","message":"%s"}}' % reason.encode()
            self._respond(status, reason, body, (("Sec-WebSocket-Version", "13"),) if status == 426 else ())
            return
        peer = self._transport.get_extra_info("peername")
        self._ip = str(peer[0]) if peer else "-"
        refusal = door.guard.admit(request.headers, self._ip)
        if refusal is not None:
            self._respond(refusal.status, "Forbidden" if refusal.status == 403 else "Too Many Requests",
                          refusal.body, refusal.headers)
            return
        self._admitted = True
        self._cancel_timer()
        assert self._buf is not None
        rest, self._buf = bytes(self._buf[request.head_size:]), None
        self._transport.write(f.switching_protocols(request))
        self.state = _WS
        self._reader = f.FrameReader(door.max_message)
        gateway = door.gateway
        not_now = gateway.admit(request.headers)
        if not_now is not None:  # draining: accepted, then told to go elsewhere at once
            self._send_close(int(not_now[0]), not_now[1])
            return
        cfg = gateway.config
        self.outbox = Outbox(self._send_frame, self._overflow, max_events=cfg.outbox_max_events,
                             max_bytes=cfg.outbox_max_bytes, coalesce_max_bytes=cfg.coalesce_max_bytes,
                             flusher=gateway.flusher, direct=self._write_now)
        self.send = self.outbox.push  # the session's Transport.send
        self.session = Session(gateway.session_context, self)
        gateway.hub.register(self.session)
        if rest:
            self._frames(rest)

    def _frames(self, data: bytes) -> None:
        if self._reader is None:
            return  # nothing more is read from a peer that broke the protocol
        try:
            messages = self._reader.feed(data)
        except f.FrameError as exc:
            self._reader = None
            self._protocol_error(exc.code, exc.reason)
            return
        for message in messages:
            op = message.opcode
            if op == f.OP_TEXT or op == f.OP_BINARY:
                if self.state == _WS and self.session is not None:
                    self._deliver(message.data)
            elif op == f.OP_PING:
                if self.state == _WS:
                    payload = message.data if isinstance(message.data, bytes) else b""
                    self._transport.writelines((f.frame_header(f.OP_PONG, len(payload)), payload))
            elif op == f.OP_CLOSE:
                self._peer_closed(message.close_code)
                return

    def _deliver(self, data: str | bytes) -> None:
        """Messages of one connection are handled one at a time, in order, by a task that exists only while
        there is something to handle."""
        if self._inbox is None:
            self._inbox = collections.deque()
        self._inbox.append(data)
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._handle_inbox())
        if len(self._inbox) >= INBOX_HIGH and not self._paused_reading:
            self._paused_reading = True
            self._transport.pause_reading()

    async def _handle_inbox(self) -> None:
        inbox, session = self._inbox, self.session
        assert inbox is not None and session is not None
        try:
            while inbox and self.state == _WS:
                await session.receive(inbox.popleft())
                if self._paused_reading and len(inbox) <= INBOX_HIGH // 4:
                    self._paused_reading = False
                    self._transport.resume_reading()
        finally:
            self._worker = None

    # Transport (storm.protocol.session): ``send`` is the outbox's push, bound at the upgrade.
    def close(self, code: int, reason: str) -> None:
        self._door.gateway.spawn(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        if self.state != _WS:
            return
        if self.outbox is not None:
            if code != CloseCode.SLOW_CONSUMER:
                await self.outbox.flush(1.0)  # the error event that explains the close goes first
            self.outbox.discard()
        if self._worker is not None and self._worker is not asyncio.current_task():
            self._worker.cancel()  # the peer may never send again: stop handling its frames
        self._send_close(code, reason)

    def _send_close(self, code: int, reason: str) -> None:
        if self.state not in (_WS, _CLOSING):
            return
        if self.state == _WS:
            self._transport.write(f.close_frame(code, reason))
            self.state = _CLOSING
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(CLOSE_WAIT_S, self.abort)

    def _protocol_error(self, code: int, reason: str) -> None:
        if self.outbox is not None:
            self.outbox.discard()
        self._send_close(code, reason[:120])

    def _peer_closed(self, code: int | None) -> None:
        if self.state == _WS:  # answer the close handshake with the peer's code, then end the connection
            if self.outbox is not None:
                self.outbox.discard()
            sendable = code is not None and 1000 <= code < 5000 and code not in (1004, 1005, 1006, 1015)
            self._transport.write(f.close_frame(code) if sendable else f.frame_header(f.OP_CLOSE, 0))  # type: ignore[arg-type]
        self.state = _CLOSING
        self._cancel_timer()
        self._transport.close()

    def _overflow(self) -> None:
        if self.session is not None:
            self.session.close(CloseCode.SLOW_CONSUMER, "outgoing queue overflow: reconnect and resume")

    def _write_now(self, frame: bytes) -> bool:
        """The outbox's direct write: one text frame, now, unless the socket's buffer is full (then the
        outbox falls back to ``_send_frame``, which waits) or the WebSocket is closing."""
        if self._writing_paused or self.state != _WS:
            return False
        self._transport.writelines((f.frame_header(f.OP_TEXT, len(frame)), frame))
        return True

    async def _send_frame(self, frame: bytes) -> None:
        while self._writing_paused and self.state == _WS:
            if self._drained is None:
                self._drained = asyncio.get_running_loop().create_future()
            await self._drained
        if self.state != _WS:
            raise ConnectionError("the WebSocket is closing")
        self._transport.writelines((f.frame_header(f.OP_TEXT, len(frame)), frame))

    # -- pipe to Hypercorn -----------------------------------------------------------------------------
    def _pipe(self) -> None:
        self._cancel_timer()  # Hypercorn's own timers apply from here
        self.state = _PIPE
        self._door.gateway.spawn(self._connect_upstream())

    async def _connect_upstream(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + UPSTREAM_RETRY_S
        while True:
            try:
                upstream, _ = await loop.create_unix_connection(lambda: _Upstream(self), self._door.upstream_path)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if loop.time() > deadline or self.state != _PIPE:
                    if self.state == _PIPE:
                        self._respond(503, "Service Unavailable", b'{"error":{"code":"unavailable"}}')
                    return
                await asyncio.sleep(0.05)
        if self.state != _PIPE:  # the client left meanwhile
            upstream.close()
            return
        self._upstream = upstream
        assert self._buf is not None
        upstream.write(bytes(self._buf))
        self._buf = None
        if self._writing_paused:
            upstream.pause_reading()


class _Upstream(asyncio.Protocol):
    """Hypercorn's side of a pipe."""

    __slots__ = ("_client", "_transport")

    def __init__(self, client: _Connection) -> None:
        self._client = client
        self._transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._client._transport.write(data)

    def pause_writing(self) -> None:  # Hypercorn reads slower than the client sends
        self._client._transport.pause_reading()

    def resume_writing(self) -> None:
        self._client._transport.resume_reading()

    def connection_lost(self, exc: BaseException | None) -> None:
        client = self._client._transport
        if client is not None and not client.is_closing():
            client.close()  # after what is buffered: Hypercorn closed its side (end of response, or error)
