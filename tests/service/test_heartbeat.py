"""Nothing on the heartbeat path waits for the database (issue 11, item 3).

A ping is answered at once, whatever the directory or the cache are doing: presence is refreshed and
access re-checked beside the sessions, by the gateway's presence keeper (storm/protocol/presence.py),
never in front of a frame.  Before the keeper, a frame that came a third of the presence TTL after the
last refresh first awaited the refresh and the role look-up; with a slow database the pong queued behind
the pool and healthy clients were closed 4002.
"""

from __future__ import annotations

import asyncio
import json

from storm.protocol.codes import CloseCode
from tests.service.test_session import connect, send


class _Stuck:
    """Awaits that never end until released: a database whose pool is exhausted."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0

    async def wait(self) -> None:
        self.calls += 1
        await self.release.wait()


async def test_a_ping_is_answered_while_the_directory_and_the_cache_are_stuck(ctx, services, monkeypatch):
    s, t = await connect(ctx, services, "alice")
    stuck = _Stuck()

    async def slow_role(*_a, **_k):
        await stuck.wait()

    async def slow_refresh(*_a, **_k):
        await stuck.wait()

    monkeypatch.setattr(services.directory, "role", slow_role)
    monkeypatch.setattr(services.cache, "presence_refresh", slow_refresh)
    monkeypatch.setattr(services.cache, "presence_refresh_many", slow_refresh, raising=False)
    for i in range(3):  # well past a third of the presence TTL each time: a refresh is due on every frame
        services.clock.advance(services.config.presence_ttl_s / 2)
        # shape, not timing: the frame completes without the stuck calls ever returning
        await asyncio.wait_for(s.receive(json.dumps({"op": "ping", "id": i})), timeout=2.0)
        (pong,) = t.take("pong")
        assert pong["id"] == i
    assert t.closed is None
    s.check_deadlines(services.clock.monotonic())  # it talked just now: not idle
    assert t.closed is None
    stuck.release.set()
    await s.closed()


async def test_the_keeper_ends_a_session_whose_access_was_lost_without_its_control_event(ctx, services):
    """The backstop the per-frame re-check used to be: a removal whose control event was lost."""
    from storm.protocol.presence import RECHECK_SLICES, PresenceKeeper

    a, ta = await connect(ctx, services, "alice")
    b, tb = await connect(ctx, services, "bob")
    await services.cache.revoke(a.workspace, "dev|bob", 600)  # a ban's list entry, its event lost
    keeper = PresenceKeeper(services.cache, services.directory, services.config.presence_ttl_s, lambda: [a, b])
    for _ in range(RECHECK_SLICES):  # each pass re-checks one slice of the users: all of them within a TTL
        await keeper.run_once()
    assert keeper.rechecks == 4  # alice and bob once each: one token and one role look-up apiece
    assert tb.closed and tb.closed[0] == CloseCode.REVOKED
    assert ta.closed is None
    await send(a, op="ping", id=1)
    assert ta.take("pong")


async def test_the_keeper_reads_the_roles_of_a_slice_in_one_store_read_per_workspace(ctx, services, monkeypatch):
    """With the store (the gateway's keeper), roles are re-checked in batches straight from it, not one
    directory look-up (a cache miss and a SQL transaction) per user; a removal is still found."""
    from storm.protocol.presence import RECHECK_SLICES, PresenceKeeper

    a, ta = await connect(ctx, services, "alice")
    b, tb = await connect(ctx, services, "bob")
    c, tc = await connect(ctx, services, "carol")
    async with services.store.unit_of_work() as uow:  # bob removed; the control event and the
        await uow.memberships.remove(b.principal.workspace.id, b.principal.user.id)  # cache forget lost
        await uow.commit()
    looked_up: list[object] = []
    role = services.directory.role

    async def counted_role(*args: object) -> object:
        looked_up.append(args)
        return await role(*args)

    monkeypatch.setattr(services.directory, "role", counted_role)
    keeper = PresenceKeeper(services.cache, services.directory, services.config.presence_ttl_s,
                            lambda: [a, b, c], store=services.store)
    for _ in range(RECHECK_SLICES):
        await keeper.run_once()
    slices = {s.principal.user.id.int % RECHECK_SLICES for s in (a, b, c)}
    assert keeper.role_reads == len(slices) and looked_up == []  # one read per pass that had users
    assert tb.closed and tb.closed[0] == CloseCode.REVOKED
    assert ta.closed is None and tc.closed is None


async def test_the_keeper_rechecks_all_tokens_of_a_workspace_in_one_cache_call(ctx, services, monkeypatch):
    """Two ``is_revoked`` per token per pass were ≈ 0.08 of a core at 50 000 held connections: the keeper asks
    ``revoked_among`` once per workspace for all of a slice's tokens, and still finds a logout (one token, by
    its ``jti``) and a ban (the subject)."""
    from storm import revocation
    from storm.protocol.presence import RECHECK_SLICES, PresenceKeeper

    sessions = [await connect(ctx, services, user) for user in ("alice", "bob", "carol", "dave")]
    (a, ta), (b, tb), (_, tc), (_, td) = sessions
    await services.cache.revoke(a.workspace, revocation.jti_key(b.token_id), 600)  # bob logged out: events lost
    await services.cache.revoke(a.workspace, "dev|carol", 600)  # carol banned
    calls: list[int] = []
    single: list[object] = []
    among = services.cache.revoked_among

    async def counted_among(workspace: str, subjects: list[str]) -> frozenset[str]:
        calls.append(len(subjects))
        return await among(workspace, subjects)

    async def no_single(*args: object) -> bool:
        single.append(args)
        return False

    monkeypatch.setattr(services.cache, "revoked_among", counted_among)
    monkeypatch.setattr(services.cache, "is_revoked", no_single)
    keeper = PresenceKeeper(services.cache, services.directory, services.config.presence_ttl_s,
                            lambda: [s for s, _ in sessions], store=services.store)
    for _ in range(RECHECK_SLICES):
        await keeper.run_once()
    slices = {s.principal.user.id.int % RECHECK_SLICES for s, _ in sessions}
    assert len(calls) == len(slices) and sum(calls) == 8 and single == []  # subject + jti of each, per slice
    assert tb.closed and tb.closed[0] == CloseCode.REVOKED and "token revoked" in tb.closed[1]
    assert tc.closed and tc.closed[0] == CloseCode.REVOKED and "access revoked" in tc.closed[1]
    assert ta.closed is None and td.closed is None
