"""Deadlines count from a frame's arrival, not from when a busy gateway handles it (Session.arrived, called by
gateway/connection.py as a frame comes off the socket).

In `storm bench reconnect` (docs/benchmarks.md) the surviving gateways, busy re-admitting the killed one's
clients, closed 4 000 of their own heartbeating clients 4002 and refused auth frames 4003 that had all come
in time: the pings and auth frames waited in the connections' inboxes while the deadline sweeper judged
them by when they would be handled.
"""

from __future__ import annotations

from storm.protocol.codes import CloseCode
from storm.protocol.session import Session, State
from tests.service.test_session import ListTransport, connect


async def test_a_ping_that_arrived_in_time_keeps_the_session_open_while_it_waits(ctx, services):
    session, t = await connect(ctx, services)
    idle = ctx.config.idle_timeout_s
    services.clock.advance(idle - 1)
    session.arrived()  # a ping came off the socket; the loop has not handled it yet
    services.clock.advance(2)
    session.check_deadlines(ctx.clock.monotonic())
    assert session.state is State.OPEN and t.closed is None
    services.clock.advance(idle)  # and nothing since: idle for real
    session.check_deadlines(ctx.clock.monotonic())
    assert t.closed is not None and t.closed[0] == CloseCode.IDLE_TIMEOUT


async def test_an_auth_frame_that_arrived_in_time_is_not_an_auth_timeout(ctx, services):
    t = ListTransport()
    session = Session(ctx, t)
    limit = ctx.config.auth_timeout_s
    services.clock.advance(limit - 1)
    session.arrived()  # the auth frame came in time, waiting to be handled
    services.clock.advance(2)
    session.check_deadlines(ctx.clock.monotonic())
    assert t.closed is None  # not 4003 "no auth message in time"
    services.clock.advance(limit)  # still not handled: too slow on our side, a reconnectable close
    session.check_deadlines(ctx.clock.monotonic())
    assert t.closed is not None and t.closed[0] == CloseCode.INTERNAL
    assert [e["code"] for e in t.take("error")] == ["unavailable"]


async def test_no_frame_at_all_is_still_an_auth_timeout(ctx, services):
    t = ListTransport()
    session = Session(ctx, t)
    services.clock.advance(ctx.config.auth_timeout_s + 1)
    session.check_deadlines(ctx.clock.monotonic())
    assert t.closed is not None and t.closed[0] == CloseCode.AUTH_TIMEOUT
