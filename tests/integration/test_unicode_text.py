"""Everything acknowledged is storable (issue 13): arbitrary Unicode text is published through the chat
rules (``Chat.publish``, what the WebSocket ``publish`` and incoming webhooks run) on services whose store
is the real PostgreSQL, and the persistence worker stores it (marked ``integration``).

A text the chat accepts is acknowledged and then found in history unchanged; a text it refuses is refused
with ``bad_request`` on field ``text`` before anything reaches the channel log, and is one PostgreSQL
cannot hold (NUL, which it refuses in text; a lone surrogate, which has no UTF-8 form).  Hypothesis drives
a synchronous test (``@given`` cannot wrap a coroutine), with one event loop held by an ``asyncio.Runner``
for the module."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.exc import DBAPIError

from consumers.persistence import PersistenceWorker
from storm.bootstrap import Services, build_services
from storm.config import Config
from storm.directory import Principal
from storm.domain import Channel, Message, Workspace
from storm.errors import BadRequest, StormError
from storm.ports.identity import Claims
from storm.ports.store import UnitOfWork
from storm.protocol.chat import history_page
from storm.protocol.context import SessionContext
from tenants import service

pytestmark = pytest.mark.integration


@dataclass
class _World:
    runner: asyncio.Runner
    services: Services
    ctx: SessionContext
    owner: Principal
    channel: Channel

    def publish(self, text: str) -> tuple[str, int] | BadRequest:
        async def go() -> tuple[str, int] | BadRequest:
            try:
                posted = await self.ctx.chat.publish(self.owner, self.channel, cmid=uuid.uuid4().hex, text=text,
                                                     thread=None)
            except BadRequest as exc:
                return exc
            assert posted.offset is not None
            return posted.message_id, posted.offset

        return self.runner.run(go())

    def stored_text(self, message_id: str) -> str:
        async def go() -> str:
            for _ in range(500):
                async with self.services.store.unit_of_work() as uow:
                    msg = await uow.messages.get(self.owner.workspace.id, uuid.UUID(message_id))
                if msg is not None:
                    page = await history_page(self.services.store, self.owner.workspace.id, self.channel.id,
                                              before=msg.offset + 1, limit=1)
                    return page.messages[0].text
                await asyncio.sleep(0.01)
            raise AssertionError("the persistence worker did not store an acknowledged message")

        return self.runner.run(go())


@pytest.fixture(scope="module")
def world(pg_url: str) -> Iterator[_World]:
    with asyncio.Runner() as runner:
        services = build_services(Config.from_env({}, database_url=pg_url))
        runner.run(services.start())
        worker = PersistenceWorker(services)
        runner.run(worker.start())
        slug = f"uni-{uuid.uuid4().hex[:12]}"
        claims = Claims(subject=f"test|{uuid.uuid4().hex}", workspace=slug, name="U", expires_at=2e9,
                        scopes=frozenset({"workspaces:create"}))
        runner.run(service.create_workspace(services, claims, slug=slug, name="Unicode", plan="enterprise"))
        owner = runner.run(services.directory.principal(claims))
        channel = runner.run(service.create_channel(services, owner, name="general", kind="public", members=None))
        ctx = SessionContext(config=services.config, clock=services.clock, broker=services.broker,
                             cache=services.cache, store=services.store, identity=services.identity,
                             directory=services.directory, hub=None)  # type: ignore[arg-type]
        try:
            yield _World(runner, services, ctx, owner, channel)
        finally:
            runner.run(service.delete_workspace(services, owner))
            runner.run(worker.stop())
            runner.run(services.stop())


def _unstorable(text: str) -> bool:
    return "\x00" in text or any(0xD800 <= ord(ch) <= 0xDFFF for ch in text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(codec=None), min_size=1, max_size=300))
def test_an_acknowledged_text_reaches_history_unchanged(world: _World, text: str) -> None:
    head = world.runner.run(world.services.broker.head(world.owner.workspace.slug, str(world.channel.id)))
    outcome = world.publish(text)
    if isinstance(outcome, BadRequest):
        assert outcome.field == "text" and _unstorable(text), (text, outcome.message)
        after = world.runner.run(world.services.broker.head(world.owner.workspace.slug, str(world.channel.id)))
        assert after == head  # nothing reached the channel log
    else:
        assert not _unstorable(text)
        assert world.stored_text(outcome[0]) == text


def test_postgresql_itself_refuses_nul_in_text(world: _World) -> None:
    """Why the check exists: without it, the acknowledged message could never be stored."""
    ws: Workspace = world.owner.workspace
    msg = Message(id=uuid.uuid4(), workspace_id=ws.id, channel_id=world.channel.id, author_id=world.owner.user.id,
                  body="a\x00b", offset=2**60, created_at=ws.created_at)

    async def write(uow: UnitOfWork) -> int:
        return await uow.messages.add_many([msg])

    with pytest.raises((StormError, DBAPIError)):
        world.runner.run(world.services.store.run(write))
