"""RFC 6455 for the gateway's front door, with no I/O (ADR 0007): the HTTP upgrade request, the handshake
answer, and a frame reader/writer.  Bytes in, events out; tested without sockets (tests/unit/test_frames.py).

Only what a server needs: client frames must be masked, no extensions are negotiated (RSV bits must be 0),
control frames are at most 125 bytes and never fragmented, a message (all its fragments) is at most
``max_message`` bytes, text must be UTF-8.  A violation raises :class:`FrameError` carrying the close code
the RFC prescribes (1002 protocol error, 1007 bad UTF-8, 1009 too big).
"""

from __future__ import annotations

import base64
import hashlib
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


# --- frames --------------------------------------------------------------------------------------------


def frame_header(opcode: int, size: int) -> bytes:
    """Header of one final, unmasked server frame of ``size`` payload bytes."""
    first = 0x80 | opcode
    if size < 126:
        return bytes((first, size))
    if size < 65536:
        return bytes((first, 126)) + size.to_bytes(2, "big")
    return bytes((first, 127)) + size.to_bytes(8, "big")


def close_frame(code: int, reason: str = "") -> bytes:
    payload = code.to_bytes(2, "big") + reason.encode("utf-8")[:123]
    return frame_header(OP_CLOSE, len(payload)) + payload


def unmask(payload: bytes | bytearray, mask: bytes) -> bytes:
    """XOR with the 4-byte mask, as one big-integer operation (no per-byte Python loop)."""
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
    """Feed bytes; take complete messages.  Keeps at most one partial frame and one partial message."""

    __slots__ = ("_buffer", "_fragments", "_fragments_size", "_max", "_opcode")

    def __init__(self, max_message: int) -> None:
        self._buffer = bytearray()
        self._max = max_message
        self._fragments: list[bytes] = []
        self._fragments_size = 0
        self._opcode = 0  # opcode of the message being reassembled, 0 when none

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
        if not second & 0x80:
            raise FrameError(CLOSE_PROTOCOL_ERROR, "client frames must be masked")
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
        if len(buf) < offset + 4 + length:
            return None
        mask = bytes(buf[offset:offset + 4])
        payload = unmask(buf[offset + 4:offset + 4 + length], mask)
        del buf[:offset + 4 + length]
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
        if kind == OP_TEXT:
            try:
                return Message(OP_TEXT, payload.decode("utf-8"))
            except UnicodeDecodeError:
                raise FrameError(CLOSE_BAD_DATA, "text message is not UTF-8") from None
        return Message(OP_BINARY, payload)

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
