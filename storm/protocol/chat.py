"""The chat rules, one place for both ways in: the WebSocket session (storm/protocol/session.py) and the
tenants API (tenants/service.py).  No socket, no HTTP.

* **Writes** (:class:`Chat`): publish with a client message id (``cmid``, storm/protocol/claims.py), edit
  (the author only), delete (the author or an admin), react, and read markers (never moved back).  Every
  write is one event in the channel's log; the persistence worker stores it (docs/delivery.md).  The caller
  has checked that the principal may write the channel (``Directory.check_channel_access(write=True)``)
  and applied its rate limits.
* **History** (:func:`history_page`): a page of a channel's stored messages, newest first, as
  :class:`~storm.protocol.events.HistoryMessage`.  The WebSocket ``history`` command sends them as they are;
  ``GET /v1/…/messages`` turns each into its JSON body field for field, so both agree (a message whose
  author has no user record shows ``author_name`` :data:`UNKNOWN_AUTHOR` on both;
  tests/service/test_history.py).  The caller has checked that the principal may read the channel.
  A gateway reads a channel's newest page once for the requests that arrive while it is read
  (:class:`SharedPages`; kept longer with ``STORM_HISTORY_SHARE_S``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec

from storm.directory import Principal
from storm.domain import Channel, Message, Reaction, ReadMarker, Role, unstorable
from storm.errors import BadRequest, Conflict, Forbidden, NotFound
from storm.ports.broker import Broker
from storm.ports.clock import Clock
from storm.ports.store import Store, UnitOfWork
from storm.protocol import events as e
from storm.protocol.claims import NOT_SENT, CmidClaims, Duplicate, InFlight, MessageRef

UNKNOWN_AUTHOR = ""  # author_name of a message whose author has no user record (the client picks a label)


@dataclass(frozen=True, slots=True)
class Posted:
    """A write's place in the channel log: what its ``ack`` says."""

    message_id: str
    offset: int | None  # None: the command changed nothing (a repeated or void reaction), no event
    duplicate: bool = False  # a publish whose cmid was already published: the original message


