"""The floor: the least a Python WebSocket broadcaster can do per delivery (docs/benchmarks.md).

A bare asyncio + uvloop server with its own minimal handshake and frame parser.  It speaks just enough of
STORM's protocol for the bench client to work unchanged:

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
import struct
import sys

import msgspec

from storm_tools.bench.procs import raise_nofile
from storm_tools.bench.wsclient import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT, accept_key, encode_frame, mask_payload

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
            frame = encode_frame(OP_TEXT, body, mask=False)  # encoded once per message
            for conn in subs:
                conn.transport.write(frame)  # one write per subscriber, never coalesced
            self.deliveries += len(subs)
        self.publishes += 1
        return self.offset


class FloorConnection(asyncio.Protocol):
    __slots__ = ("_buf", "_handshaking", "channels", "floor", "transport")

    def __init__(self, floor: Floor) -> None:
        self.floor = floor
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.channels: list[str] = []
        self._buf = b""
        self._handshaking = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        for ch in self.channels:
            subs = self.floor.channels.get(ch)
            if subs is not None:
                subs.discard(self)
        self.channels = []

    def data_received(self, data: bytes) -> None:
        if self._buf:
            data = self._buf + data
            self._buf = b""
        if self._handshaking:
            end = data.find(b"\r\n\r\n")
            if end < 0:
                if len(data) > 16384:
                    self.transport.abort()
                else:
                    self._buf = data
                return
            if not self._handshake(data[:end]):
                return
            data = data[end + 4:]
        pos, n = 0, len(data)
        while n - pos >= 6:
            b0, b1 = data[pos], data[pos + 1]
            if not b1 & 0x80 or b0 & 0x70:  # client frames must be masked; no extensions
                self.transport.abort()
                return
            length = b1 & 0x7F
            start = pos + 2
            if length == 126:
                if n - pos < 8:
                    break
                length = struct.unpack_from("!H", data, start)[0]
                start += 2
            elif length == 127:
                if n - pos < 14:
                    break
                length = struct.unpack_from("!Q", data, start)[0]
                start += 8
            if length > MAX_FRAME:
                self.transport.abort()
                return
            stop = start + 4 + length
            if stop > n:
                break
            payload = mask_payload(data[start + 4:stop], data[start:start + 4])
            pos = stop
            opcode = b0 & 0x0F
            if opcode == OP_TEXT:
                self._command(payload)
            elif opcode == OP_PING:
                self.transport.write(encode_frame(OP_PONG, payload, mask=False))
            elif opcode == OP_CLOSE:
                self.transport.write(encode_frame(OP_CLOSE, payload[:2], mask=False))
                self.transport.close()
                return
            elif opcode != OP_PONG:  # fragmented client frames are not needed by the benches
                self.transport.abort()
                return
        if pos < n:
            self._buf = data[pos:]

    def _handshake(self, head: bytes) -> bool:
        key = b""
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-key":
                key = value.strip()
        if not key:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n")
            self.transport.close()
            return False
        self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n" % accept_key(key))
        self._handshaking = False
        return True

    def _send(self, body: bytes) -> None:
        self.transport.write(encode_frame(OP_TEXT, body, mask=False))

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
