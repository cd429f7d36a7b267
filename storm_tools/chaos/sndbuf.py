"""How much a gateway socket takes before a reader that stopped reading blocks it (chaos slow-consumers).

``python -m storm_tools.chaos.sndbuf`` opens a loopback connection whose reader clamps its receive buffer to
4 KiB before connecting and never reads (as the driver's slow readers do), writes 3 200-byte chunks from the
accepting side with asyncio's ``drain`` (as the gateway's outbox writes a frame once the socket's buffer has
drained), and prints as JSON how many bytes were accepted before ``drain`` blocked, with the accepting
socket's ``SO_SNDBUF``.  On this machine (Linux, ``net.ipv4.tcp_wmem`` max 4 MiB) the kernel autotunes the
sending side's buffer to 4 MiB and about 2.9 MB go out before anything waits in the gateway's outbox: the
outbox's 256 KiB bound of the chaos cluster is reached only after ~3.1 MB per slow reader.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

CHUNK = b"x" * 3200  # about one 3 000-character message event


async def measure(clamp_rcvbuf: int = 4096, limit_s: float = 20.0) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    accepted: asyncio.Future[asyncio.StreamWriter] = loop.create_future()

    async def handle(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.set_result(writer)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = socket.socket()
    try:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, clamp_rcvbuf)
        client.setblocking(False)
        await loop.sock_connect(client, ("127.0.0.1", port))
        writer = await accepted
        sent, started, blocked = 0, time.monotonic(), False
        while time.monotonic() - started < limit_s:
            writer.write(CHUNK)
            sent += len(CHUNK)
            try:
                await asyncio.wait_for(writer.drain(), 0.5)
            except TimeoutError:
                blocked = True
                break
        sock = writer.get_extra_info("socket")
        result = {"bytes_accepted_before_drain_blocked": sent, "blocked": blocked,
                  "sender_so_sndbuf": sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
                  "reader_so_rcvbuf": client.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)}
        writer.transport.abort()
        return result
    finally:
        client.close()
        server.close()
        await server.wait_closed()


def main() -> None:
    print(json.dumps(asyncio.run(measure())))


if __name__ == "__main__":
    main()
