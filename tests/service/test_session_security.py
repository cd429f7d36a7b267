"""Session controls on the embedded adapters with a manual clock: token expiry warning and 4009, refresh,
the revocation list at the handshake, per-user and per-workspace rate limits, the plan's connection quota
(docs/security.md)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from gateway.hub import Hub
from storm.adapters.auth0_identity import Auth0Identity
from storm.bootstrap import Services, auth0_settings
from storm.config import Config
from storm.ports.clock import ManualClock
from storm.protocol.codes import CloseCode
from storm.protocol.quota import CONNECTIONS_KEY
from storm.protocol.session import Session, SessionContext, State
from storm.revocation import jti_key
from storm_tools.seed import DEMO_WORKSPACE, channel_id
from tests.service.test_session import ListTransport, token
from tests.support.jwks import Jwks, auth0_config
from tests.support.services import demo_services

pytestmark = pytest.mark.security

GENERAL = channel_id(DEMO_WORKSPACE, "general")


async def _services(tmp_path: Any, **overrides: Any) -> Services:
    values: dict[str, Any] = {"store": "memory", "publish_rate": 100.0,
                              "idle_timeout_s": 1e6,
                              "publish_burst": 100}
    values.update(overrides)
    return await demo_services(Config.from_env({}, **values), ManualClock(start=time.time()))


@pytest.fixture
async def sec_services(tmp_path) -> AsyncIterator[Services]:
    svc = await _services(tmp_path)
    try:
        yield svc
    finally:
        await svc.stop()


async def _ctx(svc: Services, **kw: Any) -> tuple[SessionContext, Hub]:
    hub = Hub(svc.broker, svc.clock, sweep_interval_s=3600)
    await hub.start()
    ctx = SessionContext(config=svc.config, clock=svc.clock, broker=svc.broker, cache=svc.cache, store=svc.store,
                         identity=kw.get("identity", svc.identity), directory=svc.directory, hub=hub)
    return ctx, hub


@pytest.fixture
async def sec_ctx(sec_services) -> AsyncIterator[SessionContext]:
    c, hub = await _ctx(sec_services)
    try:
        yield c
    finally:
        await hub.stop()


async def open_session(ctx: SessionContext, tok: str) -> tuple[Session, ListTransport]:
    t = ListTransport()
    s = Session(ctx, t)
    await s.receive(json.dumps({"op": "auth", "token": tok}))
    return s, t


def publish(n: int) -> str:
    return json.dumps({"op": "publish", "id": n, "channel": GENERAL, "cmid": f"c{n}", "text": "hi"})


async def test_token_expiring_is_sent_before_exp_and_the_socket_closes_4009_at_exp(sec_ctx, sec_services):
    clock = sec_services.clock
    lead = sec_services.config.token_expiry_warning_s
    s, t = await open_session(sec_ctx, token(sec_services, ttl_s=600, now=clock.time()))
    assert s.state is State.OPEN
    clock.advance(600 - lead - 5)
    s.check_deadlines(clock.monotonic(), clock.time())  # as the hub sweeps
    assert t.take("token.expiring") == [] and t.closed is None
    await s.receive(json.dumps({"op": "ping"}))  # stay clear of the idle timeout
    clock.advance(10)
    s.check_deadlines(clock.monotonic(), clock.time())  # as the hub sweeps
    (warning,) = t.take("token.expiring")
    assert warning["expires_at"] == pytest.approx(clock.time() + lead - 5, abs=1)
    s.check_deadlines(clock.monotonic(), clock.time())  # as the hub sweeps
    assert t.take("token.expiring") == []  # warned once
    await s.receive(json.dumps({"op": "ping"}))
    clock.advance(lead)
    s.check_deadlines(clock.monotonic(), clock.time())  # as the hub sweeps
    assert t.closed and t.closed[0] == CloseCode.TOKEN_EXPIRED


async def test_refresh_with_a_fresh_token_of_the_same_user_extends_the_session(sec_ctx, sec_services):
    clock = sec_services.clock
    s, t = await open_session(sec_ctx, token(sec_services, ttl_s=120, now=clock.time()))
    fresh = token(sec_services, ttl_s=3600, now=clock.time())
    await s.receive(json.dumps({"op": "auth", "token": fresh}))
    (refreshed,) = t.take("token.refreshed")
    assert refreshed["expires_at"] == pytest.approx(clock.time() + 3600, abs=1)
    await s.receive(json.dumps({"op": "ping"}))
    clock.advance(200)  # past the first token's exp
    s.check_deadlines(clock.monotonic(), clock.time())  # as the hub sweeps
    assert t.closed is None and s.state is State.OPEN


async def test_refresh_with_another_users_or_an_invalid_token_is_refused_and_the_session_goes_on(sec_ctx, sec_services):
    clock = sec_services.clock
    s, t = await open_session(sec_ctx, token(sec_services, ttl_s=120, now=clock.time()))
    await s.receive(json.dumps({"op": "auth", "token": token(sec_services, "bob", now=clock.time())}))
    assert t.take("error")[0]["code"] == "already_authenticated"
    await s.receive(json.dumps({"op": "auth", "token": token(sec_services, ttl_s=-100, now=clock.time())}))
    assert t.take("error")[0]["code"] == "unauthenticated"
    assert s.principal is not None and s.principal.user.name == "Alice" and s.state is State.OPEN
    await s.receive(json.dumps({"op": "ping"}))
    clock.advance(121)
    s.check_deadlines(clock.monotonic(), clock.time())  # as the hub sweeps
    assert t.closed and t.closed[0] == CloseCode.TOKEN_EXPIRED  # the old expiry still applies


async def test_a_subject_on_the_revocation_list_cannot_open_a_session(sec_ctx, sec_services):
    await sec_services.cache.revoke(DEMO_WORKSPACE, "dev|bob", 60)
    _s, t = await open_session(sec_ctx, token(sec_services, "bob"))
    assert t.closed and t.closed[0] == CloseCode.REVOKED
    assert t.take("error")[0]["code"] == "unauthenticated"
    assert sec_ctx.control.sessions(DEMO_WORKSPACE) == 0  # nothing left registered
    assert await sec_services.cache.incr(DEMO_WORKSPACE, CONNECTIONS_KEY, 0) == 0


async def test_revoked_auth0_token_is_refused(sec_services, jwks: Jwks):
    """The negative matrix's `revoked` case, with a real RS256 token: its jti is on the list."""
    identity = Auth0Identity(auth0_settings(auth0_config(jwks)), wall=sec_services.clock.time)
    sec_ctx, hub = await _ctx(sec_services, identity=identity)
    now = int(sec_services.clock.time())
    try:
        good = jwks.token(sub="dev|alice", iat=now, nbf=now - 1, exp=now + 600, jti="t-ok")
        s, t = await open_session(sec_ctx, good)
        assert s.state is State.OPEN, t.events
        await sec_services.cache.revoke(DEMO_WORKSPACE, jti_key("t-revoked"), 600)
        bad = jwks.token(sub="dev|alice", iat=now, nbf=now - 1, exp=now + 600, jti="t-revoked")
        _s2, t2 = await open_session(sec_ctx, bad)
        assert t2.closed and t2.closed[0] == CloseCode.REVOKED
    finally:
        await hub.stop()


