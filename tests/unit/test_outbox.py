"""The per-connection outbox and the gateway's flusher: bounded, coalescing, no task per connection
(gateway/outbox.py, ADR 0002, ADR 0006)."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.outbox import ENTER_DUTY, EXIT_DUTY, Flusher, Outbox, drive


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


def make(sock: SlowSocket, overflow: list[int], **kw: Any) -> Outbox:
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
    assert box._writer is None and not box._marked


async def test_a_failed_send_closes_the_outbox_quietly():
    sock, overflow = SlowSocket(fail=True), []
    box = make(sock, overflow)
    box.push(b"x")
    await box.flush(1.0)
    assert box.closed and not box.push(b"y")


# -- the gateway's flusher: one pass for every dirty outbox, no task per connection -----------------------
async def test_events_within_the_write_delay_leave_as_one_frame_after_it():
    flusher = Flusher(write_delay_s=0.3)
    sock, overflow = SlowSocket(), []
    box = make(sock, overflow, flusher=flusher)
    loop = asyncio.get_running_loop()
    start = loop.time()
    box.push(b"a")
    await asyncio.sleep(0)
    box.push(b"b")
    await asyncio.sleep(0)
    assert sock.frames == []  # held for the write delay, not written on the next loop turn
    while not sock.frames and loop.time() - start < 5:
        await asyncio.sleep(0.01)
    assert sock.frames == [b"a\nb"] and loop.time() - start >= 0.3


async def test_a_send_that_completes_at_once_needs_no_task():
    flusher = Flusher()
    boxes = [make(SlowSocket(), [], flusher=flusher) for _ in range(50)]
    before = len(asyncio.all_tasks())
    for box in boxes:
        box.push(b"x")
    assert len(asyncio.all_tasks()) == before
    flusher.run()
    assert len(asyncio.all_tasks()) == before
    assert [box.frames_sent for box in boxes] == [1] * 50


class GatedSocket:
    """A socket whose sends wait until the test opens the gate (a reader that stopped reading)."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.gate = asyncio.get_running_loop().create_future()

    async def send(self, frame: bytes) -> None:
        await self.gate
        self.frames.append(frame)


async def test_a_blocked_socket_does_not_hold_up_the_others_and_keeps_its_order():
    flusher = Flusher()
    slow, fast = GatedSocket(), SlowSocket()
    slow_box = make(slow, [], flusher=flusher)  # type: ignore[arg-type]
    fast_box = make(fast, [], flusher=flusher)
    slow_box.push(b"s1")
    fast_box.push(b"f1")
    flusher.run()
    assert fast.frames == [b"f1"] and slow.frames == []
    slow_box.push(b"s2")
    slow_box.push(b"s3")
    fast_box.push(b"f2")
    flusher.run()
    assert fast.frames == [b"f1", b"f2"] and slow.frames == []
    slow.gate.set_result(None)
    await slow_box.flush(1.0)
    assert slow.frames == [b"s1", b"s2\ns3"]


async def test_discard_cancels_a_waiting_send():
    sock = GatedSocket()
    box = make(sock, [])  # type: ignore[arg-type]
    box.push(b"x")
    await asyncio.sleep(0)
    writer = box._writer
    assert writer is not None
    box.discard()
    await asyncio.sleep(0)
    assert writer.cancelled() and sock.frames == []


async def test_direct_writes_are_used_until_refused_then_the_send_path_keeps_the_order():
    written: list[bytes] = []
    accept = [True]

    def direct(frame: bytes) -> bool:
        if accept[0]:
            written.append(frame)
        return accept[0]

    sock, flusher = GatedSocket(), Flusher()
    box = make(sock, [], flusher=flusher, coalesce_max_bytes=2, direct=direct)  # type: ignore[arg-type]
    box.push(b"a")
    flusher.run()
    assert written == [b"a"] and sock.frames == []
    accept[0] = False  # e.g. the transport's buffer is full: wait for it through the server's send
    box.push(b"bb")
    box.push(b"cc")
    flusher.run()
    accept[0] = True
    box.push(b"dd")
    flusher.run()
    assert written == [b"a"]  # nothing overtakes the frame waiting in send
    sock.gate.set_result(None)
    await box.flush(1.0)
    assert sock.frames == [b"bb"] and written == [b"a", b"cc", b"dd"]


async def test_drive_finishes_a_coroutine_that_had_to_wait():
    seen: list[str] = []

    async def two_steps() -> str:
        seen.append("first")
        await asyncio.sleep(0)
        seen.append("second")
        return "done"

    task = drive(two_steps())
    assert seen == ["first"] and task is not None
    assert await task == "done" and seen == ["first", "second"]

    async def one_step() -> None:
        seen.append("sync")

    assert drive(one_step()) is None and seen[-1] == "sync"


