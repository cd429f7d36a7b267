"""A handshake that fails on a dependency, not on the token, is answered 1011 ``unavailable`` (retried by
clients), never 4001 ``unauthenticated`` (final).

`storm day`'s 10 000-user run (docs/storm-day.md) counted 6 806 ``unauthenticated`` refusals of valid tokens,
almost all during its Hazelcast loss: the directory's cache raised ``Unavailable`` and the session answered
it as a bad token.  The same holds for an identity whose key set cannot be fetched.
"""

from __future__ import annotations

from typing import Any

from storm.errors import NotFound, Unavailable
from storm.ports.identity import Claims
from storm.protocol.codes import CloseCode
from storm.protocol.session import Session, SessionContext, State
from tests.service.test_session import ListTransport, send, token


class DownDirectory:
    """The directory when its cache (or store) is unreachable."""

    def __init__(self, directory: Any, error: Exception) -> None:
        self._directory = directory
        self._error = error

    async def principal(self, claims: Claims, workspace_slug: str | None = None) -> Any:
        raise self._error

    def __getattr__(self, name: str) -> Any:
        return getattr(self._directory, name)


class DownIdentity:
    async def verify(self, token: str) -> Claims:
        raise Unavailable("signing keys unavailable")


def _ctx(services: Any, hub: Any, **over: Any) -> SessionContext:
    s = services
    parts = {"config": s.config, "clock": s.clock, "broker": s.broker, "cache": s.cache, "store": s.store,
             "identity": s.identity, "directory": s.directory, "hub": hub, **over}
    return SessionContext(**parts)


async def _auth(ctx: SessionContext, services: Any) -> tuple[Session, ListTransport]:
    t = ListTransport()
    session = Session(ctx, t)
    await send(session, op="auth", token=token(services, "alice"))
    return session, t


async def test_a_cache_outage_during_auth_is_unavailable_and_reconnectable(services, hub):
    ctx = _ctx(services, hub, directory=DownDirectory(services.directory,
                                                     Unavailable("hazelcast get failed: TargetDisconnectedError")))
    session, t = await _auth(ctx, services)
    assert session.state is State.CLOSED
    assert t.closed is not None and t.closed[0] == CloseCode.INTERNAL  # 1011: the client retries with backoff
    (error,) = t.take("error")
    assert error["code"] == "unavailable" and "reconnect" in error["message"]


async def test_a_key_set_outage_during_auth_is_unavailable(services, hub):
    _, t = await _auth(_ctx(services, hub, identity=DownIdentity()), services)
    assert t.closed is not None and t.closed[0] == CloseCode.INTERNAL
    assert [e["code"] for e in t.take("error")] == ["unavailable"]


async def test_not_a_member_is_still_unauthenticated(services, hub):
    ctx = _ctx(services, hub, directory=DownDirectory(services.directory, NotFound("workspace not found")))
    _, t = await _auth(ctx, services)
    assert t.closed is not None and t.closed[0] == CloseCode.UNAUTHENTICATED
    assert [e["code"] for e in t.take("error")] == ["unauthenticated"]
