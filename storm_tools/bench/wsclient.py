"""A minimal, fast asyncio WebSocket client (RFC 6455) for the benchmarks (docs/benchmarks.md).

Every bench talks to the STORM gateway and to the floor server through this one class, so both are
measured with the same client.  It is a raw :class:`asyncio.Protocol`:

* handshake: HTTP/1.1 ``GET`` with ``Upgrade: websocket``, a random 16-byte ``Sec-WebSocket-Key``, and
  verification of the ``101`` status and of ``Sec-WebSocket-Accept`` (SHA-1 of key + GUID, base64);
* client frames are masked with a fresh random 4-byte key (RFC 6455 5.3);
* server frames must be unmasked; 7/16/64-bit lengths, fragmented messages (continuation frames,
  control frames interleaved), ``ping`` -> ``pong``, ``close`` -> echo the close and drop the socket.

No extensions are negotiated, so RSV bits must be zero.  Text payloads are handed over as ``bytes``
without UTF-8 validation: the benches only search them for markers.

Subclass and override :meth:`on_message`, :meth:`on_open` and :meth:`on_close`; :meth:`send_text` sends.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import struct
from typing import Any

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_MESSAGE = 64 * 1024 * 1024


class WebSocketError(Exception):
    """The peer broke the protocol (bad handshake, masked server frame, bad opcode...)."""


def accept_key(key: bytes) -> bytes:
    """``Sec-WebSocket-Accept`` for a ``Sec-WebSocket-Key`` (both base64 ASCII)."""
    return base64.b64encode(hashlib.sha1(key + GUID, usedforsecurity=False).digest())  # RFC 6455 handshake


def mask_payload(payload: bytes, key: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``key`` repeated (masking and unmasking are the same operation)."""
    n = len(payload)
    if not n:
        return b""
    stream = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(stream, "little")).to_bytes(n, "little")


def frame_header(opcode: int, length: int, *, fin: bool = True, masked: bool = False) -> bytes:
    b0 = (0x80 if fin else 0) | opcode
    m = 0x80 if masked else 0
    if length < 126:
        return bytes((b0, m | length))
    if length < 65536:
        return struct.pack("!BBH", b0, m | 126, length)
    return struct.pack("!BBQ", b0, m | 127, length)


def encode_frame(opcode: int, payload: bytes, *, mask: bool) -> bytes:
    """One complete frame; ``mask=True`` for client frames (random key), False for server frames."""
    if not mask:
        return frame_header(opcode, len(payload)) + payload
    key = os.urandom(4)
    return frame_header(opcode, len(payload), masked=True) + key + mask_payload(payload, key)


