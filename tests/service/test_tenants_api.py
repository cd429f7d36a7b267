"""Behaviour of the tenants API as a client sees it (docs/tenants-api.md), in-process on embedded adapters."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from storm.adapters.dev_identity import DevIdentity
from storm.bootstrap import Services
from storm.domain import PLANS, Message, Plan, Reaction
from storm.errors import Unavailable
from storm.ports.cache import PresenceEntry
from tenants import service
from tenants.app import create_app
from tests.service.conftest import TenantsApi


# -- lifecycle -------------------------------------------------------------------------------------------
async def test_full_lifecycle(tenants_api: TenantsApi) -> None:
    api = tenants_api
    created = await api.workspace("acme", plan="pro")
    assert created["slug"] == "acme" and created["plan"] == "pro" and created["role"] == "owner"
    assert api.services.broker.workspace_plan("acme") == PLANS["pro"]  # broker side set up after commit

    listed = await api.get("/v1/workspaces", as_="alice")
    assert [w["slug"] for w in listed.body["workspaces"]] == ["acme"]

    bob = await api.member("acme", "bob")
    carol = await api.member("acme", "carol", role="admin")
    members = (await api.get("/v1/workspaces/acme/members", as_="bob")).body["members"]
    assert {(m["name"], m["role"]) for m in members} == {
        ("Alice", "owner"),
        ("Bob", "member"),
        ("Carol", "admin"),
    }

    r = await api.patch(f"/v1/workspaces/acme/members/{bob}", as_="alice", json={"role": "admin"})
    assert r.status == 200 and r.body == {"user_id": str(bob), "name": "Bob", "role": "admin"}

    general = await api.channel("acme", "general")
    secret = await api.channel("acme", "secret", kind="private", members=[bob])
    dm = await api.channel("acme", "ignored", kind="direct", members=[carol])
    assert dm["name"].startswith("dm-") and dm["kind"] == "direct"

    def names(reply: Any) -> list[str]:
        return [c["name"] for c in reply.body["channels"]]

    assert names(await api.get("/v1/workspaces/acme/channels", as_="alice")) == sorted(
        ["general", "secret", dm["name"]]
    )
    assert names(await api.get("/v1/workspaces/acme/channels", as_="bob")) == ["general", "secret"]
    assert names(await api.get("/v1/workspaces/acme/channels", as_="carol")) == sorted(
        ["general", dm["name"]]
    )

    r = await api.post(f"/v1/workspaces/acme/channels/{general['id']}/archive", as_="alice")
    assert r.status == 200 and r.body["archived"] is True
    assert "general" not in names(await api.get("/v1/workspaces/acme/channels", as_="alice"))
    r = await api.get("/v1/workspaces/acme/channels", as_="alice", query_string={"include_archived": "true"})
    assert {c["name"]: c["archived"] for c in r.body["channels"]}["general"] is True
    assert secret["kind"] == "private"

    await api.services.cache.presence_add("acme", "_workspace", "c1", PresenceEntry(str(bob), "Bob"), 60)
    assert (await api.delete("/v1/workspaces/acme", as_="alice")).status == 204
    assert api.services.broker.workspace_plan("acme") is None
    assert await api.services.cache.presence_list("acme", "_workspace") == []
    gone = await api.get("/v1/workspaces/acme", as_="alice")
    assert gone.status == 404 and gone.error()["code"] == "not_found"
    assert (await api.get("/v1/workspaces", as_="bob")).body == {"workspaces": []}
    assert (await api.get("/v1/workspaces/acme/channels", as_="bob")).status == 404


async def test_get_workspace_and_bound_listing(tenants_api: TenantsApi) -> None:
    api = tenants_api
    await api.workspace("acme")
    await api.workspace("beta")
    r = await api.get("/v1/workspaces/acme", as_="alice")
    assert r.status == 200 and r.body["slug"] == "acme" and r.body["role"] == "owner"
    everything = await api.get("/v1/workspaces", as_="alice")
    assert [w["slug"] for w in everything.body["workspaces"]] == ["acme", "beta"]
    bound = await api.get("/v1/workspaces", token=api.token("alice", "beta"))
    assert [w["slug"] for w in bound.body["workspaces"]] == ["beta"]
    stranger = await api.get("/v1/workspaces", as_="zed")
    assert stranger.status == 200 and stranger.body == {"workspaces": []}


async def test_workspace_creation_needs_scope_and_matching_binding(tenants_api: TenantsApi) -> None:
    api = tenants_api
    body = {"slug": "acme", "name": "Acme"}
    r = await api.post("/v1/workspaces", token=api.token("alice", scopes=("chat",)), json=body)
    assert r.status == 403 and r.error()["field"] == "scope"
    r = await api.post("/v1/workspaces", token=api.token("alice", "other"), json=body)
    assert r.status == 403
    r = await api.post("/v1/workspaces", token=api.token("alice", "acme"), json=body)
    assert r.status == 201 and r.body["plan"] == "free"


async def test_broker_failure_rolls_the_creation_back(
    tenants_api: TenantsApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = tenants_api

    async def broken(workspace: str, plan: Plan) -> None:
        raise Unavailable("broker down")

    monkeypatch.setattr(api.services.broker, "ensure_workspace", broken)
    r = await api.post("/v1/workspaces", as_="alice", json={"slug": "acme", "name": "Acme"})
    assert r.status == 503 and r.error()["code"] == "unavailable"
    assert r.headers.get("Retry-After")
    assert (await api.get("/v1/workspaces/acme", as_="alice")).status == 404
    assert (await api.get("/v1/workspaces", as_="alice")).body == {"workspaces": []}
    assert api.services.broker.workspace_plan("acme") is None
    monkeypatch.undo()
    assert (
        await api.post("/v1/workspaces", as_="alice", json={"slug": "acme", "name": "Acme"})
    ).status == 201


# -- authorisation ---------------------------------------------------------------------------------------
async def test_member_permissions(tenants_api: TenantsApi) -> None:
    api = tenants_api
    await api.workspace("acme")
    bob = await api.member("acme", "bob")
    carol = await api.member("acme", "carol")
    alices = await api.channel("acme", "alices")
    bobs = await api.channel("acme", "bobs", as_="bob")

    assert (await api.delete("/v1/workspaces/acme", as_="bob")).status == 403
    assert (
        await api.patch(f"/v1/workspaces/acme/members/{carol}", as_="bob", json={"role": "admin"})
    ).status == 403
    assert (
        await api.patch(f"/v1/workspaces/acme/members/{bob}", as_="bob", json={"role": "admin"})
    ).status == 403
    r = await api.post("/v1/workspaces/acme/members", as_="bob", json={"subject": "dev|dan"})
    assert r.status == 403 and r.error()["code"] == "forbidden"
    assert (await api.delete(f"/v1/workspaces/acme/members/{carol}", as_="bob")).status == 403
    assert (await api.post(f"/v1/workspaces/acme/channels/{alices['id']}/archive", as_="bob")).status == 403
    assert (await api.post(f"/v1/workspaces/acme/channels/{bobs['id']}/archive", as_="bob")).status == 200
    r = await api.get("/v1/workspaces/acme/channels", as_="bob", query_string={"include_archived": "true"})
    assert r.status == 403 and r.error()["field"] == "include_archived"
    # a member may leave
    assert (await api.delete(f"/v1/workspaces/acme/members/{bob}", as_="bob")).status == 204
    assert (await api.get("/v1/workspaces/acme", as_="bob")).status == 403


async def test_admin_permissions(tenants_api: TenantsApi) -> None:
    api = tenants_api
    await api.workspace("acme")
    alice = uuid.UUID(
        (await api.get("/v1/workspaces/acme/members", as_="alice")).body["members"][0]["user_id"]
    )
    await api.member("acme", "carol", role="admin")
    r = await api.post(
        "/v1/workspaces/acme/members", as_="carol", json={"subject": "dev|dan", "role": "owner"}
    )
    assert r.status == 403 and r.error()["field"] == "role"
    dan = await api.member("acme", "dan", as_="carol")
    eve = await api.member("acme", "eve", role="admin", as_="carol")
    assert (
        await api.patch(f"/v1/workspaces/acme/members/{dan}", as_="carol", json={"role": "owner"})
    ).status == 403
    assert (
        await api.patch(f"/v1/workspaces/acme/members/{alice}", as_="carol", json={"role": "member"})
    ).status == 403
    assert (await api.delete(f"/v1/workspaces/acme/members/{alice}", as_="carol")).status == 403
    r = await api.patch(f"/v1/workspaces/acme/members/{dan}", as_="carol", json={"role": "admin"})
    assert r.status == 200 and r.body["role"] == "admin"
    assert (await api.delete(f"/v1/workspaces/acme/members/{eve}", as_="carol")).status == 204
    assert (await api.delete("/v1/workspaces/acme", as_="carol")).status == 403
    # the role change takes effect at once (directory cache invalidated): dan now adds members
    assert (
        await api.post("/v1/workspaces/acme/members", as_="dan", json={"subject": "dev|fay"})
    ).status == 201


async def test_last_owner_is_protected(tenants_api: TenantsApi) -> None:
    api = tenants_api
    await api.workspace("acme")
    alice = uuid.UUID(
        (await api.get("/v1/workspaces/acme/members", as_="alice")).body["members"][0]["user_id"]
    )
    r = await api.patch(f"/v1/workspaces/acme/members/{alice}", as_="alice", json={"role": "admin"})
    assert r.status == 409 and r.error()["code"] == "conflict"
    r = await api.delete(f"/v1/workspaces/acme/members/{alice}", as_="alice")
    assert r.status == 409
    bob = await api.member("acme", "bob", role="owner")
    assert (
        await api.patch(f"/v1/workspaces/acme/members/{alice}", as_="alice", json={"role": "admin"})
    ).status == 200
    r = await api.delete(f"/v1/workspaces/acme/members/{bob}", as_="bob")
    assert r.status == 409
    # an owner may remove another owner while one remains
    await api.patch(f"/v1/workspaces/acme/members/{alice}", as_="bob", json={"role": "owner"})
    assert (await api.delete(f"/v1/workspaces/acme/members/{alice}", as_="bob")).status == 204


# every endpoint of a workspace, with a body that would be valid
def _endpoints(ch: str, user: str) -> list[tuple[str, str, dict[str, Any] | None]]:
    base = "/v1/workspaces/{slug}"
    return [
        ("GET", base, None),
        ("DELETE", base, None),
        ("GET", base + "/members", None),
        ("POST", base + "/members", {"subject": "dev|zed"}),
        ("PATCH", base + f"/members/{user}", {"role": "admin"}),
        ("DELETE", base + f"/members/{user}", None),
        ("GET", base + "/channels", None),
        ("POST", base + "/channels", {"name": "new", "kind": "public"}),
        ("POST", base + f"/channels/{ch}/archive", None),
        ("POST", base + f"/channels/{ch}/members", {"user_id": user}),
        ("DELETE", base + f"/channels/{ch}/members/{user}", None),
        ("GET", base + f"/channels/{ch}/messages", None),
        ("GET", base + f"/channels/{ch}/presence", None),
        ("GET", base + "/online", None),
    ]


async def test_token_bound_to_another_workspace_is_forbidden_everywhere(tenants_api: TenantsApi) -> None:
    api = tenants_api
    await api.workspace("acme")
    await api.workspace("beta")
    bob = await api.member("beta", "bob")
    secret = await api.channel("beta", "secret", kind="private", members=[bob])
    acme_token = api.token("alice", "acme")  # alice owns beta too, but this token is for acme
    for method, path, body in _endpoints(secret["id"], str(bob)):
        for slug in ("beta", "missing"):  # existing or not: the same 403, no existence leak
            kwargs = {"json": body} if body is not None else {}
            r = await api.call(method, path.format(slug=slug), token=acme_token, **kwargs)
            assert r.status == 403, (method, path, slug, r.body)
            assert r.error()["code"] == "forbidden"
    # the workspace survived all of that
    assert (await api.get("/v1/workspaces/beta", as_="alice")).status == 200
    # a token that could access the slug learns it does not exist
    for method, path, body in _endpoints(secret["id"], str(bob)):
        kwargs = {"json": body} if body is not None else {}
        r = await api.call(method, path.format(slug="missing"), as_="alice", **kwargs)
        assert r.status == 404, (method, path, r.body)


async def test_non_members_are_forbidden(tenants_api: TenantsApi) -> None:
    api = tenants_api
    await api.workspace("acme")
    assert (await api.get("/v1/workspaces/acme", as_="mallory")).status == 403
    assert (await api.get("/v1/workspaces/acme/members", as_="mallory")).status == 403
    r = await api.get("/v1/workspaces/acme/channels", token=api.token("mallory", "acme"))
    assert r.status == 403


# -- authentication --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic YWxpY2U6c2VjcmV0",
        "Bearer not-a-jwt",
        "Token abc",
    ],
)
async def test_missing_or_malformed_token_is_401(tenants_api: TenantsApi, header: str | None) -> None:
    api = tenants_api
    headers = {} if header is None else {"Authorization": header}
    for method, path, body in [
        ("GET", "/v1/workspaces", None),
        ("POST", "/v1/workspaces", {"bad": 1}),
        ("GET", "/v1/workspaces/acme/members", None),
    ]:
        kwargs = {"json": body} if body is not None else {}
        r = await api.call(method, path, headers=headers, **kwargs)
        assert r.status == 401, (header, path, r.body)
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert r.error()["code"] == "unauthenticated"


async def test_expired_and_forged_tokens_are_401(tenants_api: TenantsApi) -> None:
    api = tenants_api
    await api.workspace("acme")
    expired = api.token("alice", ttl_s=-100)
    r = await api.get("/v1/workspaces/acme", token=expired)
    assert r.status == 401 and "expired" in r.error()["message"]
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    forged = DevIdentity("x" * 40).issue("dev|alice", "*")
    assert (await api.get("/v1/workspaces/acme", token=forged)).status == 401


# -- bad requests ----------------------------------------------------------------------------------------
WORKSPACE_BODIES: list[tuple[str, Any, str]] = [
    ("missing field", {"slug": "acme"}, "name"),
    ("wrong type", {"slug": 5, "name": "Acme"}, "slug"),
    ("bad slug", {"slug": "Not_A_Slug", "name": "Acme"}, "slug"),
    ("slug with newline", {"slug": "acme\n", "name": "Acme"}, "slug"),
    ("short slug", {"slug": "a", "name": "Acme"}, "slug"),
    ("unknown field", {"slug": "acme", "name": "Acme", "owner": "me"}, "owner"),
    ("too long name", {"slug": "acme", "name": "x" * 81}, "name"),
    ("empty name", {"slug": "acme", "name": ""}, "name"),
    ("blank name", {"slug": "acme", "name": "   "}, "name"),
    ("control characters", {"slug": "acme", "name": "a\x00b"}, "name"),
    ("wrong plan", {"slug": "acme", "name": "Acme", "plan": "platinum"}, "plan"),
    ("not an object", ["acme"], "body"),
    ("null", None, "body"),
]


@pytest.mark.parametrize(("case", "body", "field"), WORKSPACE_BODIES, ids=[c[0] for c in WORKSPACE_BODIES])
async def test_bad_workspace_bodies_name_the_field(
    tenants_api: TenantsApi, case: str, body: Any, field: str
) -> None:
    r = await tenants_api.post("/v1/workspaces", as_="alice", json=body)
    assert r.status == 400, r.body
    assert r.error() == {"code": "bad_request", "field": field, "message": r.error()["message"]}


RAW_BODIES: list[tuple[str, bytes, str | None]] = [
    ("invalid json", b'{"slug": "acme",', "application/json"),
    ("invalid utf-8", b'{"slug": "\xff\xfe"}', "application/json"),
    ("deep nesting", b"[" * 50_000 + b"]" * 50_000, "application/json"),
    ("huge integer", b'{"slug": ' + b"9" * 5000 + b"}", "application/json"),
    ("wrong content type", b'{"slug": "acme", "name": "Acme"}', "text/plain"),
    ("form encoded", b"slug=acme&name=Acme", "application/x-www-form-urlencoded"),
    ("no content type", b'{"slug": "acme", "name": "Acme"}', None),
    ("empty", b"", "application/json"),
]


@pytest.mark.parametrize(("case", "raw", "ctype"), RAW_BODIES, ids=[c[0] for c in RAW_BODIES])
async def test_undecodable_bodies_are_400_body(
    tenants_api: TenantsApi, case: str, raw: bytes, ctype: str | None
) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    r = await tenants_api.post("/v1/workspaces", as_="alice", data=raw, headers=headers)
    assert r.status == 400, r.body
    assert r.error()["field"] == "body"


async def test_bad_member_channel_and_path_input(tenants_api: TenantsApi) -> None:
    api = tenants_api
    await api.workspace("acme")
    bob = await api.member("acme", "bob")
    ch = await api.channel("acme", "general")
    cases: list[tuple[str, str, Any, str]] = [
        ("POST", "/v1/workspaces/acme/members", {"subject": "dev|x", "role": "boss"}, "role"),
        ("POST", "/v1/workspaces/acme/members", {"role": "member"}, "subject"),
        ("POST", "/v1/workspaces/acme/members", {"subject": "has space"}, "subject"),
        ("POST", "/v1/workspaces/acme/members", {"subject": "dev|x", "name": 7}, "name"),
        ("PATCH", f"/v1/workspaces/acme/members/{bob}", {"role": None}, "role"),
        ("PATCH", f"/v1/workspaces/acme/members/{bob}", {}, "role"),
        ("PATCH", "/v1/workspaces/acme/members/not-a-uuid", {"role": "admin"}, "user_id"),
        ("DELETE", "/v1/workspaces/acme/members/not-a-uuid", None, "user_id"),
        ("POST", "/v1/workspaces/acme/channels", {"name": "Has Caps", "kind": "public"}, "name"),
        ("POST", "/v1/workspaces/acme/channels", {"name": "x" * 81}, "name"),
        ("POST", "/v1/workspaces/acme/channels", {"name": "ok", "kind": "voice"}, "kind"),
        ("POST", "/v1/workspaces/acme/channels", {"kind": "public"}, "name"),
        (
            "POST",
            "/v1/workspaces/acme/channels",
            {"name": "ok", "kind": "private", "members": ["nope"]},
            "members",
        ),
        (
            "POST",
            "/v1/workspaces/acme/channels",
            {"name": "ok", "kind": "private", "members": [str(uuid.uuid4())]},
            "members",
        ),
        ("POST", "/v1/workspaces/acme/channels", {"name": "ok", "members": [str(bob)]}, "members"),
        ("POST", "/v1/workspaces/acme/channels", {"kind": "direct"}, "members"),
        (
            "POST",
            "/v1/workspaces/acme/channels",
            {"kind": "direct", "members": [str(bob), str(uuid.uuid4())]},
            "members",
        ),
        ("POST", "/v1/workspaces/acme/channels/xyz/archive", None, "channel_id"),
        ("POST", f"/v1/workspaces/acme/channels/{ch['id']}/members", {"user_id": "1"}, "user_id"),
        ("POST", f"/v1/workspaces/acme/channels/{ch['id']}/members", {"user_id": str(bob)}, "channel_id"),
        ("DELETE", f"/v1/workspaces/acme/channels/{ch['id']}/members/bob", None, "user_id"),
        ("GET", "/v1/workspaces/acme/channels/xyz/messages", None, "channel_id"),
        ("GET", "/v1/workspaces/acme/channels/xyz/presence", None, "channel_id"),
    ]
    for method, path, body, field in cases:
        kwargs = {"json": body} if body is not None else {}
        r = await api.call(method, path, as_="alice", **kwargs)
        assert (r.status, r.error()["field"]) == (400, field), (method, path, body, r.body)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"cursor": "!!!"}, "cursor"),
        ({"cursor": "MTA"}, "cursor"),  # base64 of "10": not a cursor this server made
        ({"cursor": "bzA"}, "cursor"),  # offset 0
        ({"cursor": "x" * 65}, "cursor"),
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "9" * 400}, "limit"),
        ({"limit": ["1", "2"]}, "limit"),
        ({"since": "yesterday"}, "since"),
    ],
)
async def test_bad_history_queries(tenants_api: TenantsApi, query: dict[str, Any], field: str) -> None:
    api = tenants_api
    await api.workspace("acme")
    ch = await api.channel("acme", "general")
    r = await api.get(f"/v1/workspaces/acme/channels/{ch['id']}/messages", as_="alice", query_string=query)
    assert (r.status, r.error()["field"]) == (400, field), r.body


async def test_bad_channel_list_query(tenants_api: TenantsApi) -> None:
    api = tenants_api
    await api.workspace("acme")
    r = await api.get("/v1/workspaces/acme/channels", as_="alice", query_string={"include_archived": "maybe"})
    assert (r.status, r.error()["field"]) == (400, "include_archived")


async def test_unknown_routes_and_methods_answer_json(tenants_api: TenantsApi) -> None:
    api = tenants_api
    r = await api.get("/v1/nowhere", as_="alice")
    assert r.status == 404 and r.error()["code"] == "not_found"
    r = await api.call("PUT", "/v1/workspaces", as_="alice")
    assert r.status == 405 and r.error()["code"] == "method_not_allowed"
    assert "POST" in r.headers["Allow"]


# -- conflicts and quotas --------------------------------------------------------------------------------
async def test_conflicts(tenants_api: TenantsApi) -> None:
    api = tenants_api
    await api.workspace("acme")
    r = await api.post("/v1/workspaces", as_="bob", json={"slug": "acme", "name": "Again"})
    assert (r.status, r.error()["code"], r.error()["field"]) == (409, "conflict", "slug")
    bob = await api.member("acme", "bob")
    r = await api.post("/v1/workspaces/acme/members", as_="alice", json={"subject": "dev|bob"})
    assert (r.status, r.error()["field"]) == (409, "subject")
    await api.channel("acme", "general")
    r = await api.post("/v1/workspaces/acme/channels", as_="bob", json={"name": "general", "kind": "private"})
    assert (r.status, r.error()["field"]) == (409, "name")
    await api.channel("acme", "x", kind="direct", members=[bob])
    members = (await api.get("/v1/workspaces/acme/members", as_="alice")).body["members"]
    alice = next(m["user_id"] for m in members if m["name"] == "Alice")
    # the DM between two people exists whoever asks for it
    r = await api.post("/v1/workspaces/acme/channels", as_="bob", json={"kind": "direct", "members": [alice]})
    assert (r.status, r.error()["code"], r.error()["field"]) == (409, "conflict", "members")


async def test_plan_quotas(tenants_api: TenantsApi, monkeypatch: pytest.MonkeyPatch) -> None:
    api = tenants_api
    monkeypatch.setitem(
        PLANS,
        "free",
        Plan(
            "free", max_members=2, max_channels=2, max_connections=10, messages_per_second=1, retention_days=1
        ),
    )
    await api.workspace("acme")
    await api.member("acme", "bob")
    r = await api.post("/v1/workspaces/acme/members", as_="alice", json={"subject": "dev|carol"})
    assert (r.status, r.error()["code"]) == (409, "quota_exceeded")
    await api.channel("acme", "one")
    await api.channel("acme", "two", kind="private")
    r = await api.post("/v1/workspaces/acme/channels", as_="alice", json={"name": "three"})
    assert (r.status, r.error()["code"], r.error()["field"]) == (409, "quota_exceeded", "channels")
    await api.workspace("roomy", plan="pro")  # other plans are unaffected
    await api.member("roomy", "bob")
    await api.member("roomy", "carol")


# -- channel membership ----------------------------------------------------------------------------------
async def test_private_channel_membership(tenants_api: TenantsApi) -> None:
    api = tenants_api
    await api.workspace("acme")
    bob = await api.member("acme", "bob")
    carol = await api.member("acme", "carol")
    dan = await api.member("acme", "dan", role="admin")
    secret = await api.channel("acme", "secret", kind="private", as_="bob")
    path = f"/v1/workspaces/acme/channels/{secret['id']}"

    # outsiders do not learn the channel exists
    assert (await api.get(path + "/messages", as_="carol")).status == 404
    assert (await api.post(path + "/members", as_="carol", json={"user_id": str(carol)})).status == 404
    r = await api.post(path + "/members", as_="bob", json={"user_id": str(carol)})
    assert r.status == 200 and set(r.body["members"]) == {str(bob), str(carol)}
    assert (await api.get(path + "/messages", as_="carol")).status == 200
    # admins manage private channels they are not in
    assert (await api.delete(path + f"/members/{carol}", as_="dan")).status == 204
    assert (await api.get(path + "/messages", as_="carol")).status == 404  # cache invalidated at once
    assert (await api.delete(path + f"/members/{carol}", as_="dan")).status == 404
    r = await api.post(path + "/members", as_="bob", json={"user_id": str(uuid.uuid4())})
    assert (r.status, r.error()["field"]) == (400, "user_id")
    assert (await api.post(path + "/members", as_="dan", json={"user_id": str(dan)})).status == 200
    # removing someone from the workspace removes them from its private channels
    assert (await api.delete(f"/v1/workspaces/acme/members/{dan}", as_="alice")).status == 204
    members = (await api.post(path + "/members", as_="bob", json={"user_id": str(bob)})).body["members"]
    assert members == [str(bob)]
    # archived: no new members
    assert (await api.post(path + "/archive", as_="bob")).status == 200
    r = await api.post(path + "/members", as_="bob", json={"user_id": str(carol)})
    assert r.status == 403


# -- history ---------------------------------------------------------------------------------------------
async def _seed_messages(
    api: TenantsApi, slug: str, channel_id: str, author: uuid.UUID, n: int
) -> list[Message]:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    async with api.services.store.unit_of_work() as uow:
        ws = await uow.workspaces.get_by_slug(slug)
        assert ws is not None
        messages = [
            Message(
                id=uuid.uuid4(),
                workspace_id=ws.id,
                channel_id=uuid.UUID(channel_id),
                author_id=author,
                body=f"message {i}",
                offset=i,
                created_at=start + timedelta(seconds=i),
                client_msg_id=f"c{i}",
            )
            for i in range(1, n + 1)
        ]
        assert await uow.messages.add_many(messages) == n
        await uow.reactions.add(Reaction(ws.id, messages[-1].id, author, "tada"))
        await uow.messages.delete(ws.id, messages[0].id, start)
        await uow.commit()
    return messages


async def test_history_pages_walk_back_without_overlap(tenants_api: TenantsApi) -> None:
    api = tenants_api
    await api.workspace("acme")
    bob = await api.member("acme", "bob")
    ch = await api.channel("acme", "general")
    messages = await _seed_messages(api, "acme", ch["id"], bob, 23)
    path = f"/v1/workspaces/acme/channels/{ch['id']}/messages"

    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        query: dict[str, Any] = {"limit": 10} | ({"cursor": cursor} if cursor else {})
        r = await api.get(path, as_="bob", query_string=query)
        assert r.status == 200, r.body
        pages += 1
        offsets = [m["offset"] for m in r.body["messages"]]
        assert offsets == sorted(offsets, reverse=True)
        seen += offsets
        cursor = r.body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and seen == list(range(23, 0, -1))

    newest = (await api.get(path, as_="bob", query_string={"limit": 1})).body["messages"][0]
    assert newest == {
        "id": str(messages[-1].id),
        "offset": 23,
        "author": str(bob),
        "author_name": "Bob",
        "text": "message 23",
        "ts": messages[-1].created_at.timestamp(),
        "cmid": "c23",
        "thread": None,
        "edited_ts": None,
        "deleted": False,
        "reactions": {"tada": 1},
        "mine": ["tada"],  # bob reacted with it
    }
    assert (await api.get(path, as_="bob", query_string={"limit": 1})).body["offset"] == 23  # the page reflects
    oldest = (await api.get(path, as_="bob", query_string={"cursor": service.encode_cursor(2)})).body
    assert oldest["next_cursor"] is None
    assert [(m["offset"], m["deleted"], m["text"]) for m in oldest["messages"]] == [(1, True, "")]
    # exactly one full page: no cursor to an empty page
    full = (await api.get(path, as_="bob", query_string={"limit": 23})).body
    assert len(full["messages"]) == 23 and full["next_cursor"] is None
    default = (await api.get(path, as_="bob")).body
    assert len(default["messages"]) == 23


async def test_history_of_unknown_or_hidden_channels_is_404(tenants_api: TenantsApi) -> None:
    api = tenants_api
    await api.workspace("acme")
    await api.workspace("beta")
    await api.member("acme", "bob")
    secret = await api.channel("acme", "secret", kind="private")
    foreign = await api.channel("beta", "general")
    for channel_id in (secret["id"], foreign["id"], str(uuid.uuid4())):
        r = await api.get(f"/v1/workspaces/acme/channels/{channel_id}/messages", as_="bob")
        assert (r.status, r.error()["code"]) == (404, "not_found"), channel_id


def test_cursor_round_trip() -> None:
    for offset in (1, 9, 10, 12345678901234567):
        assert service.decode_cursor(service.encode_cursor(offset)) == offset


# -- presence --------------------------------------------------------------------------------------------
async def test_presence_and_online(tenants_api: TenantsApi) -> None:
    api = tenants_api
    await api.workspace("acme")
    bob = await api.member("acme", "bob")
    general = await api.channel("acme", "general")
    secret = await api.channel("acme", "secret", kind="private")
    cache = api.services.cache
    await cache.presence_add("acme", general["id"], "conn-1", PresenceEntry(str(bob), "Bob"), 60)
    await cache.presence_add("acme", general["id"], "conn-2", PresenceEntry(str(bob), "Bob"), 60)
    await cache.presence_add("acme", "_workspace", "conn-1", PresenceEntry(str(bob), "Bob"), 60)
    await cache.presence_add("beta", "_workspace", "conn-9", PresenceEntry("x", "Other tenant"), 60)

    r = await api.get(f"/v1/workspaces/acme/channels/{general['id']}/presence", as_="alice")
    assert r.status == 200 and r.body == {"users": [{"id": str(bob), "name": "Bob"}]}
    r = await api.get("/v1/workspaces/acme/online", as_="alice")
    assert r.body == {"users": [{"id": str(bob), "name": "Bob"}]}
    r = await api.get(f"/v1/workspaces/acme/channels/{secret['id']}/presence", as_="alice")
    assert r.body == {"users": []}
    assert (await api.get(f"/v1/workspaces/acme/channels/{secret['id']}/presence", as_="bob")).status == 404


# -- documentation, health, unexpected errors ------------------------------------------------------------
async def test_openapi_lists_every_path(tenants_api: TenantsApi) -> None:
    r = await tenants_api.get("/openapi.json")
    assert r.status == 200
    doc = r.body
    assert doc["info"]["title"] == "STORM tenants API"
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    expected = {
        "/v1/workspaces": {"get", "post"},
        "/v1/workspaces/{slug}": {"get", "delete"},
        "/v1/workspaces/{slug}/members": {"get", "post"},
        "/v1/workspaces/{slug}/members/{user_id}": {"patch", "delete"},
        "/v1/workspaces/{slug}/channels": {"get", "post"},
        "/v1/workspaces/{slug}/channels/{channel_id}/archive": {"post"},
        "/v1/workspaces/{slug}/channels/{channel_id}/members": {"post"},
        "/v1/workspaces/{slug}/channels/{channel_id}/members/{user_id}": {"delete"},
        "/v1/workspaces/{slug}/channels/{channel_id}/messages": {"get"},
        "/v1/workspaces/{slug}/channels/{channel_id}/presence": {"get"},
        "/v1/workspaces/{slug}/online": {"get"},
        "/healthz": {"get"},
    }
    for path, methods in expected.items():
        assert path in doc["paths"], path
        assert methods <= set(doc["paths"][path]), (path, doc["paths"][path].keys())
    post = doc["paths"]["/v1/workspaces"]["post"]
    assert (
        post["security"] == [{"bearer": []}]
        and "requestBody" in post
        and "201" in {str(k) for k in post["responses"]}
    )
    assert doc["paths"]["/healthz"]["get"]["security"] == []


async def test_healthz(tenants_api: TenantsApi, tenants_services: Services) -> None:
    assert (await tenants_api.get("/healthz")).body == {"status": "ok"}
    down = dataclasses.replace(tenants_services, store=_DownStore())  # a fresh, unstarted copy
    r = await create_app(down).test_client().get("/healthz")
    assert r.status_code == 503 and (await r.get_json()) == {"status": "unavailable"}


class _DownStore:
    async def ping(self) -> None:
        raise Unavailable("database unreachable")


async def test_unexpected_errors_are_logged_500s(
    tenants_api: TenantsApi, tenants_errors: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def boom(*args: Any) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(service, "list_workspaces", boom)
    r = await tenants_api.get("/v1/workspaces", as_="alice")
    assert r.status == 500 and r.error() == {"code": "internal", "message": "internal error"}
    assert len(tenants_errors) == 1 and "RuntimeError" in tenants_errors[0].getMessage()
    tenants_errors.clear()
