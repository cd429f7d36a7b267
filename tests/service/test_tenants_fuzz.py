"""Property: whatever a client sends to the write endpoints, the tenants API answers with a deliberate
status (never 500) and a well-formed error body.  docs/tenants-api.md, "Errors".

Hypothesis drives synchronous tests (``@given`` cannot wrap a coroutine under pytest-asyncio), so one
event loop per module is owned by an ``asyncio.Runner`` that keeps the app running between examples;
each example sends its request with ``runner.run(...)``.  The catch-all handler logs at ERROR, so the
module also fails if it ever fired, even behind a status that looked fine.
"""

from __future__ import annotations

import asyncio
import logging
import string
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storm.adapters.dev_identity import DevIdentity
from storm.bootstrap import build_services
from storm.domain import CHANNEL_NAME_RE, SLUG_RE
from tenants.app import create_app
from tenants.service import encode_cursor
from tests.service.conftest import tenants_make_config

pytestmark = pytest.mark.fuzz

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# 308: werkzeug merges repeated slashes ("/v1/workspaces//members") with a redirect, before any view runs
DELIBERATE = {200, 201, 204, 308, 400, 401, 403, 404, 405, 409}
SLUG = "fuzz"


@dataclass
class Env:
    runner: asyncio.Runner
    client: Any
    token: str
    channel_id: str
    private_id: str
    member_id: str
    errors: list[logging.LogRecord]

    def send(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}

        async def go() -> tuple[int, Any]:
            response = await self.client.open(path, method=method, headers=headers, **kwargs)
            body = await response.get_json() if response.mimetype == "application/json" else None
            return response.status_code, body

        return self.runner.run(go())


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def tenants_fuzz(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp: Path = tmp_path_factory.mktemp("tenants-fuzz")
    services = build_services(tenants_make_config(tmp))
    identity = DevIdentity(services.config.dev_secret)
    handler = _Collect()
    logging.getLogger("storm.tenants").addHandler(handler)
    with asyncio.Runner() as runner:
        test_app = create_app(services).test_app()
        runner.run(test_app.startup())
        try:
            env = Env(
                runner, test_app.test_client(), identity.issue("dev|owner", "*"), "", "", "", handler.records
            )
            status, ws = env.send(
                "POST", "/v1/workspaces", json={"slug": SLUG, "name": "Fuzz", "plan": "enterprise"}
            )
            assert status == 201, ws
            _, member = env.send("POST", f"/v1/workspaces/{SLUG}/members", json={"subject": "dev|m"})
            _, public = env.send("POST", f"/v1/workspaces/{SLUG}/channels", json={"name": "general"})
            _, private = env.send(
                "POST", f"/v1/workspaces/{SLUG}/channels", json={"name": "p", "kind": "private"}
            )
            env.member_id, env.channel_id, env.private_id = member["user_id"], public["id"], private["id"]
            yield env
        finally:
            runner.run(test_app.shutdown())
            logging.getLogger("storm.tenants").removeHandler(handler)
    assert not handler.records, [r.getMessage() for r in handler.records]


def check(status: int, body: Any, errors: list[logging.LogRecord]) -> None:
    assert status != 500 and status in DELIBERATE, (status, body)
    assert not errors, [r.getMessage() for r in errors]
    if status >= 400:
        assert isinstance(body, dict) and set(body) == {"error"}, body
        detail = body["error"]
        assert {"code", "message"} <= set(detail) <= {"code", "message", "field"}, detail
        assert all(isinstance(v, str) and v for v in detail.values()), detail


# -- strategies ------------------------------------------------------------------------------------------
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
segments = st.text(st.characters(codec="utf-8"), max_size=40)
names = st.from_regex(CHANNEL_NAME_RE, fullmatch=True) | st.text(string.ascii_lowercase + "-_ ", max_size=90)


def bodies(
    required: dict[str, st.SearchStrategy[Any]], optional: dict[str, st.SearchStrategy[Any]] | None = None
) -> st.SearchStrategy[Any]:
    """A third plausible objects (so requests reach the service layer), a third objects with some of the
    expected keys holding plausible or arbitrary values plus stray keys, a third arbitrary JSON."""
    optional = optional or {}
    plausible = st.fixed_dictionaries(required, optional=optional)
    keys = {**required, **optional}
    known = st.fixed_dictionaries({}, optional={k: v | json_values for k, v in keys.items()})
    stray = st.dictionaries(st.text(max_size=12), json_values, max_size=2)
    mangled = st.builds(lambda a, b: {**b, **a}, known, stray | st.just({}))
    return st.one_of(plausible, mangled, json_values)


# -- workspaces ------------------------------------------------------------------------------------------
@FUZZ
@given(
    body=bodies(
        {"slug": st.from_regex(SLUG_RE, fullmatch=True), "name": st.text(max_size=90)},
        {"plan": st.sampled_from(["free", "pro", "enterprise", "gold"])},
    )
)
def test_create_workspace_never_500(tenants_fuzz: Env, body: Any) -> None:
    check(*tenants_fuzz.send("POST", "/v1/workspaces", json=body), tenants_fuzz.errors)


# -- members ---------------------------------------------------------------------------------------------
roles = st.sampled_from(["owner", "admin", "member", "root"])


@FUZZ
@given(body=bodies({"subject": st.text(max_size=300)}, {"name": st.text(max_size=90), "role": roles}))
def test_add_member_never_500(tenants_fuzz: Env, body: Any) -> None:
    check(*tenants_fuzz.send("POST", f"/v1/workspaces/{SLUG}/members", json=body), tenants_fuzz.errors)


@FUZZ
@given(
    target=st.sampled_from(["member", "random"]) | segments,
    body=bodies({"role": roles}),
    method=st.sampled_from(["PATCH", "DELETE"]),
)
def test_change_or_remove_member_never_500(tenants_fuzz: Env, target: str, body: Any, method: str) -> None:
    env = tenants_fuzz
    user = {"member": env.member_id, "random": str(uuid.uuid4())}.get(target, target)
    kwargs = {"json": body} if method == "PATCH" else {}
    check(*env.send(method, f"/v1/workspaces/{SLUG}/members/{quote(user, safe='')}", **kwargs), env.errors)


# -- channels --------------------------------------------------------------------------------------------
@FUZZ
@given(data=st.data())
def test_create_channel_never_500(tenants_fuzz: Env, data: st.DataObject) -> None:
    env = tenants_fuzz
    ids = st.sampled_from([env.member_id, str(uuid.uuid4())]) | st.uuids().map(str) | st.text(max_size=40)
    body = data.draw(
        bodies(
            {"name": names},
            {
                "kind": st.sampled_from(["public", "private", "direct", "dm"]),
                "members": st.lists(ids, max_size=3),
            },
        )
    )
    check(*env.send("POST", f"/v1/workspaces/{SLUG}/channels", json=body), env.errors)


@FUZZ
@given(data=st.data(), action=st.sampled_from(["archive", "add", "remove"]))
def test_channel_actions_never_500(tenants_fuzz: Env, data: st.DataObject, action: str) -> None:
    env = tenants_fuzz
    known = st.sampled_from([env.channel_id, env.private_id, env.member_id, str(uuid.uuid4())])
    channel = quote(data.draw(known | segments), safe="")
    base = f"/v1/workspaces/{SLUG}/channels/{channel}"
    if action == "archive":
        result = env.send("POST", f"{base}/archive")
    elif action == "add":
        body = data.draw(bodies({"user_id": st.sampled_from([env.member_id]) | st.uuids().map(str)}))
        result = env.send("POST", f"{base}/members", json=body)
    else:
        user = quote(data.draw(st.sampled_from([env.member_id]) | segments), safe="")
        result = env.send("DELETE", f"{base}/members/{user}")
    check(*result, env.errors)


# -- raw bodies, path segments and queries ---------------------------------------------------------------
WRITE_PATHS = ["/v1/workspaces", f"/v1/workspaces/{SLUG}/members", f"/v1/workspaces/{SLUG}/channels"]


@FUZZ
@given(
    path=st.sampled_from(WRITE_PATHS),
    raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode),
    ctype=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded", ""]),
)
def test_raw_bodies_never_500(tenants_fuzz: Env, path: str, raw: bytes, ctype: str) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    check(*tenants_fuzz.send("POST", path, data=raw, headers=headers), tenants_fuzz.errors)


