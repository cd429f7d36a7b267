"""The tenants API's read state, channel member lists and bulk provisioning (docs/tenants-api.md; issue 13)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from storm.domain import Message, ReadMarker
from tests.service.conftest import TenantsApi


async def _store_messages(api: TenantsApi, slug: str, channel: str, author: uuid.UUID, n: int) -> None:
    async with api.services.store.unit_of_work() as uow:
        ws = await uow.workspaces.get_by_slug(slug)
        assert ws
        await uow.messages.add_many([
            Message(id=uuid.uuid4(), workspace_id=ws.id, channel_id=uuid.UUID(channel), author_id=author,
                    body=f"m{i}", offset=i * 10, created_at=datetime.now(UTC)) for i in range(1, n + 1)])
        await uow.commit()


async def test_unread_lists_every_readable_channel_with_marker_and_count(tenants_api: TenantsApi) -> None:
    api = tenants_api
    await api.workspace("acme")
    bob = await api.member("acme", "bob")
    general = await api.channel("acme", "general")
    secret = await api.channel("acme", "secret", kind="private")  # alice's; bob cannot read it
    await _store_messages(api, "acme", general["id"], bob, 3)
    async with api.services.store.unit_of_work() as uow:
        ws = await uow.workspaces.get_by_slug("acme")
        alice = await uow.users.get_by_subject("dev|alice")
        assert ws and alice
        await uow.read_markers.advance(ReadMarker(ws.id, uuid.UUID(general["id"]), alice.id, 10))
        await uow.commit()
    r = await api.get("/v1/workspaces/acme/unread", as_="alice")
    assert r.status == 200, r.body
    assert {c["channel"]: (c["read"], c["unread"]) for c in r.body["channels"]} == {
        general["id"]: (10, 2), secret["id"]: (0, 0)}
    r = await api.get("/v1/workspaces/acme/unread", as_="bob")
    assert {c["channel"]: (c["read"], c["unread"]) for c in r.body["channels"]} == {general["id"]: (0, 0)}
    assert (await api.get("/v1/workspaces/acme/unread", as_="mallory")).status == 403


async def test_channel_members_are_readable_by_who_can_read_the_channel(tenants_api: TenantsApi) -> None:
    api = tenants_api
    await api.workspace("acme")
    bob = await api.member("acme", "bob")
    carol = await api.member("acme", "carol")
    dm = await api.channel("acme", "ignored", kind="direct", members=[bob])
    general = await api.channel("acme", "general")
    r = await api.get(f"/v1/workspaces/acme/channels/{dm['id']}/members", as_="bob")
    assert r.status == 200, r.body
    alice = (await api.get("/v1/workspaces/acme", as_="alice")).body
    assert len(r.body["members"]) == 2 and str(bob) in r.body["members"]
    assert (await api.get(f"/v1/workspaces/acme/channels/{dm['id']}/members", as_="carol")).status == 404
    r = await api.get(f"/v1/workspaces/acme/channels/{general['id']}/members", as_="carol")
    assert r.status == 200 and len(r.body["members"]) == 3 and str(carol) in r.body["members"]
    assert alice["role"] == "owner"


async def test_bulk_add_is_all_or_nothing_and_lists_every_member(tenants_api: TenantsApi) -> None:
    api = tenants_api
    await api.workspace("acme")
    bob = await api.member("acme", "bob", role="admin")
    path = "/v1/workspaces/acme/members/bulk"
    body = {"members": [{"subject": f"dev|u{i}", "name": f"U {i}"} for i in range(20)]
            + [{"subject": "dev|bob", "role": "member"}]}
    r = await api.post(path, as_="alice", json=body)
    assert r.status == 200, r.body
    assert len(r.body["members"]) == 21
    assert {m["user_id"]: m["role"] for m in r.body["members"]}[str(bob)] == "admin"  # unchanged
    assert len((await api.get("/v1/workspaces/acme/members", as_="alice")).body["members"]) == 22
    over = {"members": [{"subject": f"dev|v{i}"} for i in range(40)]}  # free plan: 50 members
    r = await api.post(path, as_="alice", json=over)
    assert r.status == 409 and r.error()["code"] == "quota_exceeded"
    assert len((await api.get("/v1/workspaces/acme/members", as_="alice")).body["members"]) == 22  # none added
    r = await api.post(path, as_="alice", json={"members": [{"subject": "dev|x"}, {"subject": "dev|x"}]})
    assert r.status == 400 and r.error()["field"] == "members"
    r = await api.post(path, as_="bob", json={"members": [{"subject": "dev|y", "role": "owner"}]})
    assert r.status == 403
    assert (await api.post(path, as_="alice", json={"members": []})).status == 400