# -- the adaptive write delay (STORM_WRITE_DELAY_S=0): at once while the loop has time, held under load ------
class DirectLog:
    """A socket's ``write_frame``: records what was written at once (False when refused)."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.accept = True

    def __call__(self, frame: bytes) -> bool:
        if self.accept:
            self.frames.append(frame)
        return self.accept


class Ticks:
    """A manual clock for the flusher's timing of its work."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_push_is_written_at_once_while_the_loop_has_time() -> None:
    flusher = Flusher(0.0, max_delay_s=0.025)
    flusher.clock = Ticks()  # the turn takes no time at all
    sock, direct = SlowSocket(), DirectLog()
    box = make(sock, [], flusher=flusher, direct=direct)
    assert box.push(b"a")
    assert direct.frames == [b"a"] and len(box) == 0 and not box._marked  # in the push: no pass, no list
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the turn is timed on the next one: it was short, so writes stay at once
    assert flusher.immediate and flusher.holds == 0
    assert box.push(b"b") and direct.frames == [b"a", b"b"] and flusher.passes == 0


async def busy_turns(box: Outbox, flusher: Flusher, ticks: Ticks, work: float, *, limit: int = 10) -> list[bytes]:
    """Loop turns back to back, each writing one event at once and busy for ``work`` seconds, until the
    flusher holds writes (the loop has no time left); returns what was pushed."""
    pushed: list[bytes] = []
    while flusher.immediate and len(pushed) < limit:
        data = b"t%d" % len(pushed)
        box.push(data)
        pushed.append(data)
        ticks.now += work
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the turn is timed on the next one
    return pushed


async def test_a_long_turn_alone_is_no_load_writes_stay_at_once() -> None:
    # one broadcast to many sockets takes 7 ms, the next comes 20 ms later (1 000 subscribers at 50 msg/s):
    # the loop has time, so every event is written at once (a hold would only add latency)
    flusher = Flusher(0.0, max_delay_s=0.025)
    flusher.clock = ticks = Ticks()
    direct = DirectLog()
    box = make(SlowSocket(), [], flusher=flusher, direct=direct)
    for i in range(20):
        box.push(b"%d" % i)
        ticks.now += 0.007  # the turn that wrote
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        ticks.now += 0.013  # idle until the next
    assert direct.frames == [b"%d" % i for i in range(20)]
    assert flusher.immediate and flusher.holds == 0 and flusher.passes == 0
    assert 0.2 < flusher.duty < ENTER_DUTY


async def test_a_burst_split_over_turns_counts_as_its_total_not_as_a_full_loop() -> None:
    # what the gateway does per message: a short turn (the ack, say) and right after it the fan-out's long one;
    # the second starts 0.3 ms after the first, yet the loop is busy 6.3 ms of every 20
    flusher = Flusher(0.0, max_delay_s=0.025)
    flusher.clock = ticks = Ticks()
    direct = DirectLog()
    box = make(SlowSocket(), [], flusher=flusher, direct=direct)
    for i in range(30):
        for part, busy in (("a", 0.0003), ("b", 0.006)):
            box.push(b"%d%s" % (i, part.encode()))
            ticks.now += busy
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        ticks.now += 0.0137
    assert flusher.holds == 0 and len(direct.frames) == 60 and flusher.duty < ENTER_DUTY


async def test_a_busy_loop_holds_writes_which_then_leave_coalesced_in_order() -> None:
    flusher = Flusher(0.0, max_delay_s=0.2)
    flusher.clock = ticks = Ticks()
    direct = DirectLog()
    box = make(SlowSocket(), [], flusher=flusher, direct=direct)
    loop = asyncio.get_running_loop()
    pushed = await busy_turns(box, flusher, ticks, 0.03)  # turns of 30 ms back to back: no time left
    assert not flusher.immediate and flusher.holds == 1 and 1 < len(pushed) < 10  # held for about 3 x 30 ms
    start = loop.time()
    for data in (b"2", b"3", b"4"):
        box.push(data)
    assert direct.frames == pushed and len(box) == 3  # queued, not written
    while len(direct.frames) == len(pushed) and loop.time() - start < 2:
        await asyncio.sleep(0.005)
    assert direct.frames == [*pushed, b"2\n3\n4"]  # one frame for what the hold gathered, in order
    while not flusher.immediate and loop.time() - start < 2:  # a pass with nothing to write ends the hold
        await asyncio.sleep(0.005)
    assert flusher.immediate
    box.push(b"5")
    assert direct.frames[-1] == b"5"