async def test_open_sessions_of_a_revoked_subject_close_4010_on_every_gateway(sec_services):
    """Two gateways (two hubs and control routers) on one broker: the control event reaches both."""
    from storm.revocation import revoke

    (ctx1, hub1), (ctx2, hub2) = await _ctx(sec_services), await _ctx(sec_services)
    try:
        a1, t1 = await open_session(ctx1, token(sec_services, "bob"))
        a2, t2 = await open_session(ctx2, token(sec_services, "bob"))
        c, tc = await open_session(ctx2, token(sec_services, "carol"))
        await revoke(sec_services.cache, sec_services.broker, DEMO_WORKSPACE, "dev|bob", reason="ban", ttl=60)
        assert t1.closed and t1.closed[0] == CloseCode.REVOKED
        assert t2.closed and t2.closed[0] == CloseCode.REVOKED
        assert tc.closed is None and c.state is State.OPEN
        for s in (a1, a2, c):
            await s.closed()
        assert ctx1.control.sessions(DEMO_WORKSPACE) == 0 and ctx2.control.sessions(DEMO_WORKSPACE) == 0
    finally:
        await hub1.stop()
        await hub2.stop()


async def test_per_user_rate_limit_spans_connections(tmp_path):
    svc = await _services(tmp_path, user_publish_rate=1.0, user_publish_burst=4)
    sec_ctx, hub = await _ctx(svc)
    try:
        a, ta = await open_session(sec_ctx, token(svc, "alice"))
        b, tb = await open_session(sec_ctx, token(svc, "alice"))
        for n in range(3):
            await a.receive(publish(n))
        await b.receive(publish(10))
        await b.receive(publish(11))  # the fifth publish of the user, on another connection
        assert len(ta.take("ack")) == 3 and len(tb.take("ack")) == 1
        (err,) = tb.take("error")
        assert err["code"] == "rate_limited" and "user" in err["message"] and err["id"] == 11
        c, tc = await open_session(sec_ctx, token(svc, "bob"))
        await c.receive(publish(20))
        assert tc.take("ack")  # another user is not affected
    finally:
        await hub.stop()
        await svc.stop()


