"""The per-connection outbox: bounded, coalescing, lazy writer (gateway/outbox.py, ADR 0002)."""

from __future__ import annotations

import asyncio

from gateway.outbox import Outbox


class SlowSocket:
    """Records frames; each send takes one loop turn per `delay_turns`, like a socket that drains slowly."""

    def __init__(self, delay_turns: int = 0, fail: bool = False) -> None:
        self.frames: list[bytes] = []
        self.delay_turns = delay_turns
        self.fail = fail

    async def send(self, frame: bytes) -> None:
        for _ in range(self.delay_turns):
            await asyncio.sleep(0)
        if self.fail:
            raise ConnectionResetError("peer gone")
        self.frames.append(frame)


def make(sock: SlowSocket, overflow: list[int], **kw: int) -> Outbox:
    opts = {"max_events": 100, "max_bytes": 10_000, "coalesce_max_bytes": 1000} | kw
    return Outbox(sock.send, lambda: overflow.append(1), **opts)


async def test_events_pushed_together_leave_in_one_frame_in_order():
    sock, overflow = SlowSocket(), []
    box = make(sock, overflow)
    for i in range(5):
        assert box.push(b'{"n":%d}' % i)
    await box.flush(1.0)
    assert sock.frames == [b'{"n":0}\n{"n":1}\n{"n":2}\n{"n":3}\n{"n":4}']
    assert not overflow


async def test_events_arriving_while_the_socket_drains_are_coalesced():
    sock, overflow = SlowSocket(delay_turns=3), []
    box = make(sock, overflow)
    box.push(b"a")
    await asyncio.sleep(0)  # the writer takes "a" and is now busy sending it
    for ch in (b"b", b"c", b"d"):
        box.push(ch)
    await box.flush(1.0)
    assert sock.frames == [b"a", b"b\nc\nd"]


async def test_frames_never_exceed_the_coalesce_limit_unless_one_event_is_larger():
    sock, overflow = SlowSocket(), []
    box = make(sock, overflow, coalesce_max_bytes=10)
    for part in (b"1234", b"5678", b"abcd", b"x" * 25):
        box.push(part)
    await box.flush(1.0)
    assert sock.frames == [b"1234\n5678", b"abcd", b"x" * 25]
    assert b"\n".join(sock.frames).split(b"\n") == [b"1234", b"5678", b"abcd", b"x" * 25]


async def test_overflow_by_count_closes_and_drops_the_queue():
    sock, overflow = SlowSocket(delay_turns=50), []
    box = make(sock, overflow, max_events=3)
    results = [box.push(b"e") for _ in range(5)]
    assert results == [True, True, True, False, False]
    assert overflow == [1] and box.closed and len(box) == 0


async def test_overflow_by_bytes():
    sock, overflow = SlowSocket(delay_turns=50), []
    box = make(sock, overflow, max_bytes=10)
    assert box.push(b"12345")
    assert not box.push(b"123456")
    assert overflow == [1]


async def test_idle_connection_holds_no_writer_task():
    sock, overflow = SlowSocket(), []
    box = make(sock, overflow)
    box.push(b"x")
    await box.flush(1.0)
    await asyncio.sleep(0)
    assert box._writer is None


async def test_a_failed_send_closes_the_outbox_quietly():
    sock, overflow = SlowSocket(fail=True), []
    box = make(sock, overflow)
    box.push(b"x")
    await box.flush(1.0)
    assert box.closed and not box.push(b"y")
