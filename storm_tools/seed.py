"""Demo data for `storm dev` and the benchmarks: deterministic ids, so tools can address them by name."""

from __future__ import annotations

import uuid

from storm.bootstrap import Services
from storm.domain import Channel, ChannelKind, Membership, Role, User, Workspace
from storm.errors import Conflict
from storm.ports.store import Store, UnitOfWork

_NS = uuid.UUID("6f1c5f7e-3b1e-4c55-9a55-5b7f2f0c9e11")
DEMO_WORKSPACE = "demo"
DEMO_USERS = ("alice", "bob", "carol", "dave")
DEMO_CHANNELS = ("general", "random", "bench")


def demo_id(*parts: str) -> uuid.UUID:
    """Stable UUID of a demo object, e.g. demo_id("channel", "demo", "general")."""
    return uuid.uuid5(_NS, "/".join(parts))


def channel_id(workspace: str, name: str) -> str:
    return str(demo_id("channel", workspace, name))


async def seed_demo(store: Store, workspace: str = DEMO_WORKSPACE, plan: str = "enterprise") -> Workspace:
    """Create the demo workspace, its users and channels unless they exist.  Idempotent."""
    ws = Workspace(id=demo_id("workspace", workspace), slug=workspace, name=f"{workspace.title()} workspace",
                   plan=plan)

    async def create(uow: UnitOfWork) -> Workspace:
        existing = await uow.workspaces.get_by_slug(workspace)
        if existing is not None:
            return existing
        await uow.workspaces.add(ws)
        for i, handle in enumerate(DEMO_USERS):
            user = await uow.users.get_by_subject(f"dev|{handle}")
            if user is None:
                user = User(id=demo_id("user", handle), subject=f"dev|{handle}", name=handle.title())
                await uow.users.add(user)
            await uow.memberships.add(Membership(ws.id, user.id, Role.OWNER if i == 0 else Role.MEMBER))
        for name in DEMO_CHANNELS:
            await uow.channels.add(Channel(id=demo_id("channel", workspace, name), workspace_id=ws.id,
                                           name=name, kind=ChannelKind.PUBLIC))
        return ws

    try:
        return await store.run(create)
    except Conflict:  # a concurrent seeder won the race
        async with store.unit_of_work() as uow:
            found = await uow.workspaces.get_by_slug(workspace)
        assert found is not None
        return found


async def seed_hook(services: Services) -> None:
    """A start-up hook (``gateway.app.create_app(on_start=...)``): seed the demo workspace when the config
    asks for it, and make sure its broker tenant exists."""
    if not services.config.seed_demo:
        return
    ws = await seed_demo(services.store)
    await services.broker.ensure_workspace(ws.slug, ws.quotas)
