"""The gateway's front door: ``/ws`` served by a lean asyncio protocol, everything else piped to Hypercorn
(ADR 0007, docs/architecture.md "Processes").

One :class:`asyncio.Protocol` object per TCP connection, listening on the gateway's public port:

* It reads the HTTP request head (at most ``MAX_HEAD`` bytes, within ``STORM_HANDSHAKE_TIMEOUT_S``).
* A ``GET /ws`` upgrade is checked by the :class:`~gateway.guard.HandshakeGuard` (Origin, per-IP limit) and
  answered ``101`` here; from then on the same object is the WebSocket: :mod:`gateway.frames` parses the
  client's frames and this driver hands complete messages to the connection's
  :class:`~gateway.connection.Connection`, which owns everything between the socket and the session core
  (open, outbox, overflow, close, end).  An idle socket holds this object, its transport, the connection,
  its session and outbox: no task, no queue, no HTTP parser state.
* Any other request is piped, byte for byte in both directions with flow control, to Hypercorn listening on
  a Unix socket in a private directory: the chat page, ``/healthz``, the tenants API and ``/dev/token``
  keep Quart and Hypercorn (keep-alive, chunking, errors) unchanged.  Hypercorn serves no WebSocket.

Why (measured, docs/benchmarks.md): Hypercorn's handling of one idle WebSocket (its stream reader/writer,
task group, WSStream, h11 and wsproto state, the ASGI queue) was ≈ 19 700 of the ≈ 28 000 bytes an idle
connection cost, against the 15 000-byte target.  This is the only WebSocket path: the ASGI one that
Hypercorn used to serve (ADR 0006) was retired with the amendment to ADR 0007.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING, Any

from gateway import frames as f
from gateway.connection import Connection

if TYPE_CHECKING:
    from gateway.guard import HandshakeGuard
    from gateway.runtime import Gateway

log = logging.getLogger("storm.gateway.frontdoor")

CLOSE_WAIT_S = 2.0  # after our close frame, how long the peer has to answer before the socket is cut
UPSTREAM_RETRY_S = 5.0  # at start-up Hypercorn's socket may not listen yet: keep trying this long

_HEAD, _WS, _CLOSING, _PIPE, _DONE = range(5)
_REASONS = {403: "Forbidden", 429: "Too Many Requests", 503: "Service Unavailable"}


class FrontDoor:
    """Listens on the gateway's public port (``port=0``: any free port, set in :attr:`port` by
    :meth:`start`)."""

    def __init__(self, gateway: Gateway, guard: HandshakeGuard, upstream_path: str, *, path: str = "/ws",
                 host: str | None = None, port: int | None = None) -> None:
        cfg = gateway.config
        self.gateway = gateway
        self.guard = guard
        self.upstream_path = upstream_path
        self.path = path
        self.host = cfg.host if host is None else host
        self.port = cfg.port if port is None else port
        self.handshake_timeout_s = cfg.handshake_timeout_s
        self.send_buffer = cfg.socket_send_buffer  # SO_SNDBUF per client socket; 0: the kernel's autotuning
        self.max_message = 2 * cfg.max_frame_bytes  # what Hypercorn enforced (1009), for the same behaviour
        self.sockets: set[_Socket] = set()
        self._server: asyncio.Server | None = None

    async def start(self, backlog: int = 4096) -> None:
        if self._server is not None:
            raise RuntimeError("the front door is already open")
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Socket(self), self.host, self.port, backlog=backlog,
                                                reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop_listening(self) -> None:
        """No new connections (open ones go on); idempotent."""
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        """Stop listening and cut whatever is still open (after the drain, only stragglers)."""
        self.stop_listening()
        for sock in list(self.sockets):
            sock.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5.0)
            self._server = None


class _Socket(asyncio.Protocol):
    """One TCP connection: its request head, then a WebSocket (the :class:`~gateway.connection.Socket` of a
    :class:`~gateway.connection.Connection`) or a pipe to Hypercorn."""

    __slots__ = ("_admitted", "_buf", "_door", "_drained", "_handshaking", "_ip", "_reader", "_timer", "_transport",
                 "_upstream", "_writing_paused", "conn", "state")

    def __init__(self, door: FrontDoor) -> None:
        self._door = door
        self.state = _HEAD
        self._buf: bytearray | None = bytearray()
        self._transport: Any = None
        self._timer: asyncio.TimerHandle | None = None
        self._ip = ""
        self._admitted = False  # counted by the guard: released when the socket ends
        self._handshaking = False  # counted by the guard as a handshake in progress until the session opens
        self._reader: f.FrameReader | None = None
        self._writing_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._upstream: Any = None  # the pipe's transport to Hypercorn
        self.conn: Connection | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        self._door.sockets.add(self)
        if self._door.send_buffer:  # a fixed buffer: a stopped reader fills the outbox, not 4 MiB of kernel
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._door.send_buffer)
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
        self._door.sockets.discard(self)
        self._cancel_timer()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        if previous == _PIPE and self._upstream is not None:
            self._upstream.close()
        self.handshake_over(answered=False)
        if self._admitted:
            self._admitted = False
            self._door.guard.release(self._ip)
        if self.conn is not None:
            self.conn.ended()

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
            self._respond(refusal.status, _REASONS.get(refusal.status, "Too Many Requests"), refusal.body,
                          refusal.headers)
            return
        self._admitted = self._handshaking = True
        self._cancel_timer()
        assert self._buf is not None
        rest, self._buf = bytes(self._buf[request.head_size:]), None
        self._transport.write(f.switching_protocols(request))
        self.state = _WS
        self._reader = f.FrameReader(door.max_message)
        self.conn = Connection.open(door.gateway, self, on_open=self.handshake_over)
        if rest:
            self._frames(rest)

    def handshake_over(self, *, answered: bool = True) -> None:
        """The session answered ``auth`` (or the socket ended first): one handshake in progress less."""
        if self._handshaking:
            self._handshaking = False
            self._door.guard.handshake_over(answered=answered)

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
                if self.conn is not None:
                    self.conn.receive(message.data)
            elif op == f.OP_PING:
                if self.state == _WS:
                    payload = message.data if isinstance(message.data, bytes) else b""
                    self._transport.writelines((f.frame_header(f.OP_PONG, len(payload)), payload))
            elif op == f.OP_CLOSE:
                self._peer_closed(message.close_code)
                return

    def _protocol_error(self, code: int, reason: str) -> None:
        if self.conn is not None:
            self.conn.halt()
        self.close_socket(code, reason)

    def _peer_closed(self, code: int | None) -> None:
        if self.conn is not None:
            self.conn.halt()
        if self.state == _WS:  # answer the close handshake with the peer's code, then end the connection
            sendable = code is not None and 1000 <= code < 5000 and code not in (1004, 1005, 1006, 1015)
            self._transport.write(f.close_frame(code) if sendable else f.frame_header(f.OP_CLOSE, 0))  # type: ignore[arg-type]
        self.state = _CLOSING
        self._cancel_timer()
        self._transport.close()

    # -- Socket (gateway.connection) ---------------------------------------------------------------------
    def write_frame(self, frame: bytes) -> bool:
        """One text frame, now, unless the socket's buffer is full (the outbox then falls back to
        ``send_frame``, which waits) or the WebSocket is closing."""
        if self._writing_paused or self.state != _WS:
            return False
        self._transport.write(f.text_frame(frame))
        return True

    async def send_frame(self, frame: bytes) -> None:
        while self._writing_paused and self.state == _WS:
            if self._drained is None:
                self._drained = asyncio.get_running_loop().create_future()
            await self._drained
        if self.state != _WS:
            raise ConnectionError("the WebSocket is closing")
        self._transport.write(f.text_frame(frame))

    def close_socket(self, code: int, reason: str) -> None:
        """Our close frame; the peer then has ``CLOSE_WAIT_S`` to answer before the socket is cut."""
        if self.state != _WS:
            return
        self._transport.write(f.close_frame(code, reason))
        self.state = _CLOSING
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(CLOSE_WAIT_S, self.abort)

    def pause_reading(self) -> None:
        self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self.state == _WS:
            self._transport.resume_reading()

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

    def __init__(self, client: _Socket) -> None:
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
