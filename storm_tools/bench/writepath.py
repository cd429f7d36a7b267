"""The gateway's write path alone: Python CPU per delivery from ``Outbox.push`` to the transport's ``write``.

The socket's write is stubbed (it only counts), so the kernel's share and the machine's load drop out and
what is left is the code of issue 11 item 7 (docs/benchmarks.md, "The adaptive write delay"): N outboxes
of one gateway's ``Flusher``, the same encoded event pushed to each (a broadcast), broadcasts ``--interval``
apart in wall time; only process CPU time from the first push to the end of the loop turn after it counts.
``--write-delay 0`` (the default) is the adaptive rule: events written at once inside the push; a small
fixed delay (e.g. 0.001, below the interval) sends each event through the flusher's pass, one per frame.

    python -m storm_tools.bench.writepath --outboxes 1000 --broadcasts 100 [--write-delay 0.001]

prints one JSON object (``us_per_delivery``, ``frames``, ``passes``, ``holds``).

``--write-cost-us W`` makes each stubbed write busy for W µs (the kernel's loopback ``send``: ≈ 4 µs, the
floor's cost per delivery) and broadcasts then start on a fixed schedule (``--interval`` apart, whatever
the loop did meanwhile), so the flusher sees a loop as busy as the gateway's.  It also prints what the
write rule costs in latency: ``delay_ms`` p50/p99/max from a broadcast's start to each recipient's write
(one fan-out's own length included) and ``events_per_frame``.  E.g. 1 000 subscribers at 50 and 200 msg/s:

    python -m storm_tools.bench.writepath --write-cost-us 4 --broadcasts 200 --interval 0.02
    python -m storm_tools.bench.writepath --write-cost-us 4 --broadcasts 800 --interval 0.005
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import re
import time
from typing import Any

from gateway import frames as f
from gateway.outbox import Flusher, Outbox

_OFFSET = re.compile(rb'"offset":(\d+)')


class _Transport:
    __slots__ = ("delays", "started", "writes")

    cost_s = 0.0  # --write-cost-us: each write spins this long

    def __init__(self, started: list[float] | None = None) -> None:
        self.writes = 0
        self.started = started  # broadcast i's start (perf_counter): the delays are measured from it
        self.delays: list[float] = []

    def write(self, data: bytes) -> None:
        self.writes += 1
        if self.started is not None:
            now = time.perf_counter()
            self.delays.extend(now - self.started[int(m[1])] for m in _OFFSET.finditer(data))
            end = now + self.cost_s
            while time.perf_counter() < end:
                pass


class _Socket:
    """The front door's ``write_frame``/``send_frame`` (gateway/frontdoor.py) over a counting transport."""

    __slots__ = ("_transport", "_writing_paused", "open")

    def __init__(self, started: list[float] | None = None) -> None:
        self._transport = _Transport(started)
        self._writing_paused = False
        self.open = True

    def write_frame(self, frame: bytes) -> bool:
        if self._writing_paused or not self.open:
            return False
        self._transport.write(f.text_frame(frame))
        return True

    async def send_frame(self, frame: bytes) -> None:  # never needed: the stub's buffer is never full
        self._transport.write(f.text_frame(frame))


async def measure(outboxes: int, broadcasts: int, interval: float, write_delay: float,
                  write_cost_us: float = 0.0) -> dict[str, Any]:
    if write_cost_us > 0:
        return await _measure_loaded(outboxes, broadcasts, interval, write_delay, write_cost_us)
    flusher = Flusher(write_delay, max_delay_s=0.025)
    sockets = [_Socket() for _ in range(outboxes)]
    pushes = [Outbox(s.send_frame, lambda: None, max_events=10_000, max_bytes=1 << 26, coalesce_max_bytes=65_536,
                     flusher=flusher, direct=s.write_frame).push for s in sockets]
    cpu = 0.0
    for i in range(broadcasts):
        data = b'{"type":"message","channel":"c","offset":%d,"text":"%s"}' % (i, b"x" * 280)
        start = time.process_time()
        for push in pushes:
            push(data)
        await asyncio.sleep(0)  # the pass (call_soon), or the timing of the turn that wrote at once
        await asyncio.sleep(0)
        if write_delay > 0:
            flusher.run()  # a fixed delay's pass, now: what it costs is what is measured
        cpu += time.process_time() - start
        await asyncio.sleep(interval)
    flusher.close()
    deliveries = outboxes * broadcasts
    return {"outboxes": outboxes, "broadcasts": broadcasts, "write_delay_s": write_delay,
            "us_per_delivery": round(cpu * 1e6 / deliveries, 3) if deliveries else None,
            "frames": sum(s._transport.writes for s in sockets), "passes": flusher.passes, "holds": flusher.holds}


