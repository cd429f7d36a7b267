"""A gateway reads a channel's newest history page once for the requests that arrive while it is read, and
with ``STORM_HISTORY_SHARE_S`` keeps it that long (storm/protocol/chat.py, ``SharedPages``): during a ramp
hundreds of connects a second fetch the same channel's newest page, and each used to be a store transaction
of four statements.  What a client sees stays right: the same page as the store's, its own reactions in
``mine``, by default a page read after its request arrived (or during it), with ``share_s`` a page at most
that old that carries the offset it reflects, and older pages read as before."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from storm.adapters.memory_store import MemoryStore
from storm.domain import Channel, ChannelKind, Message, Reaction, User, Workspace
from storm.errors import Unavailable
from storm.ports.clock import ManualClock
from storm.protocol.chat import SharedPages, history_page

WS = Workspace(id=uuid.uuid4(), slug="share", name="Share", plan="pro")
CH = Channel(id=uuid.uuid4(), workspace_id=WS.id, name="general", kind=ChannelKind.PUBLIC)
ALICE = User(id=uuid.uuid4(), subject="dev|alice", name="alice")
BOB = User(id=uuid.uuid4(), subject="dev|bob", name="bob")
START = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


class CountingStore(MemoryStore):
    """The memory store, counting the units of work opened (a SQL store's transactions); ``fail`` makes
    the next ones raise as an unreachable database would."""

    def __init__(self) -> None:
        super().__init__()
        self.units = 0
        self.fail = False

    def unit_of_work(self, *, read_only: bool = False) -> Any:
        self.units += 1
        if self.fail:
            raise Unavailable("database unreachable")
        return super().unit_of_work(read_only=read_only)


async def _add(store: MemoryStore, *messages: Message) -> None:
    async with store.unit_of_work() as uow:
        await uow.messages.add_many(list(messages))
        await uow.commit()


def _message(offset: int, author: User = BOB) -> Message:
    return Message(uuid.uuid4(), WS.id, CH.id, author.id, f"m{offset}", offset, START + timedelta(seconds=offset))


@pytest.fixture
async def store() -> AsyncIterator[CountingStore]:
    s = CountingStore()
    await s.start()
    async with s.unit_of_work() as uow:
        await uow.workspaces.add(WS)
        await uow.channels.add(CH)
        for user in (ALICE, BOB):
            await uow.users.add(user)
        await uow.commit()
    await _add(s, *(_message(n) for n in range(1, 41)))
    s.units = 0
    yield s
    await s.stop()


async def test_concurrent_requests_for_the_newest_page_share_one_store_read(store: CountingStore) -> None:
    clock = ManualClock()
    pages = SharedPages(store, clock, share_s=1.0)
    got = await asyncio.gather(*(pages.page(WS.id, CH.id, before=None, limit=30, reader=BOB.id) for _ in range(200)))
    assert pages.reads == 1 and store.units == 1  # 200 connects, one transaction (no reaction: no `mine` read)
    direct = await history_page(store, WS.id, CH.id, before=None, limit=30, reader=BOB.id)
    for page in got:  # each one is the store's page, field for field
        assert page == direct
    assert [m.offset for m in got[0].messages] == list(range(40, 10, -1))
    assert got[0].offset == 40 and got[0].next_before == 11


async def test_a_shared_page_is_at_most_share_s_old_and_says_which_offset_it_reflects(
        store: CountingStore) -> None:
    clock = ManualClock()
    pages = SharedPages(store, clock, share_s=1.0)
    first = await pages.page(WS.id, CH.id, before=None, limit=30)
    await _add(store, _message(41))
    clock.advance(0.5)
    within = await pages.page(WS.id, CH.id, before=None, limit=30)
    assert within.offset == 40 and within.messages[0].offset == 40  # shared: the client resumes from 40
    assert pages.reads == 1
    clock.advance(0.6)  # 1.1 s after the read
    after = await pages.page(WS.id, CH.id, before=None, limit=30)
    assert pages.reads == 2
    assert after.offset == 41 and after.messages[0].offset == 41 and first.offset == 40


async def test_each_reader_sees_its_own_reactions_on_a_shared_page(store: CountingStore) -> None:
    async with store.unit_of_work() as uow:
        newest = (await uow.messages.page(WS.id, CH.id, before=None, limit=1))[0]
        await uow.reactions.add(Reaction(WS.id, newest.id, ALICE.id, "tada"))
        await uow.commit()
    pages = SharedPages(store, ManualClock(), share_s=1.0)
    store.units = 0
    alice, bob = await asyncio.gather(pages.page(WS.id, CH.id, before=None, limit=30, reader=ALICE.id),
                                      pages.page(WS.id, CH.id, before=None, limit=30, reader=BOB.id))
    assert pages.reads == 1 and store.units == 1  # the page's reactions read with it: no query per reader
    assert alice.messages[0].reactions == {"tada": 1} and alice.messages[0].mine == ["tada"]
    assert bob.messages[0].reactions == {"tada": 1} and bob.messages[0].mine == []
    assert alice == await history_page(store, WS.id, CH.id, before=None, limit=30, reader=ALICE.id)
    assert bob == await history_page(store, WS.id, CH.id, before=None, limit=30, reader=BOB.id)


async def test_older_pages_are_read_for_each_request(store: CountingStore) -> None:
    pages = SharedPages(store, ManualClock(), share_s=1.0)
    for _ in range(3):
        page = await pages.page(WS.id, CH.id, before=11, limit=30)
        assert [m.offset for m in page.messages] == list(range(10, 0, -1)) and page.next_before is None
    assert pages.reads == 0 and store.units == 3


async def test_by_default_only_concurrent_requests_share_and_a_later_one_sees_what_was_stored(
        store: CountingStore) -> None:
    """The chat page shows a channel it is already subscribed to from a fresh page (no resume from the page's
    offset): a page kept after its read would hide what was stored meanwhile (the browser tests caught it)."""
    pages = SharedPages(store, ManualClock(), share_s=0)
    await asyncio.gather(*(pages.page(WS.id, CH.id, before=None, limit=30) for _ in range(5)))
    assert pages.reads == 1 and store.units == 1  # concurrent: one read
    await _add(store, _message(41))
    page = await pages.page(WS.id, CH.id, before=None, limit=30)  # no clock advance: nothing was kept
    assert pages.reads == 2 and page.offset == 41 and page.messages[0].offset == 41


async def test_a_failed_read_reaches_every_waiter_and_is_not_kept(store: CountingStore) -> None:
    pages = SharedPages(store, ManualClock(), share_s=1.0)
    store.fail = True
    got = await asyncio.gather(*(pages.page(WS.id, CH.id, before=None, limit=30) for _ in range(3)),
                               return_exceptions=True)
    assert all(isinstance(x, Unavailable) for x in got) and pages.reads == 1
    store.fail = False
    page = await pages.page(WS.id, CH.id, before=None, limit=30)  # read again, not an error kept for 1 s
    assert page.offset == 40 and pages.reads == 2


async def test_a_request_that_gives_up_does_not_cancel_the_others(store: CountingStore) -> None:
    pages = SharedPages(store, ManualClock(), share_s=1.0)
    first = asyncio.create_task(pages.page(WS.id, CH.id, before=None, limit=30))
    second = asyncio.create_task(pages.page(WS.id, CH.id, before=None, limit=30))
    await asyncio.sleep(0)
    first.cancel()  # its client went away while the read was in flight
    page = await second
    assert page.offset == 40 and pages.reads == 1
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_the_pages_kept_are_bounded(store: CountingStore) -> None:
    clock = ManualClock()
    pages = SharedPages(store, clock, share_s=1.0, max_pages=2)
    for limit in (10, 20, 30):  # three keys, room for two
        await pages.page(WS.id, CH.id, before=None, limit=limit)
    assert pages.reads == 3 and len(pages._pages) == 2
    await pages.page(WS.id, CH.id, before=None, limit=30)  # the newest is still kept
    assert pages.reads == 3


async def test_a_page_with_more_reactions_than_kept_reads_each_readers_own(store: CountingStore,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("storm.protocol.chat.REACTORS_MAX", 1)
    async with store.unit_of_work() as uow:
        newest = (await uow.messages.page(WS.id, CH.id, before=None, limit=2))
        await uow.reactions.add(Reaction(WS.id, newest[0].id, ALICE.id, "tada"))
        await uow.reactions.add(Reaction(WS.id, newest[1].id, BOB.id, "eyes"))
        await uow.commit()
    pages = SharedPages(store, ManualClock(), share_s=1.0)
    store.units = 0
    alice = await pages.page(WS.id, CH.id, before=None, limit=30, reader=ALICE.id)
    bob = await pages.page(WS.id, CH.id, before=None, limit=30, reader=BOB.id)
    assert pages.reads == 1 and store.units == 3  # the shared read, then one `mine` per reader
    assert [m.mine for m in alice.messages[:2]] == [["tada"], []]
    assert [m.mine for m in bob.messages[:2]] == [[], ["eyes"]]
