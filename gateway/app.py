"""Quart application factory for the gateway.

Nothing connects here: ``create_app`` wires objects; ``before_serving`` starts them in dependency order
(store, cache, broker -> start-up hooks -> workers -> gateway hub) and ``after_serving`` stops them in
reverse.  The gateway knows no other role: ``storm dev`` (storm_cli/apps.py) adds the tenants API, the
persistence worker and the demo seed through ``extensions``, ``components`` and ``on_start``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from importlib import resources
from typing import Any, Protocol

from quart import Quart, Response, jsonify

from gateway.guard import HandshakeGuard
from gateway.runtime import Gateway
from storm.bootstrap import Services

log = logging.getLogger("storm.gateway.app")


class Component(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


StartHook = Callable[[Services], Awaitable[None]]
Extension = Callable[[Quart, Services], None]


def create_app(
    services: Services,
    *,
    page: bool = True,
    components: Sequence[Component] = (),
    on_start: Sequence[StartHook] = (),
    extensions: Sequence[Extension] = (),
    on_started: Any = None,
) -> Quart:
    app = Quart(__name__)
    gateway = Gateway(services)
    workers = list(components)
    app.extensions["storm"] = services
    app.extensions["gateway"] = gateway

    @app.before_serving
    async def startup() -> None:
        await services.start()
        for hook in on_start:
            await hook(services)
        for worker in workers:
            await worker.start()
        await gateway.start()
        if on_started is not None:
            await on_started(app)

    @app.after_serving
    async def shutdown() -> None:
        await gateway.stop()
        for worker in reversed(workers):
            try:
                await worker.stop()
            except Exception:
                log.exception("error stopping %s", type(worker).__name__)
        await services.stop()

    from pydantic import BaseModel
    from quart_schema import document_response

    class Health(BaseModel):
        """`status` is "ok" (200), or "unavailable" (503: a backing service failed, or the gateway drains)."""

        status: str
        checks: dict[str, str]
        connections: int

    @app.get("/healthz")
    @document_response(Health, 200)
    @document_response(Health, 503)
    async def healthz() -> tuple[Response, int]:
        """Liveness and the backing services' health (the load balancer's check)."""
        checks = await services.health_checks()
        ok = all(v == "ok" for v in checks.values()) and gateway.accepting
        body = {"status": "ok" if ok else "unavailable", "checks": checks, "connections": gateway.connections}
        return jsonify(body), 200 if ok else 503

    if page:
        @app.get("/")
        async def index() -> Response:
            html = resources.files("gateway").joinpath("static/index.html").read_bytes()
            return Response(html, content_type="text/html; charset=utf-8")

        @app.get("/static/<path:name>")
        async def static_file(name: str) -> Response:
            allowed = {"app.js": "text/javascript", "style.css": "text/css"}
            if name not in allowed:
                return Response("not found", status=404)
            body = resources.files("gateway").joinpath(f"static/{name}").read_bytes()
            return Response(body, content_type=f"{allowed[name]}; charset=utf-8")

    if services.config.identity == "dev" and services.config.mode == "embedded":
        _register_dev_token(app, services)

    # `/ws` is served by the front door (gateway/frontdoor.py, serve_app), which asks the guard (Origin,
    # per-IP limit) before the upgrade; Quart has no WebSocket route (ADR 0007, amended)
    guard = app.extensions["guard"] = HandshakeGuard(services.config)
    # upgrades the guard refuses never reach a session: storm.gateway.connects counts them from here
    services.metrics.count_of("storm.gateway.connects", lambda: guard.refused["origin"], result="origin")
    services.metrics.count_of("storm.gateway.connects", lambda: guard.refused["per_ip"], result="per_ip")
    services.metrics.count_of("storm.gateway.connects", lambda: guard.refused["overload"], result="overload")
    services.metrics.count_of("storm.gateway.connects", lambda: guard.refused["full"], result="full")
    for extend in extensions:
        extend(app, services)
    return app


def _register_dev_token(app: Quart, services: Services) -> None:
    """`GET /dev/token?user=alice&workspace=demo`: mint a dev token for the chat page.  Embedded mode only
    (the config refuses the dev identity in production), and only for `[a-z0-9_-]` handles."""
    import re

    from pydantic import BaseModel, Field
    from quart import request
    from quart_schema import document_querystring, document_response

    from storm.adapters.dev_identity import DevIdentity

    class DevTokenQuery(BaseModel):  # documents the query string (/openapi.json); parsed by hand below
        user: str | None = Field(default=None, description="Handle `[a-z0-9_-]{1,32}`: the subject is `dev|<user>`.")
        workspace: str = Field(default="demo", description="Slug the token is bound to, or `*`.")
        user_id: str | None = Field(default=None, description="Instead of `user`: any existing user, by id.")

    class DevToken(BaseModel):
        token: str
        expires_in: int = Field(description="Seconds until the token expires.")

    class DevDirectoryMember(BaseModel):
        user_id: str
        name: str
        role: str
        handle: str | None = Field(description="The `user` of /dev/token for a `dev|` subject, else null.")

    class DevDirectoryWorkspace(BaseModel):
        slug: str
        name: str
        members: list[DevDirectoryMember]

    class DevDirectory(BaseModel):
        workspaces: list[DevDirectoryWorkspace]

    class DevTokenError(BaseModel):
        error: dict[str, str] = Field(description="`{code, message, field}`: `bad_request` (400), `not_found` (404).")

    handle_re = re.compile(r"^[a-z0-9_-]{1,32}$")
    issuer = DevIdentity(services.config.dev_secret, ttl_s=services.config.token_ttl_s)

    @app.get("/dev/token")
    @document_querystring(DevTokenQuery)
    @document_response(DevToken, 200)
    @document_response(DevTokenError, 400)
    @document_response(DevTokenError, 404)
    async def dev_token() -> tuple[Response, int]:
        """A dev token for the chat page (embedded dev mode only)."""
        user = request.args.get("user", "")
        workspace = request.args.get("workspace", "demo")
        for name, value in (("user", user), ("workspace", workspace)):
            if name == "user" and not value and request.args.get("user_id"):
                continue
            if not handle_re.match(value) and not (name == "workspace" and value == "*"):
                body = {"error": {"code": "bad_request", "message": f"invalid {name}", "field": name}}
                return jsonify(body), 400
        subject, name = f"dev|{user}", user.title()
        if request.args.get("user_id"):  # any member of any workspace, by user id (the page's picker)
            try:
                found = await _dev_user(services, uuid.UUID(request.args["user_id"]))
            except ValueError:
                found = None
            if found is None:
                body = {"error": {"code": "not_found", "message": "no such user", "field": "user_id"}}
                return jsonify(body), 404
            subject, name = found.subject, found.name
        elif not user:
            body = {"error": {"code": "bad_request", "message": "give user or user_id", "field": "user"}}
            return jsonify(body), 400
        token = issuer.issue(subject, workspace, name)
        return jsonify({"token": token, "expires_in": services.config.token_ttl_s}), 200

    @app.get("/dev/directory")
    @document_response(DevDirectory, 200)
    async def dev_directory() -> tuple[Response, int]:
        """Every workspace (the first 100 by slug) with its members: the page's workspace and user picker."""
        out = []
        async with services.store.unit_of_work() as uow:
            for ws in await uow.workspaces.list(limit=100):
                members = await uow.memberships.list(ws.id)
                users = {u.id: u for u in await uow.users.get_many([m.user_id for m in members])}
                rows: list[dict[str, str | None]] = [
                    {"user_id": str(m.user_id), "name": users[m.user_id].name, "role": m.role.value,
                     "handle": users[m.user_id].subject.removeprefix("dev|")
                     if users[m.user_id].subject.startswith("dev|") else None}
                    for m in members if m.user_id in users]
                rows.sort(key=lambda x: (x["name"] or "").lower())
                out.append({"slug": ws.slug, "name": ws.name, "members": rows})
        return jsonify({"workspaces": out}), 200


async def _dev_user(services: Services, user_id: uuid.UUID) -> Any:
    async with services.store.unit_of_work() as uow:
        return await uow.users.get(user_id)
