"""The ControlRouter (storm/revocation.py) with a fake hub and fake sessions: no I/O.

A workspace's ``_control`` channel is joined once per gateway, by the first session of the workspace.  If
that join fails, the router must not keep the failed session or pretend the channel is joined: the next
session of the workspace joins it, and revocations reach it through the control event (not only through
the periodic recheck at the next presence refresh).
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from storm.errors import Unavailable
from storm.revocation import CONTROL_CHANNEL, ControlRouter, Revoke


class FakeHub:
    """Records joins and leaves; the first ``fail_joins`` joins raise Unavailable (the broker is down)."""

    def __init__(self, fail_joins: int = 0, *, join_delay: float = 0.0) -> None:
        self.fail_joins = fail_joins
        self.join_delay = join_delay
        self.listeners: dict[tuple[str, str], set[Any]] = {}
        self.join_calls = 0

    async def join(self, session: Any, workspace: str, channel: str) -> None:
        self.join_calls += 1
        if self.join_delay:
            await asyncio.sleep(self.join_delay)
        if self.fail_joins > 0:
            self.fail_joins -= 1
            raise Unavailable("broker down")
        self.listeners.setdefault((workspace, channel), set()).add(session)

    async def leave(self, session: Any, workspace: str, channel: str) -> None:
        group = self.listeners.get((workspace, channel), set())
        group.discard(session)
        if not group:
            self.listeners.pop((workspace, channel), None)

    def control_event(self, workspace: str, event: Revoke) -> None:
        for listener in list(self.listeners.get((workspace, CONTROL_CHANNEL), ())):
            listener.on_channel_event(CONTROL_CHANNEL, 0, msgspec.json.encode(event))


class FakeSession:
    def __init__(self, token_id: str = "") -> None:
        self.token_id = token_id
        self.revocations: list[str] = []
        self.withdrawals: list[str] = []

    def revoked(self, reason: str) -> None:
        self.revocations.append(reason)

    def withdrawn(self, channel: str) -> None:
        self.withdrawals.append(channel)


async def test_a_failed_first_join_leaves_nothing_behind_and_the_next_session_joins() -> None:
    hub, router = FakeHub(fail_joins=1), ControlRouter()
    first, second = FakeSession(), FakeSession()
    with pytest.raises(Unavailable):
        await router.add(hub, "acme", "dev|alice", first)
    assert router.sessions("acme") == 0  # the failed session is not held

    await router.add(hub, "acme", "dev|bob", second)
    assert ("acme", CONTROL_CHANNEL) in hub.listeners  # the second session joined the control channel
    hub.control_event("acme", Revoke(subject="dev|bob", reason="ban"))
    assert second.revocations == ["ban"] and first.revocations == []


async def test_sessions_waiting_on_a_failing_join_retry_it() -> None:
    """Two sessions of one workspace arrive together; the join the first one started fails."""
    hub, router = FakeHub(fail_joins=1, join_delay=0.01), ControlRouter()
    first, second = FakeSession(), FakeSession()
    results = await asyncio.gather(router.add(hub, "acme", "dev|alice", first),
                                   router.add(hub, "acme", "dev|bob", second), return_exceptions=True)
    assert isinstance(results[0], Unavailable) and results[1] is None
    assert hub.join_calls == 2 and router.sessions("acme") == 1
    hub.control_event("acme", Revoke(subject="dev|bob", reason="logout"))
    assert second.revocations == ["logout"]


async def test_control_is_joined_once_and_left_with_the_last_session() -> None:
    hub, router = FakeHub(), ControlRouter()
    a, b = FakeSession(token_id="t-a"), FakeSession(token_id="t-b")
    await router.add(hub, "acme", "dev|alice", a)
    await router.add(hub, "acme", "dev|alice", b)
    assert hub.join_calls == 1 and router.sessions("acme") == 2
    hub.control_event("acme", Revoke(subject="dev|alice", reason="logout", jti="t-b"))
    assert (a.revocations, b.revocations) == ([], ["logout"])
    hub.control_event("acme", Revoke(subject="dev|alice", reason="removed", channel="c-1"))
    assert a.withdrawals == b.withdrawals == ["c-1"]
    await router.remove(hub, "acme", "dev|alice", a)
    assert ("acme", CONTROL_CHANNEL) in hub.listeners
    await router.remove(hub, "acme", "dev|alice", b)
    assert ("acme", CONTROL_CHANNEL) not in hub.listeners and router.sessions("acme") == 0
