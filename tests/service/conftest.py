"""Fixtures of the service tests, on embedded adapters (memory broker and cache, dev tokens):

* the tenants API tests: an in-process app on a SQLite file; those fixtures are prefixed ``tenants_``;
* the session tests: ``services`` (seeded with the demo workspace, on a manual clock), ``hub`` and ``ctx``
  (a ``SessionContext``), driven without sockets by tests/service/test_session.py's helpers.  Their store
  is the memory store (``STORM_STORE=memory``; the store contract proves it equal to the SQL one): the
  session is what they test.  Tests about what is stored (test_persistence.py, test_tenants_api.py,
  test_isolation.py) keep the SQL store;
* the Auth0 tests: ``jwks_server`` and ``jwks``, a local JWKS endpoint (tests/support/jwks.py)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gateway.hub import Hub
from storm.adapters.dev_identity import DEFAULT_SCOPES, DevIdentity
from storm.bootstrap import Services, build_services
from storm.config import Config
from storm.ports.clock import ManualClock
from storm.protocol.session import SessionContext
from tenants.app import create_app
from tests.support.jwks import Jwks, serve_jwks, stop_jwks
from tests.support.services import demo_services


def tenants_make_config(tmp_path: Path) -> Config:
    return Config.from_env({}, database_url=f"sqlite+aiosqlite:///{tmp_path}/t.db")


@dataclass
class Reply:
    status: int
    body: Any
    headers: Any

    def error(self) -> dict[str, Any]:
        assert isinstance(self.body, dict) and set(self.body) == {"error"}, self.body
        detail = self.body["error"]
        assert set(detail) <= {"code", "message", "field"} and {"code", "message"} <= set(detail), detail
        assert isinstance(detail["code"], str) and isinstance(detail["message"], str)
        return detail


@dataclass
class TenantsApi:
    """A test client that speaks for a named user: ``await api.post("/v1/…", as_="alice", json=…)``."""

    client: Any
    services: Services
    identity: DevIdentity

    def token(
        self,
        subject: str,
        workspace: str = "*",
        *,
        scopes: tuple[str, ...] = DEFAULT_SCOPES,
        ttl_s: int | None = None,
    ) -> str:
        return self.identity.issue(f"dev|{subject}", workspace, subject.title(), scopes=scopes, ttl_s=ttl_s)

    async def call(
        self,
        method: str,
        path: str,
        *,
        as_: str | None = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> Reply:
        headers = dict(headers or {})
        if token is None and as_ is not None:
            token = self.token(as_)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        response = await self.client.open(path, method=method, headers=headers, **kwargs)
        raw = await response.get_data()
        body = await response.get_json() if raw and response.mimetype == "application/json" else raw
        return Reply(response.status_code, body, response.headers)

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.call("GET", path, **kw)

    async def post(self, path: str, **kw: Any) -> Reply:
        return await self.call("POST", path, **kw)

    async def patch(self, path: str, **kw: Any) -> Reply:
        return await self.call("PATCH", path, **kw)

    async def delete(self, path: str, **kw: Any) -> Reply:
        return await self.call("DELETE", path, **kw)

    # -- shortcuts for arranging scenes ---------------------------------------------------------------
    async def workspace(self, slug: str, owner: str = "alice", plan: str = "free") -> dict[str, Any]:
        body = {"slug": slug, "name": slug.title(), "plan": plan}
        r = await self.post("/v1/workspaces", as_=owner, json=body)
        assert r.status == 201, r.body
        return r.body

    async def member(self, slug: str, subject: str, role: str = "member", as_: str = "alice") -> uuid.UUID:
        r = await self.post(
            f"/v1/workspaces/{slug}/members",
            as_=as_,
            json={"subject": f"dev|{subject}", "name": subject.title(), "role": role},
        )
        assert r.status == 201, r.body
        return uuid.UUID(r.body["user_id"])

    async def channel(
        self,
        slug: str,
        name: str,
        kind: str = "public",
        as_: str = "alice",
        members: list[uuid.UUID] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "kind": kind}
        if members is not None:
            body["members"] = [str(m) for m in members]
        r = await self.post(f"/v1/workspaces/{slug}/channels", as_=as_, json=body)
        assert r.status == 201, r.body
        return r.body


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def tenants_errors() -> Iterator[list[logging.LogRecord]]:
    """ERROR records of the tenants API.  The catch-all 500 handler logs one; tests that expect it clear
    the list, every other test must end with it empty (client input never reaches the catch-all)."""
    handler = _Collect()
    logger = logging.getLogger("storm.tenants")
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
    assert not handler.records, [r.getMessage() for r in handler.records]


@pytest.fixture
def tenants_services(tmp_path: Path) -> Services:
    return build_services(tenants_make_config(tmp_path))


@pytest.fixture
async def tenants_api(
    tenants_services: Services, tenants_errors: list[logging.LogRecord]
) -> AsyncIterator[TenantsApi]:
    app = create_app(tenants_services)
    async with app.test_app() as test_app:  # runs before_serving/after_serving: services start and stop
        yield TenantsApi(
            test_app.test_client(), tenants_services, DevIdentity(tenants_services.config.dev_secret)
        )


# --- the session core, without sockets -------------------------------------------------------------


@pytest.fixture
async def services() -> AsyncIterator[Services]:
    clock = ManualClock()
    cfg = Config.from_env({}, store="memory", publish_rate=5.0,
                          publish_burst=3, max_subscriptions=3, retention_messages=20,
                          presence_coalesce_s=0.02)  # joins and leaves announced within a test's patience
    svc = await demo_services(cfg, clock)
    try:
        yield svc
    finally:
        await svc.stop()


@pytest.fixture
async def hub(services) -> AsyncIterator[Hub]:
    h = Hub(services.broker, services.clock, sweep_interval_s=3600)
    await h.start()
    try:
        yield h
    finally:
        await h.stop()


@pytest.fixture
def ctx(services, hub) -> SessionContext:
    s = services
    return SessionContext(config=s.config, clock=s.clock, broker=s.broker, cache=s.cache, store=s.store,
                          identity=s.identity, directory=s.directory, hub=hub)


# --- a local Auth0 tenant (tests/support/jwks.py) ----------------------------------------------------


@pytest.fixture(scope="session")
def jwks_server() -> Iterator[Jwks]:
    jwks, server, thread = serve_jwks()
    try:
        yield jwks
    finally:
        stop_jwks(server, thread)


@pytest.fixture
def jwks(jwks_server: Jwks) -> Iterator[Jwks]:
    """The local tenant with one fresh key ``key-1``, reset for each test."""
    original = jwks_server.keys
    jwks_server.publish(original[0])
    jwks_server.fetches = 0
    yield jwks_server
    jwks_server.publish(original[0])
