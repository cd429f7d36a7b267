"""The session core: protocol v1 logic for one connection, with no socket I/O (docs/protocol.md).

The I/O layer (gateway/ws.py) hands it decoded frames (:meth:`Session.receive`) and gives it a
:class:`Transport` to push encoded events to and to ask for a close.  Everything it needs from the world
(broker, cache, directory, hub, clock) comes through :class:`SessionContext`, so unit tests drive it with
the embedded adapters and a list as transport (tests/service/test_session.py).

States: AWAITING_AUTH -> OPEN -> CLOSED.  Illegal transitions raise.  Channel events reach the session
through :meth:`on_channel_event` (called by the hub, already encoded once for every recipient); the
session drops duplicates by offset and holds live events back while it replays missed ones, so a client
sees each offset once and in order (docs/delivery.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from storm import revocation
from storm.config import Config
from storm.directory import Directory, Principal
from storm.domain import MAX_BODY_CHARS, Channel, ReadMarker, Role
from storm.errors import Forbidden, NotFound, OffsetTruncated, QuotaExceeded, StormError, Unauthenticated
from storm.ports.broker import Broker
from storm.ports.cache import Cache, PresenceEntry
from storm.ports.clock import Clock
from storm.ports.identity import IdentityVerifier
from storm.ports.store import Store
from storm.protocol import commands as c
from storm.protocol import events as e
from storm.protocol.claims import NOT_SENT, CmidClaims, Duplicate, InFlight, MessageRef
from storm.protocol.codes import CloseCode, ErrorCode
from storm.protocol.quota import WORKSPACE_PRESENCE, ConnectionQuota
from storm.ratelimit import SharedLimiter, TokenBucket
from storm.revocation import ControlRouter

log = logging.getLogger("storm.session")

MAX_BAD_FRAMES = 10
TYPING_INTERVAL_S = 2.0
REPLAY_MAX = 1000
CLAIM_IN_DOUBT_MARGIN_S = 2.0  # a pending cmid claim is in doubt this long after the broker's send timeout


class State(enum.Enum):
    AWAITING_AUTH = "awaiting_auth"
    OPEN = "open"
    CLOSED = "closed"


class Transport(Protocol):
    def send(self, data: bytes) -> bool:
        """Queue one encoded event (or several joined by newlines).  False if the connection is gone."""
        ...

    def close(self, code: int, reason: str) -> None:
        """Close the connection after the events already queued (or at once for SLOW_CONSUMER)."""
        ...


class Hub(Protocol):
    async def join(self, session: Any, workspace: str, channel: str) -> None: ...

    async def leave(self, session: Any, workspace: str, channel: str) -> None: ...


@dataclass
class SessionContext:
    config: Config
    clock: Clock
    broker: Broker
    cache: Cache
    store: Store
    identity: IdentityVerifier
    directory: Directory
    hub: Hub
    control: ControlRouter = field(default_factory=ControlRouter)  # revocations (storm/revocation.py)
    claims: CmidClaims = field(init=False)  # client message ids (storm/protocol/claims.py)
    limiter: SharedLimiter = field(init=False)  # user and workspace buckets, leased (storm/ratelimit.py)
    connections: ConnectionQuota = field(init=False)  # the plan's connection quota (storm/protocol/quota.py)

    def __post_init__(self) -> None:
        self.claims = CmidClaims(self.cache, self.store, self.broker, self.clock, ttl_s=self.config.dedup_ttl_s,
                                 in_doubt_s=self.config.publish_timeout_s + CLAIM_IN_DOUBT_MARGIN_S)
        self.limiter = SharedLimiter(self.cache, self.clock)
        self.connections = ConnectionQuota(self.cache, self.clock)


class _Sub:
    __slots__ = ("buffer", "last", "replaying")

    def __init__(self) -> None:
        self.replaying = True
        self.last = 0
        self.buffer: list[tuple[int, bytes]] = []


class Session:
    def __init__(self, ctx: SessionContext, transport: Transport, *, session_id: str | None = None) -> None:
        self.ctx = ctx
        self.transport = transport
        self.id = session_id or uuid.uuid4().hex
        self.state = State.AWAITING_AUTH
        now = ctx.clock.monotonic()
        self.opened_at = now
        self.last_seen = now
        self.principal: Principal | None = None
        self.subs: dict[str, _Sub] = {}
        # created on first use (two empty sets per connection would cost ~430 bytes, storm bench idle):
        self._withdrawn: set[str] | None = None  # channels withdrawn while a frame was handled (racing subscribe)
        self._chores: set[asyncio.Task[None]] | None = None  # leaves of withdrawn channels, still running
        self._bad_frames = 0
        self._bucket = TokenBucket(ctx.config.publish_rate, ctx.config.publish_burst, now)
        self._typing: dict[str, float] = {}
        self._presence_refreshed = now
        self.close_code: int | None = None
        self._expires_at = float("inf")  # wall clock: the token's exp
        self._warned = False  # token.expiring sent for the current token
        self._counted = False  # holds one of the workspace's plan connections
        self._controlled = False  # registered with the ControlRouter
        self.draining = False  # the gateway drains: frames from now on are dropped (the client resends them)
        self.busy = False  # a frame is being handled (the drain waits for its ack)

    # -- properties the hub and route use ----------------------------------------------------------------
    @property
    def workspace(self) -> str:
        assert self.principal is not None
        return self.principal.workspace.slug

    def __repr__(self) -> str:
        ws = self.principal.workspace.slug if self.principal else "-"
        return f"<Session {self.id[:8]} ws={ws} {self.state.value}>"

    # -- input ------------------------------------------------------------------------------------------
    async def receive(self, data: bytes | str) -> None:
        """Handle one client frame.  Never raises for anything the peer sends."""
        if self.state is State.CLOSED or self.draining:
            return
        self.busy = True
        try:
            await self._receive(data)
        finally:
            self.busy = False

    async def _receive(self, data: bytes | str) -> None:
        self.last_seen = self.ctx.clock.monotonic()
        try:
            cmd = c.decode_command(data, self.ctx.config.max_frame_bytes)
        except c.ProtocolViolation as exc:
            self._protocol_error(exc)
            return
        if self.state is State.AWAITING_AUTH:
            await self._authenticate(cmd)
            return
        self._bad_frames = 0
        if self.last_seen - self._presence_refreshed >= self.ctx.config.presence_ttl_s / 3:
            await self._refresh_presence()  # any frame keeps presence alive, not only pings
            if self.state is State.CLOSED:  # access was found revoked
                return
        rid = getattr(cmd, "id", None)
        channel = getattr(cmd, "channel", None)
        try:
            await self._dispatch(cmd)
        except StormError as exc:
            self._error(_code_of(exc), exc.message, id=rid, field=exc.field, channel=channel)
        except Exception:
            log.exception("session bug ws=%s session=%s op=%s", self.workspace, self.id,
                          type(cmd).__name__.lower())
            self._error(ErrorCode.INTERNAL, "internal error", id=rid, channel=channel)

    def _protocol_error(self, exc: c.ProtocolViolation) -> None:
        self._bad_frames += 1
        self._error(exc.code, exc.message, id=exc.id, field=exc.field)
        if self.state is State.AWAITING_AUTH:
            self._close(CloseCode.UNAUTHENTICATED, "expected an auth message")
        elif self._bad_frames >= MAX_BAD_FRAMES:
            self._close(CloseCode.PROTOCOL_VIOLATION, "too many invalid frames")

    async def _authenticate(self, cmd: c.Command) -> None:
        if not isinstance(cmd, c.Auth):
            self._error(ErrorCode.UNAUTHENTICATED, "the first message must be auth")
            self._close(CloseCode.UNAUTHENTICATED, "expected an auth message")
            return
        try:
            claims = await self.ctx.identity.verify(cmd.token)
            principal = await self.ctx.directory.principal(claims)
        except StormError as exc:
            self._error(ErrorCode.UNAUTHENTICATED, exc.message)
            self._close(CloseCode.UNAUTHENTICATED, "authentication failed")
            return
        if self.state is State.CLOSED:  # timed out while we were verifying
            return
        self.principal = principal
        if not await self._admit(principal):
            return
        self.state = State.OPEN
        self._expires_at, self._warned = claims.expires_at, False
        cfg = self.ctx.config
        self._send(e.Hello(
            v=1, session=self.id, workspace=principal.workspace.slug,
            user=e.UserRef(id=str(principal.user.id), name=principal.user.name),
            heartbeat_s=cfg.heartbeat_s,
            limits=e.Limits(
                max_frame_bytes=cfg.max_frame_bytes, max_subscriptions=cfg.max_subscriptions,
                max_body_chars=MAX_BODY_CHARS, publish_rate=cfg.publish_rate,
                publish_burst=cfg.publish_burst, history_page_max=cfg.history_page_max,
                auth_timeout_s=cfg.auth_timeout_s, idle_timeout_s=cfg.idle_timeout_s,
            ),
        ))
        await self.ctx.cache.presence_add(principal.workspace.slug, WORKSPACE_PRESENCE, self.id,
                                          self._entry(), cfg.presence_ttl_s)

    async def _admit(self, p: Principal) -> bool:
        """After the token: the revocation list and the plan's connection quota.  Closes and returns False
        when the session may not open."""
        ws = p.workspace.slug
        ctx = self.ctx
        try:
            await ctx.control.add(ctx.hub, ws, p.claims.subject, self)  # first: a racing revocation is seen
            self._controlled = True
            await revocation.check(ctx.cache, ws, p.claims)
            admitted = await ctx.connections.take(ws, p.workspace.quotas.max_connections)
            self._counted = True
            if not admitted:
                raise QuotaExceeded(f"the {p.workspace.plan} plan allows {p.workspace.quotas.max_connections} "
                                    "connections", field="connections")
        except Unauthenticated as exc:
            self._error(ErrorCode.UNAUTHENTICATED, exc.message)
            self._close(CloseCode.REVOKED, "access revoked")
        except QuotaExceeded as exc:
            self._error(ErrorCode.QUOTA_EXCEEDED, exc.message, field=exc.field)
            self._close(CloseCode.TOO_MANY_CONNECTIONS, "workspace connection quota reached")
        except StormError as exc:
            self._error(_code_of(exc), exc.message)
            self._close(CloseCode.INTERNAL, "could not open the session")
        if self.state is State.CLOSED:
            await self._release()
            return False
        return True

    async def _release(self) -> None:
        """Give back what :meth:`_admit` took.  Idempotent."""
        p = self.principal
        if p is None:
            return
        ws = p.workspace.slug
        if self._controlled:
            self._controlled = False
            await self.ctx.control.remove(self.ctx.hub, ws, p.claims.subject, self)
        if self._counted:
            self._counted = False
            await self.ctx.connections.give_back(ws)

    @property
    def token_id(self) -> str:
        return self.principal.claims.token_id if self.principal else ""

    def revoked(self, reason: str) -> None:
        """Called by the ControlRouter when this session's subject was logged out, banned or removed."""
        if self.state is State.OPEN:
            self._error(ErrorCode.UNAUTHENTICATED, f"access revoked ({reason})")
        self._close(CloseCode.REVOKED, f"access revoked: {reason}")

    def withdrawn(self, channel: str) -> None:
        """Called by the ControlRouter when this session's user was removed from a private channel: the
        subscription ends at once (no event of the channel is sent after ``unsubscribed{reason:"removed"}``)
        and the hub and presence are left in the background."""
        if self.state is not State.OPEN:
            return
        if self.subs.pop(channel, None) is None:
            if self.busy:  # a subscribe to it may be past its access check: it must not complete
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
            await self._leave_channel(channel)
        except Exception:
            log.exception("leaving a withdrawn channel failed ws=%s session=%s channel=%s", self.workspace,
                          self.id, channel)

    async def _reauthenticate(self, cmd: c.Auth) -> None:
        """``auth`` on an open session: a fresh token for the same user and workspace extends the session."""
        p = self._p()
        try:
            claims = await self.ctx.identity.verify(cmd.token)
        except StormError as exc:
            self._error(ErrorCode.UNAUTHENTICATED, f"token refresh refused: {exc.message}", field="token")
            return
        if claims.subject != p.claims.subject or claims.workspace not in (p.claims.workspace, p.workspace.slug):
            self._error(ErrorCode.ALREADY_AUTHENTICATED,
                        "this session is authenticated as another user or workspace; open a new connection",
                        field="token")
            return
        try:
            await revocation.check(self.ctx.cache, p.workspace.slug, claims)
        except Unauthenticated as exc:
            self.revoked(exc.message)
            return
        self.principal = dataclasses.replace(p, claims=claims)
        self._expires_at, self._warned = claims.expires_at, False
        self._send(e.TokenRefreshed(expires_at=claims.expires_at))

    async def _dispatch(self, cmd: c.Command) -> None:
        match cmd:
            case c.Publish():
                await self._publish(cmd)
            case c.Subscribe():
                await self._subscribe(cmd)
            case c.Unsubscribe():
                await self._unsubscribe(cmd)
            case c.Typing():
                await self._typing_cmd(cmd)
            case c.Ping():
                self._send(e.Pong(id=cmd.id, ts=self.ctx.clock.time()))
                await self._refresh_presence()
            case c.Presence():
                await self._presence(cmd)
            case c.History():
                await self._history(cmd)
            case c.Edit() | c.Delete():
                await self._edit_or_delete(cmd)
            case c.React():
                await self._react(cmd)
            case c.Read():
                await self._read(cmd)
            case c.Auth():
                await self._reauthenticate(cmd)

    # -- output -----------------------------------------------------------------------------------------
    def _send(self, event: Any) -> None:
        self.transport.send(e.encode(event))

    def _error(self, code: ErrorCode | str, message: str, *, id: int | None = None, field: str | None = None,
               channel: str | None = None) -> None:
        self._send(e.Error(code=str(code), message=message, id=id, field=field, channel=channel))

    def _close(self, code: CloseCode, reason: str) -> None:
        if self.state is State.CLOSED:
            return
        self.state = State.CLOSED
        self.close_code = int(code)
        self.transport.close(int(code), reason)

    def close(self, code: CloseCode, reason: str) -> None:
        """Close from outside (timeouts, drain, overflow)."""
        self._close(code, reason)

    def on_channel_event(self, channel: str, offset: int, data: bytes) -> None:
        """A broadcast event for one of our channels, already encoded.  Hot path: no allocation when the
        event is forwarded."""
        sub = self.subs.get(channel)
        if sub is None:
            return
        if sub.replaying:
            sub.buffer.append((offset, data))
            return
        if offset:
            if offset <= sub.last:
                return  # already delivered (replay overlap)
            sub.last = offset
        self.transport.send(data)

    # -- deadlines (called by the hub's sweeper) ----------------------------------------------------------
    def check_deadlines(self, now: float) -> None:
        cfg = self.ctx.config
        if self.state is State.AWAITING_AUTH and now - self.opened_at >= cfg.auth_timeout_s:
            self._error(ErrorCode.UNAUTHENTICATED, "no auth message in time")
            self._close(CloseCode.AUTH_TIMEOUT, "authentication timeout")
        elif self.state is State.OPEN:
            if now - self.last_seen >= cfg.idle_timeout_s:
                self._close(CloseCode.IDLE_TIMEOUT, "idle timeout")
                return
            wall = self.ctx.clock.time()
            if wall >= self._expires_at:
                self._error(ErrorCode.UNAUTHENTICATED, "token expired; reconnect with a fresh token")
                self._close(CloseCode.TOKEN_EXPIRED, "token expired")
            elif not self._warned and wall >= self._expires_at - cfg.token_expiry_warning_s:
                self._warned = True
                self._send(e.TokenExpiring(expires_at=self._expires_at))

    # -- commands ---------------------------------------------------------------------------------------
    def _p(self) -> Principal:
        assert self.principal is not None
        return self.principal

    def _entry(self) -> PresenceEntry:
        p = self._p()
        return PresenceEntry(user_id=str(p.user.id), name=p.user.name)

    async def _limit(self, rid: int | None, channel: str | None) -> bool:
        """Token buckets, cheapest first: this connection (local), the user and the workspace (in the
        cache, so shared by every gateway when the cache is distributed).  Over any: ``rate_limited``."""
        if not self._bucket.take(self.ctx.clock.monotonic()):
            wait = self._bucket.retry_after()
            self._error(ErrorCode.RATE_LIMITED, f"rate limited; retry in {wait:.2f}s", id=rid, channel=channel)
            return False
        p = self._p()
        cfg = self.ctx.config
        ws_rate = cfg.workspace_publish_rate or float(p.workspace.quotas.messages_per_second)
        for key, rate, burst, scope in (
            (f"rate:user:{p.user.id.hex}", cfg.user_publish_rate, cfg.user_publish_burst, "user"),
            ("rate:workspace", ws_rate, max(1, int(ws_rate * 2)), "workspace"),
        ):
            wait = await self.ctx.limiter.take(p.workspace.slug, key, rate, burst)
            if wait > 0:
                self._error(ErrorCode.RATE_LIMITED, f"{scope} rate limited; retry in {wait:.2f}s", id=rid,
                            channel=channel)
                return False
        return True

    async def _write_access(self, rid: int | None, channel_id: str) -> tuple[Principal, Channel] | None:
        """Who writes where, for publish, edit, delete and react: the channel must be writable by the
        principal, and the buckets must have room; None when rate limited (the error is already sent)."""
        p = self._p()
        ch = await self.ctx.directory.check_channel_access(p, channel_id, write=True)
        if not await self._limit(rid, str(ch.id)):
            return None
        return p, ch

    async def _publish(self, cmd: c.Publish) -> None:
        allowed = await self._write_access(cmd.id, cmd.channel)
        if allowed is None:
            return
        p, ch = allowed
        channel = str(ch.id)
        ref = MessageRef(p.workspace.slug, p.workspace.id, ch.id, p.user.id, cmd.cmid)
        claims = self.ctx.claims
        outcome = await claims.claim(ref)
        if isinstance(outcome, InFlight):
            self._error(ErrorCode.CONFLICT, f"a publish with this cmid is in flight; retry in "
                        f"{outcome.retry_after_s:.1f}s", id=cmd.id, field="cmid", channel=channel)
            return
        if isinstance(outcome, Duplicate):
            self._send(e.Ack(id=cmd.id, channel=channel, cmid=cmd.cmid, message_id=outcome.message_id,
                             offset=outcome.offset, duplicate=True))
            return
        message_id = str(uuid.uuid4())
        payload = e.encode(e.MessageEvent(
            channel=channel, id=message_id, author=str(p.user.id), author_name=p.user.name, text=cmd.text,
            ts=self.ctx.clock.time(), cmid=cmd.cmid, thread=cmd.thread,
        ))
        try:
            offset = await self.ctx.broker.publish(ref.workspace, channel, payload)
        except NOT_SENT:
            await claims.release(ref, outcome.key)  # nothing reached the log: let the client's retry through
            raise
        # any other failure (timeout, broker error, cancellation) leaves the claim pending: the outcome is
        # unknown, and a retry settles it once it is in doubt (storm/protocol/claims.py)
        await claims.confirm(ref, outcome.key, message_id, offset)
        self._send(e.Ack(id=cmd.id, channel=channel, cmid=cmd.cmid, message_id=message_id, offset=offset))

    async def _subscribe(self, cmd: c.Subscribe) -> None:
        p = self._p()
        self._withdrawn = None
        ch = await self.ctx.directory.check_channel_access(p, cmd.channel)
        # removed while the check ran: its answer (maybe from a cache entry written just before) is stale
        if self._withdrawn is not None and str(ch.id) in self._withdrawn:
            raise NotFound("no such channel", field="channel")
        channel = str(ch.id)
        ws = p.workspace.slug
        if channel not in self.subs and len(self.subs) >= self.ctx.config.max_subscriptions:
            self._error(ErrorCode.TOO_MANY_SUBSCRIPTIONS,
                        f"at most {self.ctx.config.max_subscriptions} subscriptions per connection",
                        id=cmd.id, channel=channel)
            return
        sub = self.subs.get(channel)
        fresh = sub is None
        if sub is None:
            sub = self.subs[channel] = _Sub()
            await self.ctx.hub.join(self, ws, channel)  # live events are buffered from here on
        else:
            sub.replaying = True
        try:
            head = await self.ctx.broker.head(ws, channel)
            records, recovered = await self._missed(ws, channel, cmd.since, head)
        except BaseException:
            if fresh:
                self.subs.pop(channel, None)
                await self.ctx.hub.leave(self, ws, channel)
            raise
        last = head if cmd.since is None else min(cmd.since, head)
        if not fresh:
            last = max(last, sub.last)
        replay = [r for r in records if r.offset > last]
        self._send(e.Subscribed(channel=channel, offset=head, id=cmd.id, recovered=recovered,
                                replayed=len(replay)))
        for r in replay:
            self.transport.send(e.with_offset(r.payload, r.offset))
        sub.last = head  # every offset up to head was replayed or, without `since`, is not wanted
        pending, sub.buffer, sub.replaying = sub.buffer, [], False
        for offset, data in pending:
            self.on_channel_event(channel, offset, data)
        if fresh and await self.ctx.cache.presence_add(ws, channel, self.id, self._entry(),
                                                       self.ctx.config.presence_ttl_s):
            await self._announce(e.PresenceJoin(channel=channel, user=str(p.user.id), name=p.user.name))

    async def _missed(self, ws: str, channel: str, since: int | None, head: int) -> tuple[list[Any], bool]:
        """Records after ``since`` up to ``head``, and whether the gap could be filled.

        Offsets are increasing, not necessarily dense (Pulsar positions, ADR 0005), so the size of a gap is
        counted by reading, never computed by subtracting offsets.  A gap larger than ``REPLAY_MAX`` is not
        replayed at all: a partial replay would itself leave a hole, so the client is told
        ``recovered: false`` and reloads from ``history``.
        """
        if since is None or since >= head:
            return [], True
        recovered = True
        try:
            records = await self.ctx.broker.read(ws, channel, since + 1, REPLAY_MAX + 1)
        except OffsetTruncated as exc:
            if exc.earliest > head:
                return [], False
            recovered = False  # what came before `earliest` is gone; the rest is still contiguous
            records = await self.ctx.broker.read(ws, channel, exc.earliest, REPLAY_MAX + 1)
        records = [r for r in records if r.offset <= head]
        if len(records) > REPLAY_MAX:
            return [], False
        return records, recovered

    async def _unsubscribe(self, cmd: c.Unsubscribe) -> None:
        try:
            channel = str(uuid.UUID(cmd.channel))  # subscriptions are keyed by the canonical form
        except ValueError:
            channel = cmd.channel
        if self.subs.pop(channel, None) is None:
            self._error(ErrorCode.NOT_SUBSCRIBED, "not subscribed to this channel", id=cmd.id,
                        field="channel", channel=channel)
            return
        await self._leave_channel(channel)
        self._send(e.Unsubscribed(channel=channel, id=cmd.id))

    async def _leave_channel(self, channel: str) -> None:
        ws = self.workspace
        await self.ctx.hub.leave(self, ws, channel)
        gone = await self.ctx.cache.presence_remove(ws, channel, self.id)
        if gone is not None:
            await self._announce(e.PresenceLeave(channel=channel, user=gone.user_id, name=gone.name))

    async def _announce(self, event: Any) -> None:
        try:
            await self.ctx.broker.publish_ephemeral(self.workspace, event.channel, e.encode(event))
        except StormError:  # ephemeral: best effort by contract
            log.warning("ephemeral publish failed ws=%s channel=%s", self.workspace, event.channel)

    async def _typing_cmd(self, cmd: c.Typing) -> None:
        p = self._p()
        ch = await self.ctx.directory.check_channel_access(p, cmd.channel)
        channel = str(ch.id)
        now = self.ctx.clock.monotonic()
        if now - self._typing.get(channel, -1e9) < TYPING_INTERVAL_S:
            return  # throttled: the others already know we are typing
        if len(self._typing) > 4 * self.ctx.config.max_subscriptions:
            self._typing.clear()
        self._typing[channel] = now
        await self._announce(e.TypingEvent(channel=channel, user=str(p.user.id), name=p.user.name))

    async def _presence(self, cmd: c.Presence) -> None:
        p = self._p()
        ch = await self.ctx.directory.check_channel_access(p, cmd.channel)
        users = await self.ctx.cache.presence_list(p.workspace.slug, str(ch.id))
        self._send(e.PresenceList(channel=str(ch.id), id=cmd.id,
                                  users=[e.UserRef(id=u.user_id, name=u.name) for u in users]))

    async def _refresh_presence(self) -> None:
        now = self.ctx.clock.monotonic()
        ttl = self.ctx.config.presence_ttl_s
        if now - self._presence_refreshed < ttl / 3:
            return
        self._presence_refreshed = now
        try:
            await self.ctx.cache.presence_refresh(self.workspace, [WORKSPACE_PRESENCE, *self.subs], self.id, ttl)
            await self._recheck_access()
        except StormError as exc:  # the cache or the store is unavailable: the next refresh tries again
            log.warning("presence refresh failed ws=%s session=%s: %s", self.workspace, self.id, exc.message)

    async def _recheck_access(self) -> None:
        """Every presence refresh (about every ``STORM_PRESENCE_TTL_S`` / 3 while the client talks), look at
        the revocation list and the membership again: a removal or ban whose control event was lost (the
        broker was down) still ends the session, and a role change reaches open sessions."""
        p = self._p()
        try:
            await revocation.check(self.ctx.cache, p.workspace.slug, p.claims)
        except Unauthenticated as exc:
            self.revoked(exc.message)
            return
        role = await self.ctx.directory.role(p.workspace, p.user.id)
        if role is None:
            self.revoked("removed")
        elif role is not p.role:
            self.principal = dataclasses.replace(p, role=role)

    async def _history(self, cmd: c.History) -> None:
        p = self._p()
        ch = await self.ctx.directory.check_channel_access(p, cmd.channel)
        limit = min(cmd.limit, self.ctx.config.history_page_max)
        async with self.ctx.store.unit_of_work() as uow:
            rows = await uow.messages.page(p.workspace.id, ch.id, before=cmd.before, limit=limit + 1)
            more = len(rows) > limit
            rows = rows[:limit]
            authors = {u.id: u.name for u in await uow.users.get_many(list({m.author_id for m in rows}))}
            counts = await uow.reactions.counts(p.workspace.id, [m.id for m in rows])
        self._send(e.HistoryPage(
            channel=str(ch.id), id=cmd.id, next_before=rows[-1].offset if more and rows else None,
            messages=[history_message(m, authors.get(m.author_id, "?"), counts.get(m.id, {})) for m in rows],
        ))

    async def _edit_or_delete(self, cmd: c.Edit | c.Delete) -> None:
        allowed = await self._write_access(cmd.id, cmd.channel)
        if allowed is None:
            return
        p, ch = allowed
        channel = str(ch.id)
        msg = await self._message(p, ch.id, cmd.message_id)
        is_author = msg.author_id == p.user.id
        if isinstance(cmd, c.Edit):
            if not is_author:
                raise Forbidden("only the author may edit a message", field="message_id")
            event: Any = e.EditEvent(channel=channel, id=str(msg.id), author=str(p.user.id), text=cmd.text,
                                     ts=self.ctx.clock.time())
        else:
            if not (is_author or p.role.at_least(Role.ADMIN)):
                raise Forbidden("only the author or an admin may delete a message", field="message_id")
            event = e.DeleteEvent(channel=channel, id=str(msg.id), author=str(p.user.id), ts=self.ctx.clock.time())
        offset = await self.ctx.broker.publish(p.workspace.slug, channel, e.encode(event))
        self._send(e.Ack(id=cmd.id, channel=channel, message_id=str(msg.id), offset=offset))

    async def _message(self, p: Principal, channel_id: uuid.UUID, message_id: str) -> Any:
        try:
            mid = uuid.UUID(message_id)
        except ValueError:
            raise NotFound("no such message", field="message_id") from None
        async with self.ctx.store.unit_of_work() as uow:
            msg = await uow.messages.get(p.workspace.id, mid)
        if msg is None or msg.channel_id != channel_id or msg.deleted_at is not None:
            raise NotFound("no such message (new messages become editable once stored)", field="message_id")
        return msg

    async def _react(self, cmd: c.React) -> None:
        allowed = await self._write_access(cmd.id, cmd.channel)
        if allowed is None:
            return
        p, ch = allowed
        channel = str(ch.id)
        msg = await self._message(p, ch.id, cmd.message_id)
        event = e.ReactionEvent(channel=channel, message_id=str(msg.id), user=str(p.user.id), emoji=cmd.emoji,
                                remove=cmd.remove, ts=self.ctx.clock.time())
        offset = await self.ctx.broker.publish(p.workspace.slug, channel, e.encode(event))
        self._send(e.Ack(id=cmd.id, channel=channel, message_id=str(msg.id), offset=offset))

    async def _read(self, cmd: c.Read) -> None:
        p = self._p()
        ch = await self.ctx.directory.check_channel_access(p, cmd.channel)

        async def advance(uow: Any) -> int:
            return int(await uow.read_markers.advance(ReadMarker(p.workspace.id, ch.id, p.user.id, cmd.offset)))

        stored = await self.ctx.store.run(advance)
        self._send(e.Ack(id=cmd.id, channel=str(ch.id), offset=stored))

    # -- teardown ---------------------------------------------------------------------------------------
    async def closed(self) -> None:
        """The connection is gone: leave every channel and drop presence.  Idempotent."""
        self.state = State.CLOSED
        if self.principal is None:
            return
        try:
            await self._release()
        except Exception:
            log.exception("quota/control cleanup failed ws=%s session=%s", self.workspace, self.id)
        subs, self.subs = list(self.subs), {}
        if self._chores:
            await asyncio.gather(*self._chores, return_exceptions=True)
        for channel in subs:
            try:
                await self._leave_channel(channel)
            except Exception:
                log.exception("cleanup failed ws=%s session=%s channel=%s", self.workspace, self.id, channel)
        try:
            await self.ctx.cache.presence_remove(self.workspace, WORKSPACE_PRESENCE, self.id)
        except StormError:
            log.warning("presence cleanup failed ws=%s session=%s", self.workspace, self.id)


def history_message(m: Any, author_name: str, reactions: dict[str, int]) -> e.HistoryMessage:
    return e.HistoryMessage(
        id=str(m.id), offset=m.offset, author=str(m.author_id), author_name=author_name,
        text="" if m.deleted_at else m.body, ts=m.created_at.timestamp(), cmid=m.client_msg_id,
        thread=str(m.thread_id) if m.thread_id else None,
        edited_ts=m.edited_at.timestamp() if m.edited_at else None, deleted=m.deleted_at is not None,
        reactions=reactions,
    )


def _code_of(exc: StormError) -> str:
    known = {x.value for x in ErrorCode}
    return exc.code if exc.code in known else ErrorCode.INTERNAL.value