class Chat:
    def __init__(self, store: Store, broker: Broker, clock: Clock, cmids: CmidClaims) -> None:
        self._store = store
        self._broker = broker
        self._clock = clock
        self._cmids = cmids

    async def publish(self, p: Principal, ch: Channel, *, cmid: str, text: str, thread: str | None) -> Posted:
        """One message per (author, channel, cmid): a retry gets the first attempt's message back."""
        channel = str(ch.id)
        _check_storable(text)
        if thread is not None:  # a stored message of this very channel (else not_found)
            thread = str((await self._message(p, ch, thread, field="thread")).id)
        ref = MessageRef(p.workspace.slug, p.workspace.id, ch.id, p.user.id, cmid)
        outcome = await self._cmids.claim(ref)
        if isinstance(outcome, InFlight):
            raise Conflict(f"a publish with this cmid is in flight; retry in {outcome.retry_after_s:.1f}s",
                           field="cmid")
        if isinstance(outcome, Duplicate):
            return Posted(outcome.message_id, outcome.offset, duplicate=True)
        message_id = str(uuid.uuid4())
        payload = e.encode(e.MessageEvent(
            channel=channel, id=message_id, author=str(p.user.id), author_name=p.user.name, text=text,
            ts=self._clock.time(), cmid=cmid, thread=thread,
        ))
        try:
            offset = await self._broker.publish(ref.workspace, channel, payload)
        except NOT_SENT:
            await self._cmids.release(ref, outcome.key)  # nothing reached the log: let the client's retry through
            raise
        # any other failure (timeout, broker error, cancellation) leaves the claim pending: the outcome is
        # unknown, and a retry settles it once it is in doubt (storm/protocol/claims.py).  Success is
        # remembered in this process only: a retry elsewhere finds the message in the store (claims.py)
        self._cmids.published(outcome.key, message_id, offset)
        return Posted(message_id, offset)

    async def edit(self, p: Principal, ch: Channel, message_id: str, text: str) -> Posted:
        _check_storable(text)
        msg = await self._message(p, ch, message_id)
        if msg.author_id != p.user.id:
            raise Forbidden("only the author may edit a message", field="message_id")
        return await self._post(p, msg, e.EditEvent(channel=str(ch.id), id=str(msg.id), author=str(p.user.id),
                                                    text=text, ts=self._clock.time()))

    async def delete(self, p: Principal, ch: Channel, message_id: str) -> Posted:
        msg = await self._message(p, ch, message_id)
        if not (msg.author_id == p.user.id or p.role.at_least(Role.ADMIN)):
            raise Forbidden("only the author or an admin may delete a message", field="message_id")
        return await self._post(p, msg, e.DeleteEvent(channel=str(ch.id), id=str(msg.id), author=str(p.user.id),
                                                      ts=self._clock.time()))

    async def react(self, p: Principal, ch: Channel, message_id: str, emoji: str, *, remove: bool) -> Posted:
        """The store changes first, so the event can say the resulting count, and a change that changes
        nothing (a repeated reaction, the removal of one that is not there) emits no event: the live
        counts never drift from the stored ones.  The persistence worker leaves reactions carrying a count
        alone (consumers/persistence.py).  If the event cannot be published, the change is undone."""
        _check_storable(emoji, field="emoji")
        msg = await self._message(p, ch, message_id)
        reaction = Reaction(p.workspace.id, msg.id, p.user.id, emoji)

        async def change(uow: UnitOfWork) -> int | None:
            changed = await (uow.reactions.remove(reaction) if remove else uow.reactions.add(reaction))
            if not changed:
                return None
            return (await uow.reactions.counts(p.workspace.id, [msg.id])).get(msg.id, {}).get(emoji, 0)

        count = await self._store.run(change)
        if count is None:
            return Posted(str(msg.id), None)
        event = e.ReactionEvent(channel=str(ch.id), message_id=str(msg.id), user=str(p.user.id), emoji=emoji,
                                remove=remove, count=count, ts=self._clock.time())
        try:
            return await self._post(p, msg, event)
        except NOT_SENT:
            async def undo(uow: UnitOfWork) -> bool:
                return await (uow.reactions.add(reaction) if remove else uow.reactions.remove(reaction))

            await self._store.run(undo)
            raise

    async def mark_read(self, p: Principal, ch: Channel, offset: int) -> int:
        """Move the caller's read marker of the channel forward to ``offset``; returns the stored one."""

        async def advance(uow: UnitOfWork) -> int:
            return await uow.read_markers.advance(ReadMarker(p.workspace.id, ch.id, p.user.id, offset))

        return await self._store.run(advance)

    async def _post(self, p: Principal, msg: Message,
                    event: e.EditEvent | e.DeleteEvent | e.ReactionEvent) -> Posted:
        offset = await self._broker.publish(p.workspace.slug, str(msg.channel_id), e.encode(event))
        return Posted(str(msg.id), offset)

    async def _message(self, p: Principal, ch: Channel, message_id: str, *, field: str = "message_id") -> Message:
        """A stored, not deleted message of the channel."""
        try:
            mid = uuid.UUID(message_id)
        except ValueError:
            raise NotFound("no such message", field=field) from None
        async with self._store.unit_of_work() as uow:
            msg = await uow.messages.get(p.workspace.id, mid)
        if msg is None or msg.channel_id != ch.id or msg.deleted_at is not None:
            raise NotFound("no such message in this channel (new messages are found once stored)", field=field)
        return msg


def _check_storable(text: str, *, field: str = "text") -> None:
    why = unstorable(text)
    if why is not None:
        raise BadRequest(why.replace("text", field, 1), field=field)


async def read_state(store: Store, workspace_id: uuid.UUID, user_id: uuid.UUID,
                     channel_ids: list[uuid.UUID]) -> dict[uuid.UUID, tuple[int, int]]:
    """Per channel: (the user's read marker, the unread messages of others after it)."""
    async with store.unit_of_work() as uow:
        return await uow.read_markers.unread(workspace_id, user_id, channel_ids)


# -- history ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class HistorySlice:
    messages: list[e.HistoryMessage]  # newest first
    next_before: int | None  # the offset to read older messages before; None when this page is the oldest
    offset: int = 0  # the channel offset the page reflects: a client resumes with subscribe{since: offset}


