"""The benches' WebSocket client splits reads of several complete text frames itself
(storm_tools/bench/wsclient.py; docs/benchmarks.md, "The client"): order, lengths and what follows."""

from __future__ import annotations

from typing import Any

from gateway import frames as f
from storm_tools.bench.wsclient import WSClient


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False


class _CountingReader:
    def __init__(self, inner: f.FrameReader) -> None:
        self.inner = inner
        self.fed = 0

    @property
    def idle(self) -> bool:
        return self.inner.idle

    def feed(self, data: bytes) -> Any:
        self.fed += 1
        return self.inner.feed(data)


class _Client(WSClient):
    def __init__(self) -> None:
        super().__init__("127.0.0.1", 1)
        self.got: list[bytes] = []
        self.transport = _Transport()
        self._head = None  # past the handshake
        self._reader = _CountingReader(self._reader)  # type: ignore[assignment]

    @property
    def fed(self) -> int:
        return self._reader.fed  # type: ignore[attr-defined,no-any-return]

    def on_message(self, payload: bytes, binary: bool) -> None:
        self.got.append(payload)


def _text(payload: bytes) -> bytes:
    return f.frame_header(f.OP_TEXT, len(payload)) + payload


async def test_a_read_of_several_frames_is_split_without_the_reader_in_order() -> None:
    c = _Client()
    payloads = [b"a" * 5, b"b" * 300, b"", b"c" * 125, b"d" * 126, b"e" * 65535]
    c.data_received(b"".join(_text(p) for p in payloads))
    assert c.got == payloads and c.frames == len(payloads)
    assert c.fed == 0


async def test_what_the_fast_path_cannot_split_goes_to_the_reader_after_the_frames_before_it() -> None:
    c = _Client()
    big = b"x" * 70_000  # a 64-bit length
    ping = f.frame_header(f.OP_PING, 2) + b"hi"
    whole = _text(b"one") + ping + _text(b"two") + _text(big) + _text(b"three")
    c.data_received(whole[:-2])  # the last frame arrives in two reads
    c.data_received(whole[-2:])
    assert c.got == [b"one", b"two", big, b"three"]
    assert c.transport.written and c.fed == 2  # the pong was sent; the reader took the rest
