"""Everything acknowledged is storable: arbitrary Unicode text, through the check the chat applies before
publishing (``storm.domain.unstorable``) and into the real PostgreSQL store (marked ``integration``).

Text the check accepts is stored and read back unchanged; text it refuses is text PostgreSQL cannot hold
(it refuses NUL in text; a lone surrogate cannot be encoded as UTF-8), so the refusal is not arbitrary.
Hypothesis drives a synchronous test (``@given`` cannot wrap a coroutine), with one event loop held by an
``asyncio.Runner`` for the whole module."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.exc import DBAPIError

from db.store import SqlStore
from storm.domain import Message, Workspace, unstorable
from storm.errors import StormError
from storm.ports.store import UnitOfWork

pytestmark = pytest.mark.integration


class _Pg:
    def __init__(self, runner: asyncio.Runner, store: SqlStore, ws: Workspace) -> None:
        self.runner, self.store, self.ws = runner, store, ws
        self.offset = 0

    def roundtrip(self, text: str) -> str | None:
        """Store ``text`` as a message body and read it back."""
        self.offset += 1
        msg = Message(id=uuid.uuid4(), workspace_id=self.ws.id, channel_id=self.ws.id, author_id=self.ws.id,
                      body=text, offset=self.offset, created_at=datetime.now(UTC))

        async def go() -> str | None:
            async def write(uow: UnitOfWork) -> int:
                return await uow.messages.add_many([msg])

            await self.store.run(write)
            async with self.store.unit_of_work() as uow:
                stored = await uow.messages.get(self.ws.id, msg.id)
            return None if stored is None else stored.body

        return self.runner.run(go())


@pytest.fixture(scope="module")
def pg(pg_url: str) -> Iterator[_Pg]:
    with asyncio.Runner() as runner:
        store = SqlStore(pg_url)
        runner.run(store.start())
        ws = Workspace(id=uuid.uuid4(), slug=f"uni-{uuid.uuid4().hex[:12]}", name="U")

        async def add(uow: UnitOfWork) -> None:
            await uow.workspaces.add(ws)

        runner.run(store.run(add))
        try:
            yield _Pg(runner, store, ws)
        finally:
            async def drop(uow: UnitOfWork) -> None:
                await uow.workspaces.delete(ws.id)

            runner.run(store.run(drop))
            runner.run(store.stop())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(alphabet=st.characters(codec=None), min_size=1, max_size=200))
def test_accepted_text_is_stored_unchanged_and_refused_text_is_unstorable(pg: _Pg, text: str) -> None:
    why = unstorable(text)
    if why is None:
        assert pg.roundtrip(text) == text
    else:
        assert "\x00" in text or any(0xD800 <= ord(ch) <= 0xDFFF for ch in text), why
        with pytest.raises((StormError, DBAPIError, UnicodeError, ValueError)):  # the store would have lost it
            pg.roundtrip(text)


def test_nul_is_refused_by_postgresql_without_the_check(pg: _Pg) -> None:
    with pytest.raises((StormError, DBAPIError, ValueError)):
        pg.roundtrip("a\x00b")