async def history_page(store: Store, workspace_id: uuid.UUID, channel_id: uuid.UUID, *, before: int | None,
                       limit: int, reader: uuid.UUID | None = None) -> HistorySlice:
    """Up to ``limit`` stored messages of the channel with ``offset < before`` (all when None), newest first;
    ``mine`` lists the reader's own reactions.

    ``offset`` is the channel's newest stored message offset, read in the same transaction: the
    persistence worker applies a channel's events in log order, so every event up to it is in the page's
    state.  Events after it may be too (reactions are stored by the command itself); replaying them
    changes nothing, since edits and deletions set a state and reaction events carry absolute counts."""
    async with store.unit_of_work() as uow:
        page = await _read_page(uow, workspace_id, channel_id, before=before, limit=limit)
        # No reaction on the page (same snapshot): the reader has none either, and the query is saved.
        mine = await uow.reactions.mine(workspace_id, reader, page.ids) if reader is not None and page.reacted else {}
    return page.for_reader(mine)


@dataclass(frozen=True, slots=True)
class _Page:
    """A history page before the reader's own reactions are added: what readers can share."""

    messages: list[e.HistoryMessage]
    ids: list[uuid.UUID]  # the messages' ids, in the same order
    next_before: int | None
    offset: int
    reacted: bool  # some message of the page has a reaction
    # every reaction on the page (message -> user -> emojis) when a shared page holds at most
    # REACTORS_MAX of them: each reader's `mine` then needs no query; None: read `mine` per reader
    reactors: dict[uuid.UUID, dict[uuid.UUID, list[str]]] | None = None

    def mine(self, reader: uuid.UUID) -> dict[uuid.UUID, list[str]] | None:
        """The reader's own reactions from ``reactors``; None when they were not read."""
        if not self.reacted:
            return {}
        if self.reactors is None:
            return None
        return {mid: users[reader] for mid, users in self.reactors.items() if reader in users}

    def for_reader(self, mine: dict[uuid.UUID, list[str]]) -> HistorySlice:
        if not mine:
            return HistorySlice(self.messages, self.next_before, self.offset)
        messages = [
            msgspec.structs.replace(m, mine=[x for x in mine[i] if x in m.reactions]) if i in mine else m
            for m, i in zip(self.messages, self.ids, strict=True)
        ]
        return HistorySlice(messages, self.next_before, self.offset)


async def _read_page(uow: UnitOfWork, workspace_id: uuid.UUID, channel_id: uuid.UUID, *, before: int | None,
                     limit: int) -> _Page:
    rows = await uow.messages.page(workspace_id, channel_id, before=before, limit=limit + 1)
    if before is None:  # the newest page starts with the newest message: the head, in the same snapshot
        head = rows[0].offset if rows else 0
    else:
        newest = await uow.messages.page(workspace_id, channel_id, before=None, limit=1)
        head = newest[0].offset if newest else 0
    more, rows = len(rows) > limit, rows[:limit]
    if not rows:
        return _Page([], [], None, head, False)
    authors = {u.id: u.name for u in await uow.users.get_many(list(dict.fromkeys(m.author_id for m in rows)))}
    ids = [m.id for m in rows]
    counts = await uow.reactions.counts(workspace_id, ids)
    messages = [history_message(m, authors.get(m.author_id, UNKNOWN_AUTHOR), counts.get(m.id, {})) for m in rows]
    return _Page(messages, ids, rows[-1].offset if more else None, head, any(counts.values()))


REACTORS_MAX = 2000  # reactions on a shared page kept with it (each reader's `mine` read from them)