async def test_per_workspace_rate_limit(tmp_path):
    svc = await _services(tmp_path, workspace_publish_rate=2.0)  # burst = 2 x rate
    sec_ctx, hub = await _ctx(svc)
    try:
        sessions = [await open_session(sec_ctx, token(svc, u)) for u in ("alice", "bob", "carol")]
        n = 0
        for s, _ in sessions:
            for _ in range(2):
                n += 1
                await s.receive(publish(n))
        acks = sum(len(t.take("ack")) for _, t in sessions)
        errors = [e for _, t in sessions for e in t.take("error")]
        assert acks == 4 and len(errors) == 2
        assert all(e["code"] == "rate_limited" and "workspace" in e["message"] for e in errors)
        svc.clock.advance(1.0)
        await sessions[2][0].receive(publish(99))
        assert sessions[2][1].take("ack")  # refilled
    finally:
        await hub.stop()
        await svc.stop()


async def test_plan_connection_quota_closes_4029(sec_ctx, sec_services):
    from storm.domain import PLANS

    limit = PLANS["enterprise"].max_connections  # the demo workspace's plan (storm_tools/seed.py)
    await _sessions_on_other_gateways(sec_services, limit - 1)
    s, _t = await open_session(sec_ctx, token(sec_services, "alice"))
    assert s.state is State.OPEN
    _s2, t2 = await open_session(sec_ctx, token(sec_services, "bob"))
    assert t2.closed and t2.closed[0] == CloseCode.TOO_MANY_CONNECTIONS
    assert t2.take("error")[0]["code"] == "quota_exceeded"
    await s.closed()  # a slot is given back
    s3, _t3 = await open_session(sec_ctx, token(sec_services, "bob"))
    assert s3.state is State.OPEN


async def _sessions_on_other_gateways(sec_services: Any, n: int) -> None:
    """What other gateways' live sessions leave in the cache: the counter and a presence entry each."""
    from storm.ports.cache import PresenceEntry
    from storm.protocol.quota import WORKSPACE_PRESENCE

    await sec_services.cache.incr(DEMO_WORKSPACE, CONNECTIONS_KEY, n)
    for i in range(n):
        await sec_services.cache.presence_add(DEMO_WORKSPACE, WORKSPACE_PRESENCE, f"elsewhere-{i}",
                                          PresenceEntry(f"u-{i}", f"User {i}"), 3600)


