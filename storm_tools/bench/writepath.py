"""The gateway's write path alone: Python CPU per delivery from ``Outbox.push`` to the transport's ``write``.

The socket's write is stubbed (it only counts), so the kernel's share and the machine's load drop out and
what is left is the code of issue 11 item 7 (docs/benchmarks.md, "The adaptive write delay"): N outboxes
of one gateway's ``Flusher``, the same encoded event pushed to each (a broadcast), broadcasts ``--interval``
apart in wall time; only process CPU time from the first push to the end of the loop turn after it counts.
``--write-delay 0`` (the default) is the adaptive rule: events written at once inside the push; a small
fixed delay (e.g. 0.001, below the interval) sends each event through the flusher's pass, one per frame.

    python -m storm_tools.bench.writepath --outboxes 1000 --broadcasts 100 [--write-delay 0.001]

prints one JSON object (``us_per_delivery``, ``frames``, ``passes``, ``holds``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

from gateway import frames as f
from gateway.outbox import Flusher, Outbox


class _Transport:
    __slots__ = ("writes",)

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1


class _Socket:
    """The front door's ``write_frame``/``send_frame`` (gateway/frontdoor.py) over a counting transport."""

    __slots__ = ("_transport", "_writing_paused", "open")

    def __init__(self) -> None:
        self._transport = _Transport()
        self._writing_paused = False
        self.open = True

    def write_frame(self, frame: bytes) -> bool:
        if self._writing_paused or not self.open:
            return False
        self._transport.write(f.text_frame(frame))
        return True

    async def send_frame(self, frame: bytes) -> None:  # never needed: the stub's buffer is never full
        self._transport.write(f.text_frame(frame))


async def measure(outboxes: int, broadcasts: int, interval: float, write_delay: float) -> dict[str, Any]:
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m storm_tools.bench.writepath", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outboxes", type=int, default=1000)
    parser.add_argument("--broadcasts", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between broadcasts (default 0.02)")
    parser.add_argument("--write-delay", type=float, default=0.0,
                        help="STORM_WRITE_DELAY_S: 0 adaptive (default), > 0 fixed (the pass path)")
    args = parser.parse_args(argv)
    import uvloop

    print(json.dumps(uvloop.run(measure(args.outboxes, args.broadcasts, args.interval, args.write_delay))))


if __name__ == "__main__":
    main()
