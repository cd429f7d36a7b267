"""RFC 6455, once, with no I/O (ADR 0007): the HTTP upgrade and its answer, and a frame reader/writer for
both ends.  Bytes in, events out; tested without sockets (tests/unit/test_frames.py).

The gateway's front door is the server end.  The benchmark client and floor (storm_tools/bench) and the
tests' WebSocket clients use the same module for the client end, so there is one codec: this module imports
only the standard library (an import-linter contract keeps it so), and importing it pulls in nothing else
of the gateway.

The server's rules: client frames must be masked, no extensions are negotiated (RSV bits must be 0),
control frames are at most 125 bytes and never fragmented, a message (all its fragments) is at most
``max_message`` bytes, text must be UTF-8.  A violation raises :class:`FrameError` carrying the close code
the RFC prescribes (1002 protocol error, 1007 bad UTF-8, 1009 too big).  The client end reads frames that
must *not* be masked (``FrameReader(masked=False)``) and masks its own (:func:`client_frame`).
"""

from __future__ import annotations

import base64
import hashlib
import os
from dataclasses import dataclass

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEAD = 16 * 1024  # request line + headers; Hypercorn's h11 allows the same

OP_CONTINUATION, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CLOSE_PROTOCOL_ERROR, CLOSE_BAD_DATA, CLOSE_TOO_BIG = 1002, 1007, 1009


class FrameError(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


# --- the upgrade request -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str  # without the query string
    headers: dict[str, str]  # names lower-cased; repeated headers joined with ", "
    head_size: int  # bytes up to and including the blank line

    @property
    def wants_websocket(self) -> bool:
        return (self.method == "GET" and "websocket" in self.headers.get("upgrade", "").lower()
                and "upgrade" in self.headers.get("connection", "").lower())


class HeadTooLarge(Exception):
    """The request head passed MAX_HEAD bytes without ending."""


def parse_head(buffer: bytes | bytearray) -> Request | None:
    """The request whose head ``buffer`` starts with; None while the head is incomplete.  A head that cannot
    be parsed gives a Request with method "" (the caller answers 400)."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > MAX_HEAD:
            raise HeadTooLarge
        return None
    if end > MAX_HEAD:
        raise HeadTooLarge
    lines = bytes(buffer[:end]).split(b"\r\n")
    try:
        method, target, version = lines[0].decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        return Request("", "", {}, end + 4)
    if not version.startswith("HTTP/1."):
        return Request("", "", {}, end + 4)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            return Request("", "", {}, end + 4)
        key = name.decode("latin-1").lower()
        text = value.strip().decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return Request(method, target.split("?", 1)[0], headers, end + 4)


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a client's Sec-WebSocket-Key."""
    digest = hashlib.sha1(key.encode("ascii") + GUID, usedforsecurity=False).digest()  # RFC 6455 4.2.2
    return base64.b64encode(digest).decode("ascii")


def handshake_problem(request: Request) -> tuple[int, str] | None:
    """Why an upgrade request cannot be accepted, as (HTTP status, reason); None when it can."""
    if request.headers.get("sec-websocket-version") != "13":
        return 426, "Sec-WebSocket-Version 13 required"
    key = request.headers.get("sec-websocket-key", "")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise ValueError(key)
    except ValueError:
        return 400, "bad Sec-WebSocket-Key"
    return None


def switching_protocols(request: Request) -> bytes:
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(request.headers["sec-websocket-key"]).encode() + b"\r\n\r\n")