async def test_a_dead_gateways_connections_do_not_lock_the_workspace_out(sec_ctx, sec_services):
    """A gateway that died never gave its connections back: the counter says the plan is full, but the
    workspace's presence (its entries expired) says nobody is there.  The next session recounts and opens;
    the counter is healed for everyone."""
    from storm.domain import PLANS
    from storm.protocol.quota import RECOUNT_EVERY_S

    limit = PLANS["enterprise"].max_connections
    await sec_services.cache.incr(DEMO_WORKSPACE, CONNECTIONS_KEY, limit)  # counted, no presence: leftovers
    s, t = await open_session(sec_ctx, token(sec_services, "alice"))
    assert s.state is State.OPEN, t.events
    assert await sec_services.cache.incr(DEMO_WORKSPACE, CONNECTIONS_KEY, 0) == 1  # just alice now
    await _sessions_on_other_gateways(sec_services, limit - 1)  # the plan is really full now
    _s2, t2 = await open_session(sec_ctx, token(sec_services, "bob"))
    assert t2.closed and t2.closed[0] == CloseCode.TOO_MANY_CONNECTIONS  # a recount does not admit it
    await sec_services.cache.incr(DEMO_WORKSPACE, CONNECTIONS_KEY, 5)  # five more leftovers...
    _s3, t3 = await open_session(sec_ctx, token(sec_services, "bob"))
    assert t3.closed  # ...not recounted again within RECOUNT_EVERY_S: refused, the counter untouched
    assert await sec_services.cache.incr(DEMO_WORKSPACE, CONNECTIONS_KEY, 0) == limit + 5
    sec_services.clock.advance(RECOUNT_EVERY_S)
    _s4, t4 = await open_session(sec_ctx, token(sec_services, "bob"))
    assert t4.closed  # recounted: the five are taken off, and the plan is still full
    assert await sec_services.cache.incr(DEMO_WORKSPACE, CONNECTIONS_KEY, 0) == limit


async def test_a_lost_control_event_still_ends_the_session_at_the_next_presence_refresh(sec_ctx, sec_services):
    """Removal and ban normally close sockets through the control event; when it is lost (broker down),
    the gateway's presence keeper finds out at its next pass (every presence TTL / 3)."""
    from storm.domain import Role
    from storm.protocol.presence import RECHECK_SLICES, PresenceKeeper

    async with sec_services.store.unit_of_work() as uow:
        ws = await uow.workspaces.get_by_slug(DEMO_WORKSPACE)
        bob = await uow.users.get_by_subject("dev|bob")
        assert ws and bob
    b, tb = await open_session(sec_ctx, token(sec_services, "bob"))
    c, tc = await open_session(sec_ctx, token(sec_services, "carol"))
    a, ta = await open_session(sec_ctx, token(sec_services, "alice"))
    async with sec_services.store.unit_of_work() as uow:  # what the tenants API commits, minus the event
        await uow.memberships.remove(ws.id, bob.id)
        await uow.memberships.set_role(ws.id, a.principal.user.id, Role.MEMBER)
        await uow.commit()
    await sec_services.directory.forget_member(DEMO_WORKSPACE, bob.id)
    await sec_services.directory.forget_member(DEMO_WORKSPACE, a.principal.user.id)
    await sec_services.cache.revoke(DEMO_WORKSPACE, "dev|carol", 600)  # a ban's list entry, event lost
    await b.receive(json.dumps({"op": "ping", "id": 1}))
    assert tb.closed is None  # a frame looks at nothing: the gateway's presence keeper re-checks, beside it
    keeper = PresenceKeeper(sec_services.cache, sec_services.directory, sec_services.config.presence_ttl_s,
                            lambda: [a, b, c])
    for _ in range(RECHECK_SLICES):  # its passes, every STORM_PRESENCE_TTL_S / 3, a slice of the users each
        await keeper.run_once()
    await b.receive(json.dumps({"op": "ping", "id": 2}))  # closed: ignored
    assert tb.closed and tb.closed[0] == CloseCode.REVOKED
    assert tc.closed and tc.closed[0] == CloseCode.REVOKED
    assert ta.closed is None and a.principal.role is Role.MEMBER  # alice stays, with her new role
