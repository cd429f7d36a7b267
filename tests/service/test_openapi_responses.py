"""/openapi.json documents what every route answers (issue 13): a tour calls every route of the dev app
(the gateway with the tenants API and `/dev/token`, as `storm dev` serves it) for its success and its
usual refusals, records each (route, method, status) through an ``after_request`` hook, and checks that
the status is among the route's documented responses.  Every documented route must have been toured with
a success, so a new route without documentation, or without a place in the tour, fails here too."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from quart import Quart, Response, request

from gateway.app import create_app
from storm.adapters.dev_identity import DevIdentity
from storm.bootstrap import Services, build_services
from tenants.api import register as register_tenants_api
from tests.service.conftest import tenants_make_config

UNDOCUMENTED = {"/openapi.json", "/", "/static/{name}"}  # the document itself and the chat page's files


@pytest.fixture
async def dev_app(tmp_path: Path) -> AsyncIterator[tuple[Quart, Any, Services, list[tuple[str, str, int]]]]:
    services = build_services(tenants_make_config(tmp_path))
    app = create_app(services, page=False, extensions=[register_tenants_api])
    seen: list[tuple[str, str, int]] = []

    @app.after_request
    async def record(response: Response) -> Response:
        if request.url_rule is not None:
            seen.append((request.url_rule.rule, request.method, response.status_code))
        return response

    async with app.test_app() as test_app:
        yield app, test_app.test_client(), services, seen


def _webhooks(path: str) -> bool:
    """Webhook routes (tenants/webhooks.py, tested by their own suite): here they need only answer with a
    documented status; the tour calls those without ids, with an empty body."""
    return "webhook" in path or path.startswith("/v1/hooks/")


def _openapi_path(rule: str) -> str:
    return rule.replace("<path:", "{").replace("<", "{").replace(">", "}")


async def test_every_status_a_route_answers_is_documented(dev_app: Any) -> None:
    app, client, services, seen = dev_app
    issuer = DevIdentity(services.config.dev_secret)

    def auth(user: str, ws: str = "*") -> dict[str, str]:
        return {"Authorization": f"Bearer {issuer.issue(f'dev|{user}', ws, user.title())}"}

    async def call(method: str, path: str, user: str | None = "alice", **kw: Any) -> Any:
        headers = auth(user) if user else {}
        response = await client.open(path, method=method, headers=headers, **kw)
        return response.status_code, await response.get_json()

    # /dev/token
    assert (await call("GET", "/dev/token?user=alice&workspace=demo", None))[0] == 200
    assert (await call("GET", "/dev/token?user=Bad%20Name", None))[0] == 400
    assert (await call("GET", f"/dev/token?user_id={uuid.uuid4()}", None))[0] == 404
    # workspaces
    v1 = "/v1/workspaces"
    assert (await call("POST", v1, json={"slug": "tour", "name": "Tour"}))[0] == 201
    assert (await call("POST", v1, json={"slug": "tour", "name": "Tour"}))[0] == 409
    assert (await call("POST", v1, None, json={"slug": "x-y", "name": "X"}))[0] == 401
    assert (await call("POST", v1, json={"slug": "!", "name": "X"}))[0] == 400
    assert (await call("GET", v1))[0] == 200
    assert (await call("GET", f"{v1}/tour"))[0] == 200
    assert (await call("GET", f"{v1}/nope"))[0] == 404
    assert (await call("GET", f"{v1}/tour", "mallory"))[0] == 403
    assert (await call("GET", "/dev/directory", None))[0] == 200
    assert (await call("GET", "/healthz", None))[0] == 200
    ws = f"{v1}/tour"
    # members
    status, bob = await call("POST", f"{ws}/members", json={"subject": "dev|bob"})
    assert status == 201
    assert (await call("POST", f"{ws}/members", json={"subject": "dev|bob"}))[0] == 409
    assert (await call("POST", f"{ws}/members/bulk", json={"members": [{"subject": "dev|carol"}]}))[0] == 200
    assert (await call("GET", f"{ws}/members"))[0] == 200
    assert (await call("PATCH", f"{ws}/members/{bob['user_id']}", json={"role": "admin"}))[0] == 200
    assert (await call("PATCH", f"{ws}/members/not-a-uuid", json={"role": "admin"}))[0] == 400
    # channels
    status, general = await call("POST", f"{ws}/channels", json={"name": "general"})
    assert status == 201
    status, secret = await call("POST", f"{ws}/channels", json={"name": "secret", "kind": "private"})
    assert status == 201
    assert (await call("GET", f"{ws}/channels"))[0] == 200
    ch = f"{ws}/channels/{secret['id']}"
    assert (await call("POST", f"{ch}/members", json={"user_id": bob["user_id"]}))[0] == 200
    assert (await call("GET", f"{ch}/members"))[0] == 200
    assert (await call("DELETE", f"{ch}/members/{bob['user_id']}"))[0] == 204
    assert (await call("GET", f"{ws}/channels/{general['id']}/messages"))[0] == 200
    assert (await call("GET", f"{ws}/channels/{general['id']}/presence"))[0] == 200
    assert (await call("GET", f"{ws}/online"))[0] == 200
    assert (await call("GET", f"{ws}/unread"))[0] == 200
    assert (await call("POST", f"{ws}/channels/{general['id']}/archive"))[0] == 200
    # webhooks, when this build has them: each route answers with something documented (see below)
    for rule in app.url_map.iter_rules():
        if _webhooks(rule.rule) and "<" not in rule.rule.replace("<slug>", ""):
            for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
                await call(method, rule.rule.replace("<slug>", "tour"), json={})
    # leaving
    members = (await call("GET", f"{ws}/members"))[1]["members"]
    carol = next(m for m in members if m["name"].lower() == "carol")
    assert (await call("POST", f"{ws}/members/{carol['user_id']}/ban"))[0] == 204
    assert (await call("DELETE", f"{ws}/members/{bob['user_id']}"))[0] == 204
    assert (await call("POST", f"{ws}/logout"))[0] == 204
    assert (await call("DELETE", ws))[0] == 204

    doc = (await call("GET", "/openapi.json", None))[1]
    documented: dict[tuple[str, str], set[str]] = {
        (path, method.upper()): set(op.get("responses", {})) for path, ops in doc["paths"].items()
        for method, op in ops.items()}
    undocumented = sorted({(rule, method, status) for rule, method, status in seen
                           if _openapi_path(rule) not in UNDOCUMENTED
                           and str(status) not in documented.get((_openapi_path(rule), method), set())})
    assert undocumented == [], undocumented
    succeeded = {(_openapi_path(rule), method) for rule, method, status in seen if 200 <= status < 300}
    for (path, method), statuses in documented.items():
        assert any(s.startswith("2") for s in statuses), f"{method} {path} documents no success response"
        if not _webhooks(path):
            assert (path, method) in succeeded, f"{method} {path} is not in the tour"
    assert {"user", "workspace", "user_id"} <= {p["name"] for p in doc["paths"]["/dev/token"]["get"]["parameters"]}
