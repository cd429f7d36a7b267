"""The floor: the least a Python WebSocket broadcaster can do per delivery (docs/benchmarks.md).

A bare asyncio + uvloop server over the one RFC 6455 codec (:mod:`gateway.frames`, standard library only:
the handshake and the frame reader the gateway's front door uses, nothing else of the gateway).  It speaks
just enough of STORM's protocol for the bench client to work unchanged:

* ``{"op":"auth",...}``      -> ``{"type":"hello","v":1}`` (the token is not checked)
* ``{"op":"subscribe",...}`` -> ``{"type":"subscribed","channel":C,"offset":N}``; the socket joins C
* ``{"op":"publish",...}``   -> every subscriber of C gets ``{"offset":N,"type":"message",<the publish
  frame's fields>}`` and the publisher gets ``{"type":"ack","id":K,"offset":N}``

Honest by construction: for each publish the event frame (header + payload) is encoded once and written
with one ``transport.write`` per subscriber; nothing is coalesced, batched or skipped.  Run it with
``python -m storm_tools.bench.floor --host 127.0.0.1 --port 9000``; it stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import msgspec

from gateway import frames as f
from storm_tools.bench.procs import raise_nofile

_decode = msgspec.json.Decoder().decode
MAX_FRAME = 1 << 20


class Floor:
    """Channel -> subscribed connections, and the offset counter."""

    def __init__(self) -> None:
        self.channels: dict[str, set[FloorConnection]] = {}
        self.offset = 0
        self.publishes = 0
        self.deliveries = 0

    def publish(self, channel: str, payload: bytes) -> int:
        self.offset += 1
        subs = self.channels.get(channel)
        if subs:
            body = b'{"offset":%d,"type":"message",%s' % (self.offset, payload[1:])
            frame = f.frame_header(f.OP_TEXT, len(body)) + body  # encoded once per message
            for conn in subs:
                conn.transport.write(frame)  # one write per subscriber, never coalesced
            self.deliveries += len(subs)
        self.publishes += 1
        return self.offset


class FloorConnection(asyncio.Protocol):
    __slots__ = ("_head", "_reader", "channels", "floor", "transport")

    def __init__(self, floor: Floor) -> None:
        self.floor = floor
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.channels: list[str] = []
        self._head: bytearray | None = bytearray()  # the request head until the upgrade, then None
        self._reader = f.FrameReader(MAX_FRAME, utf8=False)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        for ch in self.channels:
            subs = self.floor.channels.get(ch)
            if subs is not None:
                subs.discard(self)
        self.channels = []

    def data_received(self, data: bytes) -> None:
        if self._head is not None:
            self._head += data
            try:
                request = f.parse_head(self._head)
            except f.HeadTooLarge:
                self.transport.abort()
                return
            if request is None:
                return
            if f.handshake_problem(request) is not None:
                self.transport.write(f.http_response(400, "Bad Request", b""))
                self.transport.close()
                return
            self.transport.write(f.switching_protocols(request))
            data, self._head = bytes(self._head[request.head_size:]), None
        try:
            messages = self._reader.feed(data)
        except f.FrameError:  # unmasked, oversized...: the benches never send such frames
            self.transport.abort()
            return
        for message in messages:
            op, payload = message.opcode, message.data
            if op == f.OP_CLOSE:  # its data is the reason, as text
                code = message.close_code
                self.transport.write(f.frame_header(f.OP_CLOSE, 0) if code is None else f.close_frame(code))
                self.transport.close()
                return
            assert isinstance(payload, bytes)  # utf8=False: text stays bytes
            if op == f.OP_TEXT:
                self._command(payload)
            elif op == f.OP_PING:
                self.transport.write(f.frame_header(f.OP_PONG, len(payload)) + payload)

    def _send(self, body: bytes) -> None:
        self.transport.write(f.frame_header(f.OP_TEXT, len(body)) + body)

    def _command(self, payload: bytes) -> None:
        try:
            cmd = _decode(payload)
            op = cmd["op"]
        except (msgspec.DecodeError, KeyError, TypeError):
            self._send(b'{"type":"error","code":"malformed","message":"bad frame"}')
            return
        rid = cmd.get("id")
        if op == "publish":
            offset = self.floor.publish(str(cmd.get("channel")), payload)
            self._send(b'{"type":"ack","id":%d,"offset":%d}' % (rid or 0, offset))
        elif op == "subscribe":
            channel = str(cmd.get("channel"))
            subs = self.floor.channels.setdefault(channel, set())
            if self not in subs:
                subs.add(self)
                self.channels.append(channel)
            self._send(b'{"type":"subscribed","id":%d,"channel":"%s","offset":%d}'
                       % (rid or 0, channel.encode(), self.floor.offset))
        elif op == "auth":
            self._send(b'{"type":"hello","v":1}')
        elif op == "ping":
            self._send(b'{"type":"pong","id":%d}' % (rid or 0))


async def serve(host: str, port: int) -> None:
    floor = Floor()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    server = await loop.create_server(lambda: FloorConnection(floor), host, port, backlog=4096)
    print(f"floor listening on {host}:{port}", file=sys.stderr, flush=True)
    async with server:
        await stop.wait()
    print(f"floor stopped: {floor.publishes} publishes, {floor.deliveries} deliveries", file=sys.stderr,
          flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m storm_tools.bench.floor", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    raise_nofile()
    import uvloop

    uvloop.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