def http_response(status: int, reason: str, body: bytes, extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A complete HTTP/1.1 response that closes the connection (refusals before an upgrade)."""
    head = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/json", f"Content-Length: {len(body)}",
            "Connection: close", *(f"{k}: {v}" for k, v in extra)]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


# --- the upgrade, from the client's end ------------------------------------------------------------------


def new_key() -> str:
    """A fresh Sec-WebSocket-Key: 16 random bytes, base64."""
    return base64.b64encode(os.urandom(16)).decode("ascii")


def upgrade_request(path: str, host: str, key: str, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A client's ``GET`` with ``Upgrade: websocket`` (no extension offered)."""
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass(frozen=True, slots=True)
class Response:
    status: int  # 0 when the status line cannot be parsed
    headers: dict[str, str]  # names lower-cased

    def upgraded(self, key: str) -> bool:
        """Whether this answers the upgrade sent with ``key``: 101, ``Upgrade: websocket`` and the right
        ``Sec-WebSocket-Accept``."""
        return (self.status == 101 and self.headers.get("upgrade", "").lower() == "websocket"
                and self.headers.get("sec-websocket-accept") == accept_key(key))


def parse_response_head(head: bytes) -> Response:
    """A response head (without the blank line that ends it)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(None, 2)
    status = int(parts[1]) if len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1].isdigit() else 0
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().decode("latin-1").lower()] = value.strip().decode("latin-1")
    return Response(status, headers)


# --- frames --------------------------------------------------------------------------------------------


def frame_header(opcode: int, size: int, *, fin: bool = True, masked: bool = False) -> bytes:
    """Header of one frame of ``size`` payload bytes: final and unmasked (a server's) unless told otherwise;
    a masked header is followed by the 4-byte key, then the masked payload."""
    first = (0x80 if fin else 0) | opcode
    second = 0x80 if masked else 0
    if size < 126:
        return bytes((first, second | size))
    if size < 65536:
        return bytes((first, second | 126)) + size.to_bytes(2, "big")
    return bytes((first, second | 127)) + size.to_bytes(8, "big")


_last_payload: bytes | None = None  # text_frame's one-entry memo: the last payload and its frame
_last_frame = b""


def text_frame(payload: bytes) -> bytes:
    """A server's text frame carrying ``payload``, header and payload in one ``bytes`` (one ``write``).

    A broadcast hands the same payload object to every recipient it writes at once, one after the other,
    so the last frame is kept: the header is built and the payload copied once per broadcast, not once per
    delivery (a hit is an identity check; bytes are immutable)."""
    global _last_payload, _last_frame  # a one-entry memo, see the docstring
    if payload is _last_payload:
        return _last_frame
    size = len(payload)
    frame = (bytes((0x81, size)) if size < 126 else frame_header(OP_TEXT, size)) + payload
    _last_payload, _last_frame = payload, frame
    return frame


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, key: bytes | None = None) -> bytes:
    """One client frame: masked with ``key``, a fresh random 4-byte key by default (RFC 6455 5.3)."""
    key = os.urandom(4) if key is None else key
    return frame_header(opcode, len(payload), fin=fin, masked=True) + key + apply_mask(payload, key)


def close_payload(code: int, reason: str = "") -> bytes:
    """A close frame's payload: the code, then at most 123 bytes of reason (control frames are <= 125),
    never a UTF-8 sequence cut in half (the peer would have to fail the connection with 1007)."""
    cut = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
    return code.to_bytes(2, "big") + cut


def close_frame(code: int, reason: str = "") -> bytes:
    """A server's close frame."""
    payload = close_payload(code, reason)
    return frame_header(OP_CLOSE, len(payload)) + payload


def apply_mask(payload: bytes | bytearray, mask: bytes) -> bytes:
    """XOR with the 4-byte mask, as one big-integer operation (no per-byte Python loop); masking and
    unmasking are the same operation."""
    n = len(payload)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


@dataclass(frozen=True, slots=True)
class Message:
    """A complete data message (text decoded), or a control frame."""

    opcode: int  # OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG
    data: str | bytes
    close_code: int | None = None  # for OP_CLOSE: the peer's code (None: it sent none)


_FRAGMENT = object()  # a non-final data frame was taken: look at the next one


class FrameReader:
    """Feed bytes; take complete messages.  Keeps at most one partial frame and one partial message.

    ``masked=True`` (the server reading a client) requires masked frames, ``masked=False`` (a client
    reading the server) requires unmasked ones.  ``utf8=False`` hands text messages over as the bytes
    received, unchecked (the benchmark client only searches them)."""

    __slots__ = ("_buffer", "_fragments", "_fragments_size", "_mask_bit", "_max", "_opcode", "_utf8")

    def __init__(self, max_message: int, *, masked: bool = True, utf8: bool = True) -> None:
        self._buffer = bytearray()
        self._max = max_message
        self._mask_bit = 0x80 if masked else 0
        self._utf8 = utf8
        self._fragments: list[bytes] = []
        self._fragments_size = 0
        self._opcode = 0  # opcode of the message being reassembled, 0 when none

    @property
    def idle(self) -> bool:
        """No partial frame or message is held: the next bytes start a new frame of a new message."""
        return not self._buffer and not self._opcode

    def feed(self, data: bytes) -> list[Message]:
        self._buffer += data
        out: list[Message] = []
        while True:
            message = self._next()
            if message is None:
                return out
            out.append(message)

    def _next(self) -> Message | None:
        """The next complete message, or None when more bytes are needed (fragments are taken in a loop:
        a client sending thousands of one-byte fragments cannot make this recurse)."""
        while True:
            result = self._frame()
            if result is not _FRAGMENT:
                return result  # type: ignore[return-value]

    def _frame(self) -> Message | object | None:
        buf = self._buffer
        if len(buf) < 2:
            return None
        first, second = buf[0], buf[1]
        fin, rsv, opcode = first & 0x80, first & 0x70, first & 0x0F
        if rsv:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "reserved bits set (no extension was negotiated)")
        if second & 0x80 != self._mask_bit:
            raise FrameError(CLOSE_PROTOCOL_ERROR,
                             "client frames must be masked" if self._mask_bit else "server frames must not be masked")
        length, offset = second & 0x7F, 2
        if length == 126:
            if len(buf) < 4:
                return None
            length, offset = int.from_bytes(buf[2:4], "big"), 4
        elif length == 127:
            if len(buf) < 10:
                return None
            length, offset = int.from_bytes(buf[2:10], "big"), 10
        control = opcode >= 0x8
        if control:
            if opcode not in (OP_CLOSE, OP_PING, OP_PONG):
                raise FrameError(CLOSE_PROTOCOL_ERROR, f"unknown control opcode {opcode}")
            if not fin or length > 125:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "control frames are final and at most 125 bytes")
        elif opcode not in (OP_CONTINUATION, OP_TEXT, OP_BINARY):
            raise FrameError(CLOSE_PROTOCOL_ERROR, f"unknown data opcode {opcode}")
        elif (self._fragments_size if opcode == OP_CONTINUATION else 0) + length > self._max:
            raise FrameError(CLOSE_TOO_BIG, f"message over {self._max} bytes")
        if self._mask_bit:
            end = offset + 4 + length
            if len(buf) < end:
                return None
            payload = apply_mask(buf[offset + 4:end], bytes(buf[offset:offset + 4]))
        else:
            end = offset + length
            if len(buf) < end:
                return None
            payload = bytes(buf[offset:end])
        del buf[:end]
        if control:
            return self._control(opcode, payload)
        if opcode == OP_CONTINUATION:
            if not self._opcode:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "continuation without a message to continue")
        elif self._opcode:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "a new message began before the last one ended")
        else:
            self._opcode = opcode
        if not fin:
            self._fragments.append(payload)
            self._fragments_size += len(payload)
            return _FRAGMENT
        if self._fragments:
            self._fragments.append(payload)
            payload = b"".join(self._fragments)
            self._fragments, self._fragments_size = [], 0
        kind, self._opcode = self._opcode, 0
        if kind == OP_TEXT and self._utf8:
            try:
                return Message(OP_TEXT, payload.decode("utf-8"))
            except UnicodeDecodeError:
                raise FrameError(CLOSE_BAD_DATA, "text message is not UTF-8") from None
        return Message(kind, payload)

    @staticmethod
    def _control(opcode: int, payload: bytes) -> Message:
        if opcode != OP_CLOSE:
            return Message(opcode, payload)
        if len(payload) == 1:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "close frame with a one-byte payload")
        code = int.from_bytes(payload[:2], "big") if payload else None
        try:
            reason = payload[2:].decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError(CLOSE_BAD_DATA, "close reason is not UTF-8") from None
        return Message(OP_CLOSE, reason, close_code=code)
