"""The Pulsar admin client works when a frame's handling runs eagerly, outside any task.

Found by the `pulsar-restart` chaos experiment (22:11 UTC run): the gateway then handled a frame in the
caller's stack up to its first wait (gateway/outbox.py, ``drive``; 6c0aa76, since reverted in 0a211ba for a
like failure of SQLAlchemy's pool), and a subscribe reads the channel's head through the admin API.  When
Pulsar went down, httpcore had to close the dead pooled connection first, and its cancellation shield needs
the current task: the subscribe failed with a TypeError or RuntimeError ("session bug", answered
`internal`).  The admin client now makes each call in a task of its own, whoever drives its caller.
"""

from __future__ import annotations

import asyncio

from gateway.outbox import drive
from storm.adapters.pulsar_admin import Position, PulsarAdmin


async def _closing_server() -> asyncio.Server:
    """Answers one request per connection, then closes it (as a broker going down drops kept-alive ones)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b'{"ledgerId": 5, "entryId": 7}'
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                     % (len(body), body))
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_an_admin_call_driven_eagerly_survives_a_dropped_pooled_connection() -> None:
    server = await _closing_server()
    port = server.sockets[0].getsockname()[1]
    admin = PulsarAdmin(f"http://127.0.0.1:{port}", "standalone")
    await admin.start()
    try:
        assert await admin.last_position("t", "c") == Position(5, 7)
        await asyncio.sleep(0.2)  # the server has closed the kept-alive connection by now
        got: list[Position | None] = []

        async def subscribe_like() -> None:  # as a session's subscribe reads the head
            got.append(await admin.last_position("t", "c"))

        task = drive(subscribe_like())
        if task is not None:
            await task
        assert got == [Position(5, 7)]
    finally:
        await admin.close()
        server.close()
        await server.wait_closed()


async def test_a_transport_that_fails_inside_anyio_is_the_broker_unavailable_not_a_crash() -> None:
    """storm day (100 000 users, a Pulsar restart) answered 3 subscribes `internal`: a connection dropped as it
    opened left anyio without a socket, and httpcore raised AttributeError ('getpeername') out of httpx."""
    import httpx
    import pytest

    from storm.adapters.pulsar_admin import AdminError
    from storm.errors import Unavailable

    def broken(request: httpx.Request) -> httpx.Response:
        raise AttributeError("'NoneType' object has no attribute 'getpeername'")

    admin = PulsarAdmin("http://127.0.0.1:9", "standalone")
    await admin.start()
    await admin.close()
    admin._http = httpx.AsyncClient(base_url="http://127.0.0.1:9", transport=httpx.MockTransport(broken))
    try:
        with pytest.raises(AdminError) as caught:
            await admin.last_position("t", "c")
        assert isinstance(caught.value, Unavailable) and "getpeername" in str(caught.value)
    finally:
        await admin.close()