class SharedPages:
    """A gateway's newest history pages, shared (issue 15: a connect fetches its first channel's newest
    page, and during a ramp hundreds of connects a second ask for the same few channels).

    The newest page of a channel (``before`` None) is read once for all the requests that arrive while it
    is being read (one read in flight per page): the busier the gateway, the longer a read takes and the
    more requests share it, and no request gets a page older than its own arrival minus the read's duration.
    With ``share_s`` > 0 (``STORM_HISTORY_SHARE_S``) a finished page is also served for that many seconds:
    for clients that resume with ``subscribe{since: offset}`` from the page's ``offset`` (the SDK does), which
    catches them up; a client that shows a channel it is already subscribed to from a fresh page (the chat
    page) would miss what was stored meanwhile, hence 0 by default.  The reader's own reactions (``mine``)
    are still the reader's: taken from the page's reactions, read with it when there are at most
    ``REACTORS_MAX``, else read for each request in one statement.  Older pages (``before`` set) are read for
    each request.  At most ``max_pages`` pages are kept; expired ones go first."""

    def __init__(self, store: Store, clock: Clock, *, share_s: float, max_pages: int = 4096) -> None:
        self._store = store
        self._clock = clock
        self._share_s = share_s
        self._max = max_pages
        self._pages: dict[tuple[uuid.UUID, uuid.UUID, int], tuple[float, _Page]] = {}
        self._reading: dict[tuple[uuid.UUID, uuid.UUID, int], asyncio.Task[_Page]] = {}
        self.reads = 0  # pages read from the store for sharing (tests; docs/benchmarks.md)

    async def page(self, workspace_id: uuid.UUID, channel_id: uuid.UUID, *, before: int | None, limit: int,
                   reader: uuid.UUID | None = None) -> HistorySlice:
        if before is not None:
            return await history_page(self._store, workspace_id, channel_id, before=before, limit=limit,
                                      reader=reader)
        key = (workspace_id, channel_id, limit)
        kept = self._pages.get(key) if self._share_s > 0 else None
        if kept is not None and kept[0] > self._clock.monotonic():
            page = kept[1]
        else:
            task = self._reading.get(key)
            if task is None:
                task = asyncio.get_running_loop().create_task(self._read(key))
                self._reading[key] = task
                task.add_done_callback(lambda t, k=key: self._read_done(k, t))  # type: ignore[misc]
            page = await asyncio.shield(task)  # a request that gives up does not cancel the others' read
        if reader is None:
            return page.for_reader({})
        mine = page.mine(reader)
        if mine is None:  # a page with more reactions than are worth keeping: the reader's own, read now
            async with self._store.unit_of_work() as uow:
                mine = await uow.reactions.mine(workspace_id, reader, page.ids)
        return page.for_reader(mine)

    async def _read(self, key: tuple[uuid.UUID, uuid.UUID, int]) -> _Page:
        workspace_id, channel_id, limit = key
        self.reads += 1
        async with self._store.unit_of_work() as uow:
            page = await _read_page(uow, workspace_id, channel_id, before=None, limit=limit)
            if page.reacted and sum(sum(m.reactions.values()) for m in page.messages) <= REACTORS_MAX:
                page = dataclasses.replace(page, reactors=await uow.reactions.reactors(workspace_id, page.ids))
        return page

    def _read_done(self, key: tuple[uuid.UUID, uuid.UUID, int], task: asyncio.Task[_Page]) -> None:
        self._reading.pop(key, None)
        if task.cancelled() or task.exception() is not None or self._share_s <= 0:  # nothing is kept
            return
        now = self._clock.monotonic()
        if len(self._pages) >= self._max:
            for k in [k for k, (until, _) in self._pages.items() if until <= now] or list(self._pages)[:1]:
                del self._pages[k]
        self._pages[key] = (now + self._share_s, task.result())


def history_message(m: Message, author_name: str, reactions: dict[str, int],
                    mine: list[str] | None = None) -> e.HistoryMessage:
    deleted = m.deleted_at is not None
    return e.HistoryMessage(
        id=str(m.id), offset=m.offset, author=str(m.author_id), author_name=author_name,
        text="" if deleted else m.body, ts=epoch(m.created_at), cmid=m.client_msg_id,
        thread=str(m.thread_id) if m.thread_id else None, edited_ts=epoch(m.edited_at) if m.edited_at else None,
        deleted=deleted, reactions=reactions, mine=mine or [],
    )


def epoch(moment: datetime) -> float:
    """Epoch seconds; naive datetimes (SQLite) are UTC by the store's convention."""
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()
