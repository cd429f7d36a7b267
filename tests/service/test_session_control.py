"""The revocation path of open sessions when the workspace's ``_control`` join fails (storm/revocation.py).

The first session of a workspace on a gateway joins the workspace's ``_control`` channel.  When that join
fails (the broker is down), the session is refused with 1011, and the next session of the workspace must
join the channel itself: a revocation then reaches it through the control event at once, not only at its
next presence refresh (tests/unit/test_control_router.py has the router alone).
"""

from __future__ import annotations

from typing import Any

from storm.errors import Unavailable
from storm.protocol.codes import CloseCode
from storm.protocol.session import Session, SessionContext, State
from storm.revocation import CONTROL_CHANNEL, revoke
from storm_tools.seed import DEMO_WORKSPACE
from tests.service.test_session import ListTransport, send, token


class FirstControlJoinFails:
    """The gateway's hub, except that the first join of a ``_control`` channel raises (the broker is down)."""

    def __init__(self, hub: Any) -> None:
        self._hub = hub
        self.failed = False

    async def join(self, session: Any, workspace: str, channel: str) -> None:
        if channel == CONTROL_CHANNEL and not self.failed:
            self.failed = True
            raise Unavailable("broker unavailable")
        await self._hub.join(session, workspace, channel)

    async def leave(self, session: Any, workspace: str, channel: str) -> None:
        await self._hub.leave(session, workspace, channel)

    def head(self, workspace: str, channel: str) -> int | None:
        return self._hub.head(workspace, channel)  # type: ignore[no-any-return]

    def saw_head(self, workspace: str, channel: str, head: int) -> None:
        self._hub.saw_head(workspace, channel, head)

    async def fetch_head(self, workspace: str, channel: str) -> int:
        return await self._hub.fetch_head(workspace, channel)  # type: ignore[no-any-return]


async def test_after_a_failed_control_join_the_next_session_still_gets_revocations_at_once(services, hub):
    s = services
    ctx = SessionContext(config=s.config, clock=s.clock, broker=s.broker, cache=s.cache, store=s.store,
                         identity=s.identity, directory=s.directory, hub=FirstControlJoinFails(hub))
    ta = ListTransport()
    alice = Session(ctx, ta)
    await send(alice, op="auth", token=token(services, "alice"))
    assert alice.state is State.CLOSED and ta.closed and ta.closed[0] == CloseCode.INTERNAL
    assert [e["code"] for e in ta.take("error")] == ["unavailable"]
    assert ctx.control.sessions(DEMO_WORKSPACE) == 0

    tb = ListTransport()
    bob = Session(ctx, tb)
    await send(bob, op="auth", token=token(services, "bob"))
    assert bob.state is State.OPEN, tb.events
    # a removal puts nothing on the revocation list: only the control event can close the socket now
    await revoke(s.cache, s.broker, DEMO_WORKSPACE, "dev|bob", reason="removed")
    assert tb.closed and tb.closed[0] == CloseCode.REVOKED
    assert tb.take("error")[-1]["message"] == "access revoked (removed)"
