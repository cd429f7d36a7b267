"""A minimal, fast asyncio WebSocket client (RFC 6455) for the benchmarks (docs/benchmarks.md).

Every bench talks to the STORM gateway and to the floor server through this one class, so both are
measured with the same client.  It is a raw :class:`asyncio.Protocol` over the one RFC 6455 codec,
:mod:`gateway.frames` (standard library only; the gateway's front door uses it for the server end):

* handshake: ``GET`` with ``Upgrade: websocket`` and a random ``Sec-WebSocket-Key``, then the ``101``
  status and ``Sec-WebSocket-Accept`` are checked;
* client frames are masked with a fresh random 4-byte key (RFC 6455 5.3);
* server frames must be unmasked; fragmented messages are reassembled, ``ping`` -> ``pong``, ``close`` ->
  echo the close and drop the socket.

No extensions are negotiated, so RSV bits must be zero.  Text payloads are handed over as ``bytes``
without UTF-8 validation: the benches only search them for markers.  A read made of complete unfragmented
text frames under 64 KiB (the common case: one frame, or several when the client is behind) is split
in place without the reader; the reader takes whatever follows the first frame it cannot split so.

Subclass and override :meth:`on_message`, :meth:`on_open` and :meth:`on_close`; :meth:`send_text` sends.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any, TypeVar

from gateway import frames as f

MAX_MESSAGE = 64 * 1024 * 1024
MAX_RESPONSE_HEAD = 16 * 1024
_MESSAGE = re.compile(rb'"message":"([^"]{1,200})"')  # a refusal's reason in its JSON body


class WebSocketError(Exception):
    """The peer broke the protocol (bad handshake, masked server frame, bad opcode...)."""

    retry_after: float | None = None  # a refused upgrade's Retry-After (seconds), when it had one


class WSClient(asyncio.Protocol):
    """One client connection.  ``opened`` resolves after the handshake, ``closed`` when the socket is gone."""

    path = "/ws"

    def __init__(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self.host = host
        self.port = port
        self.transport: Any = None  # uvloop's TCPTransport is no asyncio.Transport subclass
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[int | None] = loop.create_future()
        self.close_code: int | None = None
        self.frames = 0  # data messages received
        self._key = f.new_key()
        self._head: bytes | None = b""  # the response head while handshaking, then None
        self._reader = f.FrameReader(MAX_MESSAGE, masked=False, utf8=False)
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
        self.transport.write(f.client_frame(f.OP_TEXT, data))

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame (once) and drop the socket; the bench does not wait for the peer's echo."""
        if self.transport is None or self.transport.is_closing():
            return
        if not self._close_sent:
            self._close_sent = True
            self.transport.write(f.client_frame(f.OP_CLOSE, f.close_payload(code, reason)))
        self.transport.close()

    # -- asyncio.Protocol -------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.transport.write(f.upgrade_request(self.path, f"{self.host}:{self.port}", self._key))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("connection closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(self.close_code)
        self.on_close(self.close_code)

    def data_received(self, data: bytes) -> None:
        if self._head is None and self._reader.idle and data[0] == 0x81:
            # fast path: complete unfragmented unmasked text frames with a 7- or 16-bit length, split here
            n, at = len(data), 0
            while at < n and data[at] == 0x81 and at + 1 < n:
                length = data[at + 1]  # the mask bit is 0 for a server frame, so 126 means a 16-bit length
                if length < 126:
                    start = at + 2
                elif length == 126 and at + 4 <= n:
                    start, length = at + 4, (data[at + 2] << 8) | data[at + 3]
                else:
                    break
                end = start + length
                if end > n:
                    break
                self.frames += 1
                self.on_message(data[start:end], False)
                at = end
                if self.transport is None or self.transport.is_closing():
                    return
            if at == n:
                return
            data = data[at:]  # the reader is idle: the rest reads as if it had arrived alone
        if self._head is not None:
            data = self._handshake(data)
            if not data:
                return
        try:
            messages = self._reader.feed(data)
        except f.FrameError as exc:
            self._fail(WebSocketError(exc.reason))
            return
        for message in messages:
            self._message(message)

    # -- internals --------------------------------------------------------------------------------------
    def _handshake(self, data: bytes) -> bytes:
        """Take the response head from ``data``; the bytes after it (frames), or b"" while it is incomplete
        or when the handshake failed."""
        assert self._head is not None
        buffered = self._head + data
        end = buffered.find(b"\r\n\r\n")
        if end < 0:
            if len(buffered) > MAX_RESPONSE_HEAD:
                self._fail(WebSocketError("handshake response too large"))
            else:
                self._head = buffered
            return b""
        response = f.parse_response_head(buffered[:end])
        if not response.upgraded(self._key):
            first_line = buffered[:min(end, 100)].split(b"\r\n")[0]
            why = _MESSAGE.search(buffered, end)  # the server's reason, when its JSON body came with the head
            refused = WebSocketError(f"handshake refused: {first_line!r}"
                                     + (f" ({why[1].decode(errors='replace')})" if why else ""))
            retry = response.headers.get("retry-after", "")
            refused.retry_after = float(retry) if retry.isdigit() else None
            self._fail(refused)
            return b""
        self._head = None
        self.opened.set_result(None)
        self.on_open()
        return buffered[end + 4:]

    def _fail(self, exc: Exception) -> None:
        self._head = b""
        if not self.opened.done():
            self.opened.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def _message(self, message: f.Message) -> None:
        op, data = message.opcode, message.data
        if op == f.OP_TEXT or op == f.OP_BINARY:
            self.frames += 1
            self.on_message(data if isinstance(data, bytes) else data.encode(), op == f.OP_BINARY)
        elif op == f.OP_PING:
            if not self._close_sent:
                self.transport.write(f.client_frame(f.OP_PONG, data if isinstance(data, bytes) else b""))
        elif op == f.OP_CLOSE:
            code = message.close_code
            self.close_code = 1005 if code is None else code  # 1005: the peer sent no code
            if not self._close_sent:
                self._close_sent = True
                self.transport.write(f.client_frame(f.OP_CLOSE, b"" if code is None else code.to_bytes(2, "big")))
            self.transport.close()


C = TypeVar("C", bound=WSClient)


async def connect(
    factory: Callable[[], C],
    host: str,
    port: int,
    *,
    source: str | None = None,
    timeout: float = 10.0,
) -> C:
    """Open a connection with ``factory()`` and wait for the handshake.  ``source`` binds the local address
    (e.g. 127.0.0.2) to spread ephemeral ports."""
    loop = asyncio.get_running_loop()
    local = (source, 0) if source else None
    _, proto = await asyncio.wait_for(loop.create_connection(factory, host, port, local_addr=local), timeout)
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
