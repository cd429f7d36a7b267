"""The session core: protocol v1 logic for one connection, with no socket I/O (docs/protocol.md).

The I/O layer (gateway/connection.py) hands it decoded frames (:meth:`Session.receive`) and gives it a
:class:`Transport` to push encoded events to and to ask for a close.  Everything it needs from the world
(broker, cache, directory, hub, clock) comes through :class:`SessionContext`, so tests drive it with the
embedded adapters and a list as transport (tests/service/test_session.py).

This module is the state machine: AWAITING_AUTH -> OPEN -> CLOSED (illegal transitions raise), the
handshake and admission, dispatch of commands, deadlines, revocations and the close.  Its parts:

* storm/protocol/subscriptions.py: subscribe with replay, live channel events (:meth:`on_channel_event`,
  called by the hub with each event already encoded once for every recipient), unsubscribe, withdrawal,
  presence and typing;
* storm/protocol/chat.py: the chat rules (publish with ``cmid``, edit, delete, react, read markers,
  history), shared with the tenants API;
* storm/protocol/failures.py: how a command ends badly — ``Refused`` answers one command with an error,
  ``Disconnect`` ends the session (caught once, in :meth:`Session.receive`).
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import uuid
from typing import Any

from storm import revocation
from storm.directory import Principal
from storm.domain import MAX_BODY_CHARS, Channel, Role
from storm.errors import Forbidden, NotFound, StormError, Unauthenticated, Unavailable
from storm.ports.identity import Claims
from storm.protocol import commands as c
from storm.protocol import events as e
from storm.protocol.chat import Posted, read_state
from storm.protocol.codes import CloseCode, ErrorCode
from storm.protocol.context import Hub, SessionContext, Transport
from storm.protocol.failures import Disconnect, Refused
from storm.protocol.failures import revocation as revoked_access
from storm.protocol.quota import WORKSPACE_PRESENCE
from storm.protocol.subscriptions import Subscriptions, presence_entry
from storm.ratelimit import TokenBucket

__all__ = ["MAX_BAD_FRAMES", "Hub", "Session", "SessionContext", "State", "Transport"]

log = logging.getLogger("storm.session")

MAX_BAD_FRAMES = 10
NO_SUCH_WORKSPACE = "no such workspace, or not a member of it"


class State(enum.Enum):
    AWAITING_AUTH = "awaiting_auth"
    OPEN = "open"
    CLOSED = "closed"


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
        self.subscriptions = Subscriptions(ctx, self)
        self._bad_frames = 0
        self._bucket = TokenBucket(ctx.config.publish_rate, ctx.config.publish_burst, now)
        self.close_code: int | None = None
        self._expires_at = float("inf")  # wall clock: the token's exp
        self._warn_at = float("inf")  # wall clock: the next token deadline (`token.expiring`, then the exp itself)
        self._counted = False  # holds one of the workspace's plan connections
        self._controlled = False  # registered with the ControlRouter
        self.draining = False  # the gateway drains: frames from now on are dropped (the client resends them)
        self.busy = False  # a frame is being handled (the drain waits for its ack)
        self._result = "ok"  # of the command being handled: "ok" or the error code sent (storm.commands)
        self._gone = False  # counted in storm.gateway.disconnects
        self._auth_at: float | None = None  # when the auth frame arrived (its verification may still run)

    # -- properties the hub, the route and the control router use ------------------------------------------
    @property
    def workspace(self) -> str:
        assert self.principal is not None
        return self.principal.workspace.slug

    @property
    def token_id(self) -> str:
        return self.principal.claims.token_id if self.principal else ""

    @property
    def ended(self) -> bool:
        return self.state is State.CLOSED

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
        except Disconnect as end:
            self._end(end)
            await self._release()  # what admission took goes back now, not when the socket is gone
        finally:
            self.busy = False

    def arrived(self) -> None:
        """A frame came off the socket (the I/O layer calls this before queueing it for :meth:`receive`).
        The idle and auth deadlines count from here: a gateway busy re-admitting a reconnect storm may get to
        the frame seconds later, and judged on that it closed healthy clients 4002 (idle) and 4003 (no auth
        in time) although their pings and auth frames had come in time (docs/benchmarks.md, reconnect)."""
        self.last_seen = now = self.ctx.clock.monotonic()
        if self.state is State.AWAITING_AUTH and self._auth_at is None:
            self._auth_at = now

    def answer_ping(self, data: bytes | str) -> bool:
        """Answer ``data`` now if it is a ``ping`` of an open session with nothing else in flight (the I/O
        layer asks, after :meth:`arrived`, before queueing a frame for :meth:`receive`, whose task per frame
        was most of what a heartbeat cost a gateway holding 50 000 connections).  False: not handled, queue
        it as usual."""
        if self.state is not State.OPEN or self.draining or self.busy:
            return False
        if (b'"ping"' not in data) if isinstance(data, bytes) else ('"ping"' not in data):
            return False  # not a ping (a message whose text is "ping" is decoded twice: cheap, and rare)
        try:
            cmd = c.decode_command(data, self.ctx.config.max_frame_bytes)
        except c.ProtocolViolation:
            return False  # reported by the usual path
        if type(cmd) is not c.Ping:
            return False
        self._bad_frames = 0
        self._pong(cmd)
        self.ctx.meters.command("ping", "ok")
        return True

    def _pong(self, cmd: c.Ping) -> None:
        """A ping's answer: its pong and nothing else, no cache, no database (tests/service/test_heartbeat.py)."""
        self._send(e.Pong(id=cmd.id, ts=self.ctx.clock.time()))

    async def _receive(self, data: bytes | str) -> None:
        self.last_seen = self.ctx.clock.monotonic()
        try:
            cmd = c.decode_command(data, self.ctx.config.max_frame_bytes)
        except c.ProtocolViolation as exc:
            self._protocol_error(exc)
            return
        if self.state is State.AWAITING_AUTH:
            if self._auth_at is None:  # not stamped on arrival (a caller without an I/O layer)
                self._auth_at = self.last_seen
            await self._authenticate(cmd)
            return
        self._bad_frames = 0  # presence and access are kept beside the session (storm/protocol/presence.py)
        rid = getattr(cmd, "id", None)
        self._result = "ok"
        try:
            await self._dispatch(cmd)
        except Disconnect:
            raise
        except Refused as exc:
            self._error(exc.code, exc.message, id=rid, field=exc.field, channel=_channel_of(cmd))
        except StormError as exc:
            self._error(_code_of(exc), exc.message, id=rid, field=exc.field, channel=_channel_of(cmd))
        except Exception:
            log.exception("session bug ws=%s session=%s op=%s", self.workspace, self.id,
                          type(cmd).__name__.lower())
            self._error(ErrorCode.INTERNAL, "internal error", id=rid, channel=_channel_of(cmd))
        self.ctx.meters.command(type(cmd).__name__.lower(), self._result)

    def _protocol_error(self, exc: c.ProtocolViolation) -> None:
        self._bad_frames += 1
        if self.state is State.AWAITING_AUTH:
            raise Disconnect(CloseCode.UNAUTHENTICATED, exc.code, exc.message, reason="expected an auth message",
                             id=exc.id, field=exc.field)
        if self._bad_frames >= MAX_BAD_FRAMES:
            raise Disconnect(CloseCode.PROTOCOL_VIOLATION, exc.code, exc.message, reason="too many invalid frames",
                             id=exc.id, field=exc.field)
        self._error(exc.code, exc.message, id=exc.id, field=exc.field)

    # -- handshake and admission ---------------------------------------------------------------------------
    async def _authenticate(self, cmd: c.Command) -> None:
        if not isinstance(cmd, c.Auth):
            raise Disconnect(CloseCode.UNAUTHENTICATED, ErrorCode.UNAUTHENTICATED, "the first message must be auth",
                             reason="expected an auth message")
        try:
            claims = await self.ctx.identity.verify(cmd.token)
        except Unavailable as exc:  # the key set could not be fetched: not the token's fault
            raise _outage(exc) from exc
        except StormError as exc:
            raise Disconnect(CloseCode.UNAUTHENTICATED, ErrorCode.UNAUTHENTICATED, exc.message,
                             reason="authentication failed") from exc
        if claims.workspace == "*":
            raise Disconnect(CloseCode.UNAUTHENTICATED, ErrorCode.UNAUTHENTICATED,
                             "a session needs a token bound to one workspace (its `ws` claim is \"*\"); "
                             "ask for a token of the workspace to connect to", reason="authentication failed",
                             field="token")
        try:
            principal = await self.ctx.directory.principal(claims)
        except (NotFound, Forbidden) as exc:  # one answer for both: no probing for which workspaces exist
            raise Disconnect(CloseCode.UNAUTHENTICATED, ErrorCode.UNAUTHENTICATED, NO_SUCH_WORKSPACE,
                             reason="authentication failed") from exc
        except Unavailable as exc:  # the cache or the store is down (a Hazelcast loss): retry, not refused
            raise _outage(exc) from exc
        except StormError as exc:
            raise Disconnect(CloseCode.UNAUTHENTICATED, ErrorCode.UNAUTHENTICATED, exc.message,
                             reason="authentication failed") from exc
        if self.state is State.CLOSED:  # timed out while we were verifying
            return
        self.principal = principal
        await self._admit(principal)
        if self.ended:  # closed meanwhile (a revocation, the auth deadline)
            await self._release()
            return
        self.state = State.OPEN
        self._token_deadlines(claims)
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
        self.ctx.meters.connected((self.ctx.clock.monotonic() - self.opened_at) * 1000.0)
        await self.ctx.cache.presence_add(principal.workspace.slug, WORKSPACE_PRESENCE, self.id,
                                          presence_entry(principal), cfg.presence_ttl_s, first=False,
                                          lease=self.ctx.presence_lease)

    async def _admit(self, p: Principal) -> None:
        """After the token: the revocation list and the plan's connection quota.  Raises Disconnect when the
        session may not open (:meth:`receive` then gives back what was taken)."""
        ws = p.workspace.slug
        ctx = self.ctx
        try:
            await ctx.control.add(ctx.hub, ws, p.claims.subject, self)  # first: a racing revocation is seen
            self._controlled = True
            await revocation.check(ctx.cache, ws, p.claims)
            admitted = await ctx.connections.take(ws, p.workspace.quotas.max_connections)
            self._counted = True
        except Unauthenticated as exc:
            raise Disconnect(CloseCode.REVOKED, ErrorCode.UNAUTHENTICATED, exc.message,
                             reason="access revoked") from exc
        except StormError as exc:
            raise Disconnect(CloseCode.INTERNAL, _code_of(exc), exc.message,
                             reason="could not open the session") from exc
        if not admitted:
            raise Disconnect(CloseCode.TOO_MANY_CONNECTIONS, ErrorCode.QUOTA_EXCEEDED,
                             f"the {p.workspace.plan} plan allows {p.workspace.quotas.max_connections} connections",
                             reason="workspace connection quota reached", field="connections")

    async def _release(self) -> None:
        """Give back what :meth:`_admit` took.  Idempotent; never raises."""
        p = self.principal
        if p is None:
            return
        ws = p.workspace.slug
        if self._controlled:
            self._controlled = False
            try:
                await self.ctx.control.remove(self.ctx.hub, ws, p.claims.subject, self)
            except Exception:
                log.exception("control cleanup failed ws=%s session=%s", ws, self.id)
        if self._counted:
            self._counted = False
            try:
                await self.ctx.connections.give_back(ws)
            except Exception:
                log.exception("quota cleanup failed ws=%s session=%s", ws, self.id)

    async def _reauthenticate(self, cmd: c.Auth) -> None:
        """``auth`` on an open session: a fresh token for the same user and workspace extends the session."""
        p = self._p()
        try:
            claims = await self.ctx.identity.verify(cmd.token)
        except StormError as exc:
            self.ctx.meters.auth_failures["refresh_refused"].value += 1
            raise Refused(ErrorCode.UNAUTHENTICATED, f"token refresh refused: {exc.message}", field="token") from exc
        if claims.subject != p.claims.subject or claims.workspace not in (p.claims.workspace, p.workspace.slug):
            raise Refused(ErrorCode.ALREADY_AUTHENTICATED,
                          "this session is authenticated as another user or workspace; open a new connection",
                          field="token")
        try:
            await revocation.check(self.ctx.cache, p.workspace.slug, claims)
        except Unauthenticated as exc:
            raise revoked_access(exc.message) from exc
        self.principal = dataclasses.replace(p, claims=claims)
        self._token_deadlines(claims)
        self._send(e.TokenRefreshed(expires_at=claims.expires_at))

    # -- the control router's calls (storm/revocation.py, Revocable) ----------------------------------------
    def revoked(self, reason: str) -> None:
        """This session's subject was logged out, banned or removed from the workspace."""
        self._end(revoked_access(reason, tell=self.state is State.OPEN))

    def withdrawn(self, channel: str) -> None:
        """This session's user was removed from a private channel: the subscription ends at once."""
        if self.state is State.OPEN:
            self.subscriptions.withdraw(channel, racing=self.busy)

    # -- commands ---------------------------------------------------------------------------------------
    async def _dispatch(self, cmd: c.Command) -> None:
        subs = self.subscriptions
        match cmd:
            case c.Publish():
                await self._publish(cmd)
            case c.Subscribe():
                await subs.subscribe(self._p(), cmd)
            case c.Unsubscribe():
                await subs.unsubscribe(cmd)
            case c.Typing():
                await subs.typing(self._p(), cmd)
            case c.Ping():
                self._pong(cmd)
            case c.Presence():
                await subs.presence(self._p(), cmd)
            case c.History():
                await self._history(cmd)
            case c.Edit() | c.Delete() | c.React():
                await self._change(cmd)
            case c.Read():
                await self._read(cmd)
            case c.Unread():
                await self._unread(cmd)
            case c.Auth():
                await self._reauthenticate(cmd)

    def _p(self) -> Principal:
        assert self.principal is not None
        return self.principal

    async def _write_access(self, channel_id: str) -> tuple[Principal, Channel]:
        """Who writes where, for publish, edit, delete and react: the channel must be writable by the
        principal, and the buckets must have room (else ``rate_limited``)."""
        p = self._p()
        ch = await self.ctx.directory.check_channel_access(p, channel_id, write=True)
        await self._limit(p)
        return p, ch

    async def _limit(self, p: Principal) -> None:
        """Token buckets, cheapest first: this connection (local), the user and the workspace (in the
        cache, so shared by every gateway when the cache is distributed).  Over any: ``rate_limited``."""
        if not self._bucket.take(self.ctx.clock.monotonic()):
            self.ctx.meters.ratelimit["connection"].value += 1
            raise Refused(ErrorCode.RATE_LIMITED, f"rate limited; retry in {self._bucket.retry_after():.2f}s")
        cfg = self.ctx.config
        ws_rate = cfg.workspace_publish_rate or float(p.workspace.quotas.messages_per_second)
        for key, rate, burst, scope in (
            (f"rate:user:{p.user.id.hex}", cfg.user_publish_rate, cfg.user_publish_burst, "user"),
            ("rate:workspace", ws_rate, max(1, int(ws_rate * 2)), "workspace"),
        ):
            wait = await self.ctx.limiter.take(p.workspace.slug, key, rate, burst)
            if wait > 0:
                self.ctx.meters.ratelimit[scope].value += 1
                raise Refused(ErrorCode.RATE_LIMITED, f"{scope} rate limited; retry in {wait:.2f}s")

    async def _publish(self, cmd: c.Publish) -> None:
        p, ch = await self._write_access(cmd.channel)
        posted = await self.ctx.chat.publish(p, ch, cmid=cmd.cmid, text=cmd.text, thread=cmd.thread)
        self._ack(cmd.id, ch, posted, cmid=cmd.cmid)
        self.ctx.meters.ack_written(self.last_seen)  # storm.publish.ack_latency, ends when the ack is written

    async def _change(self, cmd: c.Edit | c.Delete | c.React) -> None:
        p, ch = await self._write_access(cmd.channel)
        chat = self.ctx.chat
        if isinstance(cmd, c.Edit):
            posted = await chat.edit(p, ch, cmd.message_id, cmd.text)
        elif isinstance(cmd, c.Delete):
            posted = await chat.delete(p, ch, cmd.message_id)
        else:
            posted = await chat.react(p, ch, cmd.message_id, cmd.emoji, remove=cmd.remove)
        self._ack(cmd.id, ch, posted)

    async def _read(self, cmd: c.Read) -> None:
        p = self._p()
        ch = await self.ctx.directory.check_channel_access(p, cmd.channel)
        stored = await self.ctx.chat.mark_read(p, ch, cmd.offset)
        self._send(e.Ack(id=cmd.id, channel=str(ch.id), offset=stored))

    async def _history(self, cmd: c.History) -> None:
        p = self._p()
        ch = await self.ctx.directory.check_channel_access(p, cmd.channel)
        page = await self.ctx.pages.page(p.workspace.id, ch.id, before=cmd.before,
                                         limit=min(cmd.limit, self.ctx.config.history_page_max), reader=p.user.id)
        self._send(e.HistoryPage(channel=str(ch.id), id=cmd.id, next_before=page.next_before, messages=page.messages,
                                 offset=page.offset))

    async def _unread(self, cmd: c.Unread) -> None:
        """The read state of every channel the user can read (the sidebar's badges)."""
        p = self._p()
        async with self.ctx.store.unit_of_work() as uow:
            channels = await uow.channels.list_for_user(p.workspace.id, p.user.id)
        state = await read_state(self.ctx.store, p.workspace.id, p.user.id, [ch.id for ch in channels])
        self._send(e.UnreadList(id=cmd.id, channels=[
            e.ChannelUnread(channel=str(ch.id), read=state[ch.id][0], unread=state[ch.id][1]) for ch in channels]))

    # -- presence and access, kept by the gateway's PresenceKeeper (storm/protocol/presence.py) -----------
    @property
    def kept(self) -> Principal | None:
        return self.principal if self.state is State.OPEN else None

    def presence_channels(self) -> list[str]:
        return [WORKSPACE_PRESENCE, *self.subscriptions.channels]

    def role_rechecked(self, role: Role) -> None:
        """The keeper's look-up of the membership, about every ``STORM_PRESENCE_TTL_S`` / 3: a role change
        whose control event was lost still reaches the session (a removal or a ban ends it: :meth:`revoked`)."""
        p = self.principal
        if p is not None and role is not p.role:
            self.principal = dataclasses.replace(p, role=role)

    # -- output -----------------------------------------------------------------------------------------
    def _send(self, event: Any) -> None:
        self.transport.send(e.encode(event))

    def _ack(self, rid: int | None, ch: Channel, posted: Posted, *, cmid: str | None = None) -> None:
        self._send(e.Ack(id=rid, channel=str(ch.id), cmid=cmid, message_id=posted.message_id, offset=posted.offset,
                         duplicate=posted.duplicate))

    def _error(self, code: ErrorCode | str, message: str, *, id: int | None = None, field: str | None = None,
               channel: str | None = None) -> None:
        self._result = str(code)
        self._send(e.Error(code=str(code), message=message, id=id, field=field, channel=channel))

    def _end(self, end: Disconnect) -> None:
        """The error event (if any), then the close.  Nothing once closed."""
        if self.state is State.CLOSED:
            return
        if self.state is State.AWAITING_AUTH:  # a connect that never reached hello (storm.gateway.connects)
            self.ctx.meters.refused(end.close_code, invalid_token=end.__cause__ is not None)
        if end.error_code is not None:
            self._error(end.error_code, end.message, id=end.id, field=end.field)
        self._close(end.close_code, end.reason)

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
        """A broadcast event for one of our channels, already encoded (called by the hub)."""
        self.subscriptions.deliver(channel, offset, data)

    # -- deadlines (called by the hub's sweeper) ----------------------------------------------------------
    @property
    def awaiting_auth(self) -> bool:
        """Not authenticated yet: the authentication deadline still applies (the hub's sweeper)."""
        return self.state is State.AWAITING_AUTH

    def _token_deadlines(self, claims: Claims) -> None:
        """A new token (auth or refresh): its expiry, and its warning ``STORM_TOKEN_EXPIRY_WARNING_S`` before."""
        self._expires_at = claims.expires_at
        self._warn_at = claims.expires_at - self.ctx.config.token_expiry_warning_s

    def check_deadlines(self, now: float, wall: float | None = None) -> None:
        """``now``: the monotonic clock; ``wall``: the wall clock (token expiry), read once per sweep by the
        hub, else here."""
        cfg = self.ctx.config
        # the common case, checked first and cheaply: an open session with nothing due (the sweeper visits
        # every session every few seconds)
        if self.state is State.OPEN and wall is not None and wall < self._warn_at \
                and now - self.last_seen < cfg.idle_timeout_s:
            return
        if self.state is State.AWAITING_AUTH and self._auth_at is not None:
            # The auth frame came in time; verifying it is what is slow (an overloaded gateway, a slow
            # directory).  Not the client's fault: a reconnectable close, so the client retries with backoff
            # (4003 is final; an SDK client closed with it during a reconnect storm never came back).
            if now - self._auth_at >= cfg.auth_timeout_s:
                self._end(Disconnect(CloseCode.INTERNAL, ErrorCode.UNAVAILABLE,
                                     "authentication took too long; reconnect", reason="authentication too slow"))
        elif self.state is State.AWAITING_AUTH and now - self.opened_at >= cfg.auth_timeout_s:
            self._end(Disconnect(CloseCode.AUTH_TIMEOUT, ErrorCode.UNAUTHENTICATED, "no auth message in time",
                                 reason="authentication timeout"))
        elif self.state is State.OPEN:
            if now - self.last_seen >= cfg.idle_timeout_s:
                self._close(CloseCode.IDLE_TIMEOUT, "idle timeout")
                return
            if wall is None:
                wall = self.ctx.clock.time()
            if wall >= self._expires_at:
                self._end(Disconnect(CloseCode.TOKEN_EXPIRED, ErrorCode.UNAUTHENTICATED,
                                     "token expired; reconnect with a fresh token", reason="token expired"))
            elif wall >= self._warn_at:  # the warning's time (once: the next deadline is the expiry itself)
                self._warn_at = self._expires_at
                self._send(e.TokenExpiring(expires_at=self._expires_at))

    # -- teardown ---------------------------------------------------------------------------------------
    async def closed(self) -> None:
        """The connection is gone: leave every channel and drop presence.  Idempotent."""
        self.state = State.CLOSED
        if not self._gone:
            self._gone = True
            self.ctx.meters.disconnect(self.close_code)
        if self.principal is None:
            return
        await self._release()
        await self.subscriptions.leave_all()
        try:
            await self.ctx.cache.presence_remove(self.workspace, WORKSPACE_PRESENCE, self.id, last=False)
        except StormError:
            log.warning("presence cleanup failed ws=%s session=%s", self.workspace, self.id)


def _outage(exc: Unavailable) -> Disconnect:
    """A handshake that failed on a dependency (cache, store, key set), not on the token: 1011 + ``unavailable``,
    which clients retry with backoff.  It was answered 4001 ``unauthenticated``, final for a client, and a
    Hazelcast loss in `storm day` refused thousands of valid tokens so (docs/security.md, "Identity")."""
    return Disconnect(CloseCode.INTERNAL, ErrorCode.UNAVAILABLE, f"{exc.message}; reconnect",
                      reason="a service is unavailable")


def _channel_of(cmd: c.Command) -> str | None:
    """The channel an error event names: the command's, in canonical form when it is a UUID."""
    channel: str | None = getattr(cmd, "channel", None)
    if channel is None:
        return None
    try:
        return str(uuid.UUID(channel))
    except ValueError:
        return channel


def _code_of(exc: StormError) -> ErrorCode:
    try:
        return ErrorCode(exc.code)
    except ValueError:
        return ErrorCode.INTERNAL