@FUZZ
@given(
    slug=st.just(SLUG) | segments,
    tail=st.sampled_from(["", "/members", "/channels", "/online", "/members/x"]),
    method=st.sampled_from(["GET", "POST", "PATCH", "DELETE"]),
    body=json_values,
)
def test_arbitrary_workspace_segments_never_500(
    tenants_fuzz: Env, slug: str, tail: str, method: str, body: Any
) -> None:
    if slug == SLUG and method == "DELETE" and tail == "":
        return  # the one request that would really delete the fixture's workspace
    kwargs = {"json": body} if method in ("POST", "PATCH") else {}
    path = f"/v1/workspaces/{quote(slug, safe='')}{tail}"
    check(*tenants_fuzz.send(method, path, **kwargs), tenants_fuzz.errors)


query_text = st.text(st.characters(codec="utf-8"), max_size=30)
queries = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "limit": st.integers(-5, 150).map(str) | query_text,
            "cursor": st.integers(-1, 10**20).map(encode_cursor) | query_text,
            "include_archived": st.sampled_from(["true", "false", "1", "0", "yes"]) | query_text,
        },
    ),
    st.dictionaries(query_text, query_text, max_size=3),
)


@FUZZ
@given(query=queries, which=st.sampled_from(["messages", "channels"]))
def test_arbitrary_queries_never_500(tenants_fuzz: Env, query: dict[str, str], which: str) -> None:
    env = tenants_fuzz
    path = (
        f"/v1/workspaces/{SLUG}/channels/{env.channel_id}/messages"
        if which == "messages"
        else f"/v1/workspaces/{SLUG}/channels"
    )
    check(*env.send("GET", path, query_string=query), env.errors)