def _pct(values: list[float], q: float) -> float:
    k = max(0, min(len(values) - 1, math.ceil(q / 100 * len(values)) - 1))
    return values[k]


async def _measure_loaded(outboxes: int, broadcasts: int, interval: float, write_delay: float,
                          write_cost_us: float) -> dict[str, Any]:
    """Broadcasts on a fixed schedule over writes that cost ``write_cost_us`` each: the rule's latency."""
    _Transport.cost_s = write_cost_us / 1e6
    try:
        return await _run_loaded(outboxes, broadcasts, interval, write_delay, write_cost_us)
    finally:
        _Transport.cost_s = 0.0


async def _run_loaded(outboxes: int, broadcasts: int, interval: float, write_delay: float,
                      write_cost_us: float) -> dict[str, Any]:
    flusher = Flusher(write_delay, max_delay_s=0.025)
    started: list[float] = []
    sockets = [_Socket(started) for _ in range(outboxes)]
    pushes = [Outbox(s.send_frame, lambda: None, max_events=10_000, max_bytes=1 << 26, coalesce_max_bytes=65_536,
                     flusher=flusher, direct=s.write_frame).push for s in sockets]
    loop = asyncio.get_running_loop()
    cpu0, t0 = time.process_time(), loop.time()
    for i in range(broadcasts):
        wait = t0 + i * interval - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        started.append(time.perf_counter())
        data = b'{"type":"message","channel":"c","offset":%d,"text":"%s"}' % (i, b"x" * 280)
        for push in pushes:
            push(data)
        await asyncio.sleep(0)
    for _ in range(200):  # what is still held leaves at the end of its hold
        if sum(len(s._transport.delays) for s in sockets) >= outboxes * broadcasts:
            break
        await asyncio.sleep(0.005)
    cpu = time.process_time() - cpu0
    flusher.close()
    delays = sorted(d for s in sockets for d in s._transport.delays)
    frames = sum(s._transport.writes for s in sockets)
    return {"outboxes": outboxes, "broadcasts": broadcasts, "interval_s": interval, "write_delay_s": write_delay,
            "write_cost_us": write_cost_us, "deliveries": len(delays),
            "us_per_delivery": round(cpu * 1e6 / len(delays), 3) if delays else None,
            "events_per_frame": round(len(delays) / frames, 2) if frames else None,
            "delay_ms": {"p50": round(_pct(delays, 50) * 1e3, 2), "p99": round(_pct(delays, 99) * 1e3, 2),
                         "max": round(delays[-1] * 1e3, 2)} if delays else None,
            "frames": frames, "passes": flusher.passes, "holds": flusher.holds}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m storm_tools.bench.writepath", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outboxes", type=int, default=1000)
    parser.add_argument("--broadcasts", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between broadcasts (default 0.02)")
    parser.add_argument("--write-delay", type=float, default=0.0,
                        help="STORM_WRITE_DELAY_S: 0 adaptive (default), > 0 fixed (the pass path)")
    parser.add_argument("--write-cost-us", type=float, default=0.0,
                        help="each write is busy this long; broadcasts on a fixed schedule; prints delay_ms")
    args = parser.parse_args(argv)
    import uvloop

    print(json.dumps(uvloop.run(measure(args.outboxes, args.broadcasts, args.interval, args.write_delay,
                                        args.write_cost_us))))


if __name__ == "__main__":
    main()
