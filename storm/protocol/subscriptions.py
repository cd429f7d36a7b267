"""The channels one session follows: subscribe with replay, live delivery, unsubscribe, withdrawal, and
what others see of it there (presence, typing).  No socket I/O (docs/delivery.md, "Resume").

A subscription joins the hub first, so live events are buffered from then on, then replays what the
client missed (from the broker log, after its ``since``), then flushes the buffer: the client sees each
offset once and in order.  A withdrawal (the user was removed from a private channel, storm/revocation.py)
ends the subscription at once and leaves the hub and presence in the background.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import uuid
from typing import Protocol

from storm.directory import Principal
from storm.errors import NotFound, OffsetTruncated, StormError
from storm.ports.broker import Broker, Record
from storm.ports.cache import PresenceEntry
from storm.protocol import commands as c
from storm.protocol import events as e
from storm.protocol.codes import ErrorCode
from storm.protocol.context import SessionContext, Transport
from storm.protocol.failures import Refused

log = logging.getLogger("storm.session")

REPLAY_MAX = 1000
TYPING_INTERVAL_S = 2.0


class Subscriber(Protocol):
    """What the subscriptions need of their session: the hub delivers to it, events go to its transport."""

    id: str
    transport: Transport

    @property
    def workspace(self) -> str: ...

    def on_channel_event(self, channel: str, offset: int, data: bytes) -> None: ...


class _Sub:
    __slots__ = ("buffer", "last", "replaying")

    def __init__(self) -> None:
        self.replaying = True
        self.last = 0
        self.buffer: list[tuple[int, bytes]] = []


def presence_entry(p: Principal) -> PresenceEntry:
    return PresenceEntry(user_id=str(p.user.id), name=p.user.name)


async def announce(broker: Broker, workspace: str, event: e.TypingEvent) -> None:
    try:
        await broker.publish_ephemeral(workspace, event.channel, e.encode(event))
    except StormError:  # ephemeral: best effort by contract
        log.warning("ephemeral publish failed ws=%s channel=%s", workspace, event.channel)


class Subscriptions:
    __slots__ = ("_chores", "_ctx", "_owner", "_typing", "_withdrawn", "channels")

    def __init__(self, ctx: SessionContext, owner: Subscriber) -> None:
        self._ctx = ctx
        self._owner = owner
        self.channels: dict[str, _Sub] = {}  # by channel id, canonical form
        # created on first use (two empty sets per connection would cost ~430 bytes, storm bench idle):
        self._withdrawn: set[str] | None = None  # channels withdrawn while a frame was handled (racing subscribe)
        self._chores: set[asyncio.Task[None]] | None = None  # leaves of withdrawn channels, still running
        self._typing: dict[str, float] | None = None  # channel -> when this session last announced typing

    def deliver(self, channel: str, offset: int, data: bytes) -> None:
        """A broadcast event of one of the channels, already encoded.  Hot path: no allocation when the
        event is forwarded."""
        sub = self.channels.get(channel)
        if sub is None:
            return
        if sub.replaying:
            sub.buffer.append((offset, data))
            return
        if offset:
            if offset <= sub.last:
                return  # already delivered (replay overlap)
            sub.last = offset
        self._owner.transport.send(data)

    def _send(self, event: e.Subscribed | e.Unsubscribed | e.PresenceList) -> None:
        self._owner.transport.send(e.encode(event))

    # -- subscribe, with replay ---------------------------------------------------------------------------
    async def subscribe(self, p: Principal, cmd: c.Subscribe) -> None:
        ctx = self._ctx
        self._withdrawn = None
        ch = await ctx.directory.check_channel_access(p, cmd.channel)
        # removed while the check ran: its answer (maybe from a cache entry written just before) is stale
        if self._withdrawn is not None and str(ch.id) in self._withdrawn:
            raise NotFound("no such channel", field="channel")
        channel = str(ch.id)
        ws = p.workspace.slug
        if channel not in self.channels and len(self.channels) >= ctx.config.max_subscriptions:
            raise Refused(ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                          f"at most {ctx.config.max_subscriptions} subscriptions per connection")
        sub = self.channels.get(channel)
        fresh = sub is None
        if sub is None:
            sub = self.channels[channel] = _Sub()
            await ctx.hub.join(self._owner, ws, channel)  # live events are buffered from here on
        else:
            sub.replaying = True
        try:
            head = ctx.hub.head(ws, channel)  # joined first: every record above it comes live
            if head is None or (cmd.since is not None and cmd.since > head):
                # unknown, or this gateway's feed is behind what the client saw elsewhere (another gateway,
                # before a kill): the log's own head, else the feed's late records up to `since` would reach
                # the client a second time, and out of order (storm day 100 000, 2026-12-07)
                head = await ctx.hub.fetch_head(ws, channel)  # shared by the subscribes that ask together
                if cmd.since is not None and cmd.since > head:  # a shared answer may predate what the client saw
                    head = await ctx.broker.head(ws, channel)
                    ctx.hub.saw_head(ws, channel, head)
            records, recovered = await self._missed(ws, channel, cmd.since, head)
        except BaseException:
            if fresh:
                self.channels.pop(channel, None)
                await ctx.hub.leave(self._owner, ws, channel)
            raise
        # subscribing again resumes from the client's `since`, even over what this subscription delivered
        # before: the client may have dropped it (the chat page only counts a channel it does not show)
        last = head if cmd.since is None else min(cmd.since, head)
        replay = [r for r in records if r.offset > last]
        try:  # the read state is a convenience: a store that does not answer must not stop the live path
            read, unread = await ctx.directory.read_state(p.workspace, p.user.id, ch.id, head)
        except StormError as exc:
            log.warning("read state unavailable ws=%s channel=%s: %s", ws, channel, exc.message)
            read, unread = 0, 0
        self._send(e.Subscribed(channel=channel, offset=head, id=cmd.id, recovered=recovered,
                                replayed=len(replay), read=read, unread=unread))
        if cmd.since is not None:  # a resume: storm.gateway.resumes and resume_gap (docs/observability.md)
            ctx.meters.resumed(recovered, replay[0].publish_time if replay else 0.0, ctx.clock.time())
        send = self._owner.transport.send
        for r in replay:
            send(e.with_offset(r.payload, r.offset))
        sub.last = head  # every offset up to head was replayed or, without `since`, is not wanted
        pending, sub.buffer, sub.replaying = sub.buffer, [], False
        for offset, data in pending:
            self.deliver(channel, offset, data)
        if fresh:  # joins are announced coalesced, and only in small channels (storm/protocol/presence.py)
            small = ctx.presence.broadcasts(ws, channel)
            entry = presence_entry(p)
            if await ctx.cache.presence_add(ws, channel, self._owner.id, entry, ctx.config.presence_ttl_s,
                                            first=small, lease=ctx.presence_lease):
                ctx.presence.joined(ws, channel, entry)

    async def _missed(self, ws: str, channel: str, since: int | None, head: int) -> tuple[list[Record], bool]:
        """Records after ``since`` up to ``head``, and whether the gap could be filled.

        Offsets are increasing, not necessarily dense (Pulsar positions, ADR 0005), so the size of a gap is
        counted by reading, never computed by subtracting offsets.  A gap larger than ``REPLAY_MAX`` is not
        replayed at all: a partial replay would itself leave a hole, so the client is told
        ``recovered: false`` and reloads from ``history``.
        """
        if since is None or since >= head:
            return [], True
        broker = self._ctx.broker
        recovered = True
        try:
            records = await broker.read(ws, channel, since + 1, REPLAY_MAX + 1, head=head)
        except OffsetTruncated as exc:
            if exc.earliest > head:
                return [], False
            recovered = False  # what came before `earliest` is gone; the rest is still contiguous
            records = await broker.read(ws, channel, exc.earliest, REPLAY_MAX + 1, head=head)
        records = [r for r in records if r.offset <= head]
        if len(records) > REPLAY_MAX:
            return [], False
        return records, recovered

    # -- unsubscribe, withdrawal, teardown -----------------------------------------------------------------
    async def unsubscribe(self, cmd: c.Unsubscribe) -> None:
        try:
            channel = str(uuid.UUID(cmd.channel))  # subscriptions are keyed by the canonical form
        except ValueError:
            channel = cmd.channel
        if self.channels.pop(channel, None) is None:
            raise Refused(ErrorCode.NOT_SUBSCRIBED, "not subscribed to this channel", field="channel")
        await self.leave(channel)
        self._send(e.Unsubscribed(channel=channel, id=cmd.id))

    def withdraw(self, channel: str, *, racing: bool) -> None:
        """End the subscription to ``channel`` now: no event of it is sent after
        ``unsubscribed{reason:"removed"}``; the hub and presence are left in the background.  ``racing``: a
        frame is being handled, and a subscribe to the channel may be past its access check; it must not
        complete."""
        if self.channels.pop(channel, None) is None:
            if racing:
                if self._withdrawn is None:
                    self._withdrawn = set()
                self._withdrawn.add(channel)
            return
        self._send(e.Unsubscribed(channel=channel, reason="removed"))
        task = asyncio.get_running_loop().create_task(self._leave_withdrawn(channel))
        if self._chores is None:
            self._chores = set()
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    async def _leave_withdrawn(self, channel: str) -> None:
        try:
            await self.leave(channel)
        except Exception:
            log.exception("leaving a withdrawn channel failed ws=%s session=%s channel=%s", self._owner.workspace,
                          self._owner.id, channel)

    async def leave(self, channel: str) -> None:
        """Leave the hub group and the channel's presence (``presence.leave`` when the user's last entry)."""
        ws, owner = self._owner.workspace, self._owner
        await self._ctx.hub.leave(owner, ws, channel)
        # leaves are announced only in small channels: elsewhere nobody needs to know whether it was the last
        gone = await self._ctx.cache.presence_remove(ws, channel, owner.id,
                                                     last=self._ctx.presence.broadcasts(ws, channel))
        if gone is not None:
            self._ctx.presence.left(ws, channel, gone)

    async def leave_all(self) -> None:
        """The session ended: leave every channel (after the withdrawals still running).  Never raises."""
        channels, self.channels = list(self.channels), {}
        if self._chores:
            await asyncio.gather(*self._chores, return_exceptions=True)
        for channel in channels:
            try:
                await self.leave(channel)
            except Exception:
                log.exception("cleanup failed ws=%s session=%s channel=%s", self._owner.workspace, self._owner.id,
                              channel)

    # -- what others see: presence and typing ---------------------------------------------------------------
    async def presence(self, p: Principal, cmd: c.Presence) -> None:
        """One page of the channel's users, in user id order: at most ``limit`` (capped at
        ``STORM_PRESENCE_PAGE_MAX``) after ``cursor`` (the last id of the previous page), with the total
        and whether joins and leaves are announced in this channel (docs/protocol.md, "Presence")."""
        ctx = self._ctx
        ch = await ctx.directory.check_channel_access(p, cmd.channel)
        channel, ws = str(ch.id), p.workspace.slug
        limit = min(cmd.limit or ctx.config.presence_page_max, ctx.config.presence_page_max)
        users = sorted(await ctx.cache.presence_list(ws, channel), key=lambda u: u.user_id)
        start = bisect.bisect_right([u.user_id for u in users], cmd.cursor) if cmd.cursor else 0
        page = users[start:start + limit]
        more = start + limit < len(users)
        broadcast = await ctx.presence.announces(ws, channel)
        self._send(e.PresenceList(channel=channel, id=cmd.id, count=len(users), broadcast=broadcast,
                                  next_cursor=page[-1].user_id if more and page else None,
                                  users=[e.UserRef(id=u.user_id, name=u.name) for u in page]))

    async def typing(self, p: Principal, cmd: c.Typing) -> None:
        ctx = self._ctx
        ch = await ctx.directory.check_channel_access(p, cmd.channel)
        channel = str(ch.id)
        now = ctx.clock.monotonic()
        if self._typing is None:
            self._typing = {}
        if now - self._typing.get(channel, -1e9) < TYPING_INTERVAL_S:
            return  # throttled: the others already know we are typing
        if len(self._typing) > 4 * ctx.config.max_subscriptions:
            self._typing.clear()
        self._typing[channel] = now
        await announce(ctx.broker, p.workspace.slug, e.TypingEvent(channel=channel, user=str(p.user.id),
                                                                   name=p.user.name))