class WSClient(asyncio.Protocol):
    """One client connection.  ``opened`` resolves after the handshake, ``closed`` when the socket is gone."""

    path = "/ws"

    def __init__(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self.host = host
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[int | None] = loop.create_future()
        self.close_code: int | None = None
        self.frames = 0  # data frames (text/binary, or first fragment) received
        self._key = base64.b64encode(os.urandom(16))
        self._handshaking = True
        self._buf = b""
        self._frag_op = 0
        self._frag: list[bytes] = []
        self._close_sent = False

    # -- hooks ------------------------------------------------------------------------------------------
    def on_open(self) -> None:
        """The handshake succeeded."""

    def on_message(self, payload: bytes, binary: bool) -> None:
        """One complete (reassembled) data message."""

    def on_close(self, code: int | None) -> None:
        """The connection is gone; ``code`` is the peer's close code if it sent one."""

    # -- sending ----------------------------------------------------------------------------------------
    def send_text(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode()
        assert self.transport is not None
        self.transport.write(encode_frame(OP_TEXT, data, mask=True))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame (once) and drop the socket; the bench does not wait for the peer's echo."""
        if self.transport is None or self.transport.is_closing():
            return
        if not self._close_sent:
            self._close_sent = True
            self.transport.write(encode_frame(OP_CLOSE, struct.pack("!H", code) + reason.encode()[:120],
                                              mask=True))
        self.transport.close()

    # -- asyncio.Protocol -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's TCPTransport is no subclass
        transport.write(
            b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n"
            % (self.path.encode(), self.host.encode(), self.port, self._key)
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("connection closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(self.close_code)
        self.on_close(self.close_code)

    def data_received(self, data: bytes) -> None:
        if not self._buf and not self._handshaking and not self._frag_op and data[0] == 0x81:
            # fast path: the read is exactly one complete unfragmented text frame (the common case)
            n, length = len(data), data[1]
            if length < 126:
                if n == 2 + length:
                    self.frames += 1
                    self.on_message(data[2:], False)
                    return
            elif length == 126 and n >= 4 and n == 4 + ((data[2] << 8) | data[3]):
                self.frames += 1
                self.on_message(data[4:], False)
                return
        if self._buf:
            data = self._buf + data
            self._buf = b""
        if self._handshaking:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > 16384:
                    self._fail(WebSocketError("handshake response too large"))
                    return
                self._buf = data
                return
            try:
                self._check_handshake(data[:end])
            except WebSocketError as exc:
                self._fail(exc)
                return
            self._handshaking = False
            self.opened.set_result(None)
            self.on_open()
            data = data[end + 4:]
            if not data:
                return
        try:
            self._parse(data)
        except WebSocketError as exc:
            self._fail(exc)

    # -- internals --------------------------------------------------------------------------------------
    def _check_handshake(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        status = lines[0].split(None, 2)
        if len(status) < 2 or status[1] != b"101":
            raise WebSocketError(f"handshake refused: {lines[0][:100]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if headers.get(b"upgrade", b"").lower() != b"websocket":
            raise WebSocketError("handshake: missing Upgrade: websocket")
        if headers.get(b"sec-websocket-accept") != accept_key(self._key):
            raise WebSocketError("handshake: wrong Sec-WebSocket-Accept")

    def _fail(self, exc: Exception) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def _parse(self, data: bytes) -> None:
        pos, end = 0, len(data)
        while end - pos >= 2:
            b0 = data[pos]
            b1 = data[pos + 1]
            if b1 & 0x80:
                raise WebSocketError("masked server frame")
            if b0 & 0x70:
                raise WebSocketError("reserved bits set")
            length = b1 & 0x7F
            start = pos + 2
            if length == 126:
                if end - pos < 4:
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 4
            elif length == 127:
                if end - pos < 10:
                    break
                length = int.from_bytes(data[pos + 2:pos + 10], "big")
                start = pos + 10
                if length > MAX_MESSAGE:
                    raise WebSocketError("frame too large")
            stop = start + length
            if stop > end:
                break
            payload = data[start:stop]
            pos = stop
            opcode = b0 & 0x0F
            fin = b0 & 0x80
            if opcode == OP_TEXT or opcode == OP_BINARY:
                if self._frag_op:
                    raise WebSocketError("new data frame inside a fragmented message")
                self.frames += 1
                if fin:
                    self.on_message(payload, opcode == OP_BINARY)
                else:
                    self._frag_op = opcode
                    self._frag = [payload]
            elif opcode == OP_CONT:
                if not self._frag_op:
                    raise WebSocketError("continuation frame without a message")
                self._frag.append(payload)
                if fin:
                    whole = b"".join(self._frag)
                    op, self._frag_op, self._frag = self._frag_op, 0, []
                    self.on_message(whole, op == OP_BINARY)
            else:
                self._control(opcode, fin, payload)
        if pos < end:
            self._buf = data[pos:]

    def _control(self, opcode: int, fin: int, payload: bytes) -> None:
        if not fin or len(payload) > 125:
            raise WebSocketError("fragmented or oversized control frame")
        assert self.transport is not None
        if opcode == OP_PING:
            if not self._close_sent:
                self.transport.write(encode_frame(OP_PONG, payload, mask=True))
        elif opcode == OP_PONG:
            pass
        elif opcode == OP_CLOSE:
            self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            if not self._close_sent:
                self._close_sent = True
                echo = payload[:2] if len(payload) >= 2 else b""
                self.transport.write(encode_frame(OP_CLOSE, echo, mask=True))
            self.transport.close()
        else:
            raise WebSocketError(f"unknown opcode {opcode}")


async def connect(
    factory: type[WSClient] | object,
    host: str,
    port: int,
    *,
    source: str | None = None,
    timeout: float = 10.0,
) -> WSClient:
    """Open a connection with ``factory()`` (a zero-argument callable returning a WSClient) and wait for
    the handshake.  ``source`` binds the local address (e.g. 127.0.0.2) to spread ephemeral ports."""
    loop = asyncio.get_running_loop()
    local = (source, 0) if source else None
    _, proto = await asyncio.wait_for(
        loop.create_connection(factory, host, port, local_addr=local), timeout  # type: ignore[arg-type]
    )
    assert isinstance(proto, WSClient)
    try:
        await asyncio.wait_for(asyncio.shield(proto.opened), timeout)
    except BaseException:
        if proto.transport is not None:
            proto.transport.abort()
        raise
    return proto


class SubscribingClient(WSClient):
    """A bench user: auth -> hello -> subscribe -> subscribed (``ready``), then every message goes to
    ``on_live``.  ``ready`` fails with the server's error, or when the socket closes during setup.
    ``stats`` is the child's shared counters: it has ``error(payload)``, ``closed``, ``first_error`` and
    ``stopping``."""

    def __init__(self, host: str, port: int, auth: bytes, stats: Any) -> None:
        super().__init__(host, port)
        self.stats = stats
        self.phase = 0  # 0: awaiting hello, 1: awaiting subscribed, 2: live
        self._auth = auth
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def subscribe_frame(self) -> bytes:
        raise NotImplementedError

    def on_live(self, payload: bytes) -> None:
        """A message once subscribed."""

    def on_open(self) -> None:
        self.send_text(self._auth)

    def on_message(self, payload: bytes, binary: bool) -> None:
        if self.phase == 2:
            self.on_live(payload)
            return
        for event in payload.split(b"\n"):
            if b'"type":"error"' in event:
                self.stats.error(event)
                if not self.ready.done():
                    self.ready.set_exception(RuntimeError(event[:300].decode(errors="replace")))
            elif self.phase == 0 and b'"type":"hello"' in event:
                self.phase = 1
                self.send_text(self.subscribe_frame())
            elif self.phase == 1 and b'"type":"subscribed"' in event:
                self.phase = 2
                if not self.ready.done():
                    self.ready.set_result(None)

    def on_close(self, code: int | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed during setup (code {code})"))
        elif not self.stats.stopping:
            self.stats.closed += 1
            self.stats.first_error = self.stats.first_error or f"connection closed with code {code}"
