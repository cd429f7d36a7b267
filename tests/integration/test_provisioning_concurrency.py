"""Provisioning under concurrency on PostgreSQL (SERIALIZABLE, as CockroachDB): 50 concurrent member
adds to one workspace all succeed, and the bulk add provisions many members in one request, both within
the plan's quota (marked ``integration``; issue 13)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from storm.bootstrap import Services, build_services
from storm.config import Config
from storm.directory import Principal
from storm.errors import QuotaExceeded
from storm.ports.identity import Claims
from tenants import service

pytestmark = pytest.mark.integration


@pytest.fixture
async def pg_services(pg_url: str) -> AsyncIterator[Services]:
    services = build_services(Config.from_env({}, database_url=pg_url))
    await services.start()
    try:
        yield services
    finally:
        await services.stop()


async def _owner(services: Services, plan: str = "enterprise") -> Principal:
    slug = f"prov-{uuid.uuid4().hex[:12]}"
    claims = Claims(subject=f"test|{uuid.uuid4().hex}", workspace=slug, name="Owner", expires_at=2e9,
                    scopes=frozenset({"workspaces:create"}))
    await service.create_workspace(services, claims, slug=slug, name="Prov", plan=plan)
    return await services.directory.principal(claims)


async def test_fifty_concurrent_member_adds_to_one_workspace_all_succeed(pg_services: Services) -> None:
    owner = await _owner(pg_services)
    subjects = [f"test|{uuid.uuid4().hex}" for _ in range(50)]
    results = await asyncio.gather(*(service.add_member(pg_services, owner, subject=s, name=None, role="member")
                                     for s in subjects), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert failures == [], failures[:3]
    members = await service.list_members(pg_services, owner)
    assert len(members) == 51
    await service.delete_workspace(pg_services, owner)


async def test_concurrent_adds_never_exceed_the_plan_quota(pg_services: Services) -> None:
    owner = await _owner(pg_services, plan="free")  # 50 members, the owner included
    results = await asyncio.gather(*(service.add_member(pg_services, owner, subject=f"test|{uuid.uuid4().hex}",
                                                        name=None, role="member") for _ in range(60)),
                                   return_exceptions=True)
    refused = [r for r in results if isinstance(r, QuotaExceeded)]
    others = [r for r in results if isinstance(r, BaseException) and not isinstance(r, QuotaExceeded)]
    assert others == [], others[:3]
    added = [r for r in results if not isinstance(r, BaseException)]
    members = await service.list_members(pg_services, owner)
    assert len(members) <= 50 and len(added) + len(refused) == 60
    assert {m.user_id for m in members} == {owner.user.id} | {v.user_id for v in added}  # no refused one stayed
    await service.delete_workspace(pg_services, owner)


async def test_bulk_add_provisions_thousands_of_members(pg_services: Services) -> None:
    owner = await _owner(pg_services)
    added = 0
    for batch in range(3):  # 3000 members, in requests of 1000
        entries = [(f"test|bulk-{batch}-{i}-{uuid.uuid4().hex[:8]}", f"Member {i}", "member") for i in range(1000)]
        views = await service.add_members(pg_services, owner, entries)
        assert len(views) == 1000
        added += len(views)
    again = await service.add_members(pg_services, owner, [(v, None, "admin") for v in [owner.claims.subject]])
    assert [v.role.value for v in again] == ["owner"]  # already there: unchanged
    assert len(await service.list_members(pg_services, owner)) == added + 1
    await service.delete_workspace(pg_services, owner)