async def test_the_hold_never_exceeds_the_cap() -> None:
    flusher = Flusher(0.0, max_delay_s=0.05)
    flusher.clock = ticks = Ticks()
    direct = DirectLog()
    box = make(SlowSocket(), [], flusher=flusher, direct=direct)
    loop = asyncio.get_running_loop()
    pushed = await busy_turns(box, flusher, ticks, 0.2)  # turns of 200 ms would ask for a 600 ms hold
    assert not flusher.immediate
    start = loop.time()
    box.push(b"2")
    while len(direct.frames) == len(pushed) and loop.time() - start < 2:
        await asyncio.sleep(0.005)
    assert direct.frames == [*pushed, b"2"] and loop.time() - start < 0.3  # not the 600 ms asked for


async def test_nothing_is_written_at_once_past_queued_events_or_a_waiting_send() -> None:
    flusher = Flusher(0.0)
    sock, direct = GatedSocket(), DirectLog()
    box = make(sock, [], flusher=flusher, direct=direct)  # type: ignore[arg-type]
    direct.accept = False  # the transport's buffer is full: the frame waits in the server's send
    box.push(b"a")
    assert direct.frames == [] and len(box) == 1
    flusher.run()
    assert box._writer is not None
    direct.accept = True
    box.push(b"b")  # a send is waiting: queued behind it, not written at once
    assert direct.frames == [] and len(box) == 1
    sock.gate.set_result(None)
    await box.flush(1.0)
    assert sock.frames == [b"a"] and direct.frames == [b"b"]


async def test_the_bound_holds_for_writes_at_once_too() -> None:
    flusher = Flusher(0.0)
    overflow: list[int] = []
    direct = DirectLog()
    box = make(SlowSocket(), overflow, flusher=flusher, direct=direct, max_bytes=10)
    assert not box.push(b"x" * 11)  # larger than the whole bound: 4008, never written
    assert overflow == [1] and box.closed and direct.frames == []


async def test_a_fixed_write_delay_writes_nothing_at_once() -> None:
    flusher = Flusher(0.05)
    direct = DirectLog()
    box = make(SlowSocket(), [], flusher=flusher, direct=direct)
    box.push(b"a")
    box.push(b"b")
    assert direct.frames == [] and not flusher.immediate
    await asyncio.sleep(0.1)
    assert direct.frames == [b"a\nb"]


async def test_under_steady_load_a_hold_shrinks_by_half_per_pass_and_ends_on_an_empty_pass() -> None:
    flusher = Flusher(0.0, max_delay_s=0.2)
    flusher.clock = ticks = Ticks()
    direct = DirectLog()
    box = make(SlowSocket(), [], flusher=flusher, direct=direct)
    loop = asyncio.get_running_loop()
    pushed = await busy_turns(box, flusher, ticks, 0.02)  # busy turns: a hold of 60 ms
    assert not flusher.immediate
    box.push(b"2")
    start = loop.time()
    while len(direct.frames) == len(pushed) and loop.time() - start < 2:
        await asyncio.sleep(0.002)
    # the pass took no time, yet the loop just was busy: the next hold is half the last, not nothing
    assert direct.frames == [*pushed, b"2"] and not flusher.immediate and flusher.holds == 2
    box.push(b"3")
    assert direct.frames == [*pushed, b"2"] and len(box) == 1  # still held
    while not flusher.immediate and loop.time() - start < 2:
        await asyncio.sleep(0.002)
    assert direct.frames == [*pushed, b"2", b"3"]  # and the empty pass after it went back to writing at once
    box.push(b"4")
    assert direct.frames[-1] == b"4"


async def test_holds_end_when_the_load_is_gone_even_if_every_pass_has_something_to_write() -> None:
    # after a busy spell, events keep coming at 50/s and each pass writes one per connection quickly: the
    # duty falls, so writing at once resumes (before the fix, only an empty pass ended the holds, and at
    # 50 msg/s with holds near 20 ms no pass was ever empty: every event waited for one)
    flusher = Flusher(0.0, max_delay_s=0.025)
    flusher.clock = ticks = Ticks()
    direct = DirectLog()
    box = make(SlowSocket(), [], flusher=flusher, direct=direct)
    loop = asyncio.get_running_loop()
    pushed = await busy_turns(box, flusher, ticks, 0.01)
    assert not flusher.immediate
    start = loop.time()
    for i in range(10):
        if flusher.immediate:
            break
        box.push(b"p%d" % i)
        ticks.now += 0.02  # 20 ms between events; the pass itself takes no time
        while len(box) and loop.time() - start < 2:
            await asyncio.sleep(0.001)
    assert flusher.immediate and flusher.duty < EXIT_DUTY and i <= 4
    box.push(b"now")
    assert direct.frames[-1] == b"now" and direct.frames[:len(pushed)] == pushed
