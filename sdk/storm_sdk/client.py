"""`StormClient`: a resilient asyncio client of protocol v1 (docs/sdk.md, docs/protocol.md).

One task owns the connection loop: get a token from ``token_provider``, connect, ``auth``, wait for
``hello``, then resubscribe every channel with ``since`` = the last offset seen and resend the outbox in
order with the same cmids.  When the socket drops with a reconnectable code, it waits a full-jitter
backoff (``retry_ms`` of a 1012 honoured) and starts again.  Per connection, one writer task sends
frames in order, one sender task feeds the outbox through a client-side token bucket sized from
``hello.limits``, and one task pings every ``heartbeat_s``.  On ``token.expiring`` the client sends
``auth`` again with a fresh token from the provider (the server answers ``token.refreshed``).

Events reach the app through :meth:`StormClient.events`, once each: channel events are filtered by
``(channel, offset)`` (only offsets above the last one seen pass), and messages also by
``(channel, author, cmid)`` so that a retry the server could not recognise (an embedded server that
restarted and forgot its cmid claims) is not shown twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from storm_sdk import events as ev
from storm_sdk.backoff import Backoff, BackoffPolicy
from storm_sdk.errors import ClientClosed, ConnectionLost, RequestTimeout, StormError, StormSdkError
from storm_sdk.outbox import Outbox, PendingMessage, SendState

log = logging.getLogger("storm_sdk")

TokenProvider = Callable[[], Awaitable[str] | str]

#: Close codes after which the client reconnects (storm.protocol.codes.RECONNECTABLE, plus 1006 = dropped).
RECONNECT_CODES = frozenset({1001, 1006, 1011, 1012, 1013, 4002, 4008, 4009, 4029})
#: Publish errors retried with the same cmid (docs/protocol.md#error-codes).
RETRY_PUBLISH = frozenset({"unavailable", "conflict", "rate_limited"})
_END = object()


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """Every knob of :class:`StormClient`; docs/sdk.md#options explains each."""

    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    outbox_max: int = 1000  # unacknowledged messages kept; publish raises OutboxFull beyond
    connect_timeout_s: float = 10.0  # TCP + WebSocket handshake, then again auth -> hello
    request_timeout_s: float = 10.0  # subscribe/history/presence/read replies (waiting for a connection included)
    heartbeat_s: float | None = None  # protocol ping period; None: hello.heartbeat_s
    publish_retry_max_s: float = 10.0  # cap of the delay before resending after unavailable/conflict/rate_limited
    max_attempts: int | None = None  # consecutive failed connection attempts before giving up (None: never)
    seen_cmids: int = 10_000  # (channel, author, cmid) remembered to drop re-published duplicates
    max_frame_bytes: int = 16 * 1024 * 1024  # largest server frame accepted
    rng: random.Random | None = None  # jitter source; pass a seeded Random in tests

    def __post_init__(self) -> None:
        for name in ("outbox_max", "seen_cmids", "max_frame_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"ClientOptions.{name} must be >= 1")
        for name in ("connect_timeout_s", "request_timeout_s", "publish_retry_max_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ClientOptions.{name} must be > 0")
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("ClientOptions.max_attempts must be >= 1 or None")


@dataclass(eq=False)
class _Sub:
    channel: str
    last: int | None  # last offset processed; None until the first `subscribed`
    confirmed: asyncio.Event = field(default_factory=asyncio.Event)  # subscribed on the current connection
    reply: ev.Subscribed | None = None
    error: BaseException | None = None


@dataclass(eq=False, slots=True)
class _Request:
    op: str
    future: asyncio.Future[Any] | None = None
    channel: str | None = None
    cmid: str | None = None


class _Conn:
    """The live connection: its generation, socket and write queue."""

    def __init__(self, gen: int, ws: ClientConnection) -> None:
        self.gen = gen
        self.ws = ws
        self.queue: asyncio.Queue[str] = asyncio.Queue()
        self.tasks: list[asyncio.Task[None]] = []


class StormClient:
    """A STORM client that survives disconnects.  ``async with StormClient(url, provider) as client:``."""

    def __init__(self, url: str, token_provider: TokenProvider, options: ClientOptions | None = None) -> None:
        if not url.startswith(("ws://", "wss://")):
            raise ValueError(f"StormClient: url must start with ws:// or wss:// (got {url!r})")
        if not callable(token_provider):
            raise TypeError("StormClient: token_provider must be a callable returning a token (or an awaitable)")
        self.url = url
        self.options = options or ClientOptions()
        self._token_provider = token_provider
        self._rng = self.options.rng or random.Random()  # jitter, not security
        self._backoff = Backoff(self.options.backoff, self._rng)
        self._retry_after: float | None = None  # Retry-After of the last refused upgrade (503, 429)
        self._state = ev.ConnectionState.IDLE
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._outbox = Outbox(self.options.outbox_max)
        self._subs: dict[str, _Sub] = {}
        self._requests: dict[int, _Request] = {}
        self._ids = itertools.count(1)
        self._gens = itertools.count(1)
        self._conn: _Conn | None = None
        self._hello: ev.Hello | None = None
        self._online = asyncio.Event()
        self._wake = asyncio.Event()
        self._seen: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._finished = False
        self._close_error: ClientClosed | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start connecting in the background; returns at once (see :meth:`wait_online`)."""
        if self._started:
            raise RuntimeError("StormClient.start() called twice")
        self._started = True
        self._task = asyncio.create_task(self._run(), name=f"storm-sdk {self.url}")

    async def stop(self) -> None:
        """Close the connection and end :meth:`events`.  Idempotent.  Unacked messages stay in
        :attr:`pending` (their :meth:`PendingMessage.wait` raises :class:`ClientClosed`)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._finish(ClientClosed())

    async def __aenter__(self) -> StormClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- observation ---------------------------------------------------------------------------------------
    @property
    def state(self) -> ev.ConnectionState:
        return self._state

    @property
    def hello(self) -> ev.Hello | None:
        """The ``hello`` of the current (or last) session: user, workspace, limits."""
        return self._hello

    @property
    def pending(self) -> list[PendingMessage]:
        """Messages published and not acknowledged yet, oldest first."""
        return list(self._outbox)

    def last_offset(self, channel: str) -> int | None:
        """The last offset of ``channel`` processed (the ``since`` of the next resume)."""
        sub = self._subs.get(channel)
        return sub.last if sub else None

    def events(self) -> AsyncIterator[ev.Event]:
        """All events, in order, once each; ends after :meth:`stop` or a final close.  Events are
        buffered from construction on; iterate from one task (two iterators would split the events)."""
        return _EventStream(self._queue)

    async def wait_online(self, timeout: float | None = None) -> ev.Hello:
        """Wait until the client is authenticated; raise ClientClosed if it closed for good."""
        try:
            async with asyncio.timeout(timeout):
                await self._wait_online()
        except TimeoutError:
            raise RequestTimeout(f"not online within {timeout} s (state {self._state})") from None
        assert self._hello is not None
        return self._hello

    # -- commands ----------------------------------------------------------------------------------------
    async def subscribe(self, channel: str, *, since: int | None = None, timeout: float | None = None
                        ) -> ev.Subscribed:
        """Follow ``channel`` on this and every later connection; wait for the server's ``subscribed``.

        ``since`` is the last offset you already have (e.g. from your own storage): the server replays
        what follows.  Raises StormError (``not_found``, ``forbidden``…) if the server refuses."""
        self._check_open()
        sub = self._subs.get(channel)
        if sub is None:
            sub = self._subs[channel] = _Sub(channel, since)
            self._send_subscribe(sub)
        elif since is not None and since != sub.last:
            sub.last = since
            sub.confirmed.clear()
            self._send_subscribe(sub)
        wait = self.options.request_timeout_s if timeout is None else timeout
        try:
            async with asyncio.timeout(wait):
                await sub.confirmed.wait()
        except TimeoutError:
            raise RequestTimeout(f"subscribe {channel}: no reply within {wait} s (state {self._state})") from None
        if sub.error is not None:
            raise sub.error
        assert sub.reply is not None
        return sub.reply

    async def unsubscribe(self, channel: str) -> None:
        """Stop following ``channel`` (its events stop at once, even before the server's reply)."""
        if self._subs.pop(channel, None) is None or self._conn is None:
            return
        with contextlib.suppress(StormError, ConnectionLost, RequestTimeout):
            await self._request("unsubscribe", {"channel": channel}, retry=False)

    def publish(self, channel: str, text: str, *, thread: str | None = None, cmid: str | None = None
                ) -> PendingMessage:
        """Queue ``text`` for ``channel`` and return its local echo at once.  It is sent now if online,
        else on the next connection, and resent with the same cmid until acknowledged.  Raises
        OutboxFull when ``outbox_max`` messages are unacknowledged, ValueError for empty or long text."""
        self._check_open()
        limit = self._hello.limits.max_body_chars if self._hello else 4000
        if not text:
            raise ValueError("publish: text is empty")
        if len(text) > limit:
            raise ValueError(f"publish: text longer than {limit} characters")
        cmid = cmid or uuid.uuid4().hex
        if not 1 <= len(cmid) <= 64:
            raise ValueError("publish: cmid must have 1 to 64 characters")
        msg = PendingMessage(cmid=cmid, channel=channel, text=text, thread=thread)
        self._outbox.add(msg)
        self._wake.set()
        return msg

    async def history(self, channel: str, *, before: int | None = None, limit: int = 50,
                      timeout: float | None = None) -> ev.History:
        """One page of stored messages with ``offset < before`` (newest when None), **newest first**."""
        fields: dict[str, Any] = {"channel": channel, "limit": limit}
        if before is not None:
            fields["before"] = before
        result: ev.History = await self._request("history", fields, timeout=timeout)
        return result

    async def reload(self, channel: str, *, limit: int = 50, timeout: float | None = None
                     ) -> list[ev.HistoryMessage]:
        """After :class:`ResyncRequired`: the newest ``limit`` stored messages, **oldest first**.  A followed
        channel then resumes from the offset the newest page reflects, so the events after it (and only
        those) follow the messages returned."""
        out, offset = await self._newest(channel, limit, timeout)
        if channel in self._subs:
            await self.subscribe(channel, since=offset, timeout=timeout)
        return out

    async def open_channel(self, channel: str, *, limit: int = 50, timeout: float | None = None
                           ) -> list[ev.HistoryMessage]:
        """Show a channel: its newest ``limit`` stored messages (**oldest first**), then follow it from the
        offset that page reflects (``history.offset``), so each later event applies once on top of what
        the page shows: nothing missed, nothing counted twice (reaction counts included)."""
        out, offset = await self._newest(channel, limit, timeout)
        await self.subscribe(channel, since=offset, timeout=timeout)
        return out

    async def _newest(self, channel: str, limit: int, timeout: float | None
                      ) -> tuple[list[ev.HistoryMessage], int]:
        out: list[ev.HistoryMessage] = []
        before: int | None = None
        offset: int | None = None
        while len(out) < limit:
            page = await self.history(channel, before=before, limit=min(100, limit - len(out)), timeout=timeout)
            offset = page.offset if offset is None else offset  # the newest page's: what the client shows
            out.extend(page.messages)
            if page.next_before is None or not page.messages:
                break
            before = page.next_before
        out.reverse()
        return out, offset or 0

    async def unread(self, *, timeout: float | None = None) -> ev.Unread:
        """The read marker and unread count of every channel the user can read (a sidebar's badges)."""
        result: ev.Unread = await self._request("unread", {}, timeout=timeout)
        return result

    async def presence(self, channel: str, *, cursor: str | None = None, limit: int | None = None,
                       timeout: float | None = None) -> ev.Presence:
        """One page of the channel's users; pass the reply's ``next_cursor`` as ``cursor`` for the next.
        ``limit`` is capped by the server (STORM_PRESENCE_PAGE_MAX)."""
        args: dict[str, Any] = {"channel": channel}
        if cursor is not None:
            args["cursor"] = cursor
        if limit is not None:
            args["limit"] = limit
        result: ev.Presence = await self._request("presence", args, timeout=timeout)
        return result

    async def read(self, channel: str, offset: int, *, timeout: float | None = None) -> ev.Ack:
        """Move your read marker of ``channel`` to ``offset``."""
        result: ev.Ack = await self._request("read", {"channel": channel, "offset": offset}, timeout=timeout)
        return result

    def typing(self, channel: str) -> bool:
        """Tell the channel you are typing (best effort; False when offline)."""
        return self._write({"op": "typing", "channel": channel})

    # -- connection loop ---------------------------------------------------------------------------------
    async def _run(self) -> None:
        self._set_state(ev.ConnectionState.CONNECTING)
        failures = 0
        try:
            while True:
                code, reason, reached_hello = await self._connect_once()
                failures = 0 if reached_hello else failures + 1
                if code is not None and code not in RECONNECT_CODES:
                    self._finish(ClientClosed(f"closed by the server ({code} {reason})".strip(),
                                              close_code=code, reason=reason), code=code, reason=reason)
                    return
                limit = self.options.max_attempts
                if limit is not None and failures >= limit:
                    self._finish(ClientClosed(f"gave up after {failures} failed attempts ({reason})",
                                              close_code=code, reason=reason), code=code, reason=reason)
                    return
                delay = self._backoff.next_delay(close_code=code, reason=reason, retry_after_s=self._retry_after)
                self._set_state(ev.ConnectionState.RECONNECTING, code=code, reason=reason, retry_in=delay)
                log.info("storm_sdk: reconnecting in %.2f s (%s %s)", delay, code, reason)
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # our bug: say so, and close rather than hang
            log.exception("storm_sdk: connection loop failed")
            self._finish(ClientClosed(f"internal error: {exc!r}"))

    async def _connect_once(self) -> tuple[int | None, str, bool]:
        """One connection, until it ends: (close code or None if never connected, reason, got hello)."""
        self._retry_after = None
        try:
            token = await self._get_token()
        except Exception as exc:
            log.warning("storm_sdk: token_provider failed: %r", exc)
            return None, f"token_provider failed: {exc}", False
        try:
            ws = await connect(self.url, open_timeout=self.options.connect_timeout_s, ping_interval=20,
                               ping_timeout=20, close_timeout=2, max_size=self.options.max_frame_bytes,
                               proxy=None, user_agent_header="storm-sdk")
        except InvalidStatus as exc:  # refused before the upgrade: 503 overload or 429 per address
            self._retry_after = _retry_after(exc)
            return None, f"connect refused: HTTP {exc.response.status_code}", False
        except (OSError, TimeoutError, WebSocketException) as exc:
            return None, f"connect failed: {exc}", False
        conn = self._conn = _Conn(next(self._gens), ws)
        conn.tasks.append(asyncio.create_task(self._writer(conn)))
        conn.queue.put_nowait(msgspec.json.encode({"op": "auth", "token": token}).decode())
        code, reason = 1006, ""
        try:
            async with asyncio.timeout(self.options.connect_timeout_s):
                while not (self._hello and self._online.is_set()):
                    self._on_frame(await ws.recv(), conn)
            conn.tasks.append(asyncio.create_task(self._sender(conn)))
            conn.tasks.append(asyncio.create_task(self._heartbeat(conn)))
            while True:
                self._on_frame(await ws.recv(), conn)
        except ConnectionClosed as exc:
            if exc.rcvd is not None:
                code, reason = exc.rcvd.code, exc.rcvd.reason
        except TimeoutError:
            reason = "no hello in time"
            with contextlib.suppress(Exception):
                await ws.close(1000, "no hello")
        finally:
            reached = self._online.is_set()
            self._connection_lost(conn)
            for task in conn.tasks:
                task.cancel()
            await asyncio.gather(*conn.tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.shield(ws.close())
        return code, reason, reached

    async def _get_token(self) -> str:
        token = self._token_provider()
        if inspect.isawaitable(token):
            token = await token
        if not isinstance(token, str) or not token:
            raise ValueError("token_provider returned no token")
        return token

    async def _refresh_token(self, conn: _Conn) -> None:
        """After ``token.expiring``: send ``auth`` again with a fresh token on the open session; the server
        answers ``token.refreshed``.  If that fails the socket closes with 4009 at expiry and the next
        connection asks the provider again."""
        try:
            token = await self._get_token()
        except Exception as exc:
            log.warning("storm_sdk: token_provider failed during refresh: %r", exc)
            return
        if self._conn is conn and self._online.is_set():
            conn.queue.put_nowait(msgspec.json.encode({"op": "auth", "token": token}).decode())

    async def _writer(self, conn: _Conn) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await conn.ws.send(await conn.queue.get())

    async def _heartbeat(self, conn: _Conn) -> None:
        every = self.options.heartbeat_s or (self._hello.heartbeat_s if self._hello else 25.0)
        while True:
            await asyncio.sleep(max(0.5, every))
            self._write({"op": "ping"})

    async def _sender(self, conn: _Conn) -> None:
        """Send the outbox in order on this connection, within the server's publish rate."""
        limits = self._hello.limits if self._hello else ev.Limits()
        rate = max(0.5, limits.publish_rate * 0.9)
        capacity = max(1.0, limits.publish_burst - 1.0)
        tokens, stamp = capacity, time.monotonic()
        while True:
            msg = self._outbox.next_to_send(conn.gen)
            if msg is None:
                self._wake.clear()
                if self._outbox.next_to_send(conn.gen) is None:
                    await self._wake.wait()
                continue
            now = time.monotonic()
            if msg.retry_at > now:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(msg.retry_at - now):
                        await self._wake.wait()
                continue
            tokens, stamp = min(capacity, tokens + (now - stamp) * rate), now
            if tokens < 1:
                await asyncio.sleep((1 - tokens) / rate)
                continue
            tokens -= 1
            rid = next(self._ids)
            self._requests[rid] = _Request("publish", channel=msg.channel, cmid=msg.cmid)
            frame: dict[str, Any] = {"op": "publish", "id": rid, "channel": msg.channel, "cmid": msg.cmid,
                                     "text": msg.text}
            if msg.thread:
                frame["thread"] = msg.thread
            self._write(frame)
            msg.sent_gen, msg.state = conn.gen, SendState.SENT
            msg.attempts += 1

    def _connection_lost(self, conn: _Conn) -> None:
        if self._conn is conn:
            self._conn = None
        self._online.clear()
        self._outbox.requeue_all()
        for sub in self._subs.values():
            sub.confirmed.clear()
        requests, self._requests = self._requests, {}
        for req in requests.values():
            if req.future is not None and not req.future.done():
                req.future.set_exception(ConnectionLost(f"{req.op}: the connection dropped before the reply"))

    # -- sending -----------------------------------------------------------------------------------------
    def _write(self, frame: dict[str, Any]) -> bool:
        conn = self._conn
        if conn is None or not self._online.is_set():
            return False
        conn.queue.put_nowait(msgspec.json.encode(frame).decode())
        return True

    def _send_subscribe(self, sub: _Sub) -> None:
        if self._conn is None or not self._online.is_set():
            return  # sent by _on_hello on the next connection
        rid = next(self._ids)
        self._requests[rid] = _Request("subscribe", channel=sub.channel)
        frame: dict[str, Any] = {"op": "subscribe", "id": rid, "channel": sub.channel}
        if sub.last is not None:
            frame["since"] = sub.last
        self._write(frame)

    def _retry_subscribe(self, sub: _Sub) -> None:
        if self._subs.get(sub.channel) is sub and not sub.confirmed.is_set() and not self._finished:
            self._send_subscribe(sub)

    async def _request(self, op: str, fields: dict[str, Any], *, timeout: float | None = None,
                       retry: bool = True) -> Any:
        """Send a request when online and wait for its reply; resent after a drop when ``retry``."""
        wait = self.options.request_timeout_s if timeout is None else timeout
        rid = 0
        try:
            async with asyncio.timeout(wait):
                while True:
                    await self._wait_online()
                    rid = next(self._ids)
                    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                    self._requests[rid] = _Request(op, future=future, channel=fields.get("channel"))
                    self._write({"op": op, "id": rid, **fields})
                    try:
                        return await future
                    except ConnectionLost:
                        if not retry:
                            raise
        except TimeoutError:
            raise RequestTimeout(f"{op}: no reply within {wait} s (state {self._state})") from None
        finally:
            self._requests.pop(rid, None)

    async def _wait_online(self) -> None:
        while True:
            self._check_open()
            if self._online.is_set() and self._conn is not None:
                return
            await self._online.wait()

    def _check_open(self) -> None:
        if self._finished:
            raise self._close_error or ClientClosed()

    # -- receiving ---------------------------------------------------------------------------------------
    def _on_frame(self, data: str | bytes, conn: _Conn) -> None:
        for event in ev.decode_frame(data):
            self._on_event(event, conn)

    def _on_event(self, event: ev.ServerEvent, conn: _Conn) -> None:
        req = self._requests.pop(event.id, None) if isinstance(event, ev.REPLY_TYPES) and event.id is not None else None
        match event:
            case ev.Hello():
                self._on_hello(event, conn)
            case ev.ServerError():
                self._on_error(event, req)
            case ev.Ack():
                self._reconcile(event.cmid, event.message_id, event.offset, event.duplicate)
                if req is not None and req.future is not None and not req.future.done():
                    req.future.set_result(event)
            case ev.Subscribed():
                self._on_subscribed(event)
            case ev.Message() | ev.Edit() | ev.Delete() | ev.Reaction():
                self._on_channel_event(event)
            case ev.Typing() | ev.PresenceJoin() | ev.PresenceLeave():
                if event.channel in self._subs:
                    self._emit(event)
            case ev.TokenExpiring():
                self._emit(event)
                conn.tasks.append(asyncio.create_task(self._refresh_token(conn)))
            case ev.TokenRefreshed():
                self._emit(event)
            case ev.Unsubscribed(reason=str()) if req is None:  # the server ended it: stop following
                sub = self._subs.pop(event.channel, None)
                if sub is not None:
                    if not sub.confirmed.is_set():  # a subscribe() waiting on a resubscribe
                        sub.error = StormError("not_found", f"subscription ended: {event.reason}", field="channel")
                        sub.confirmed.set()
                    self._emit(event)
            case _:  # Unsubscribed, Pong, Presence, History: replies
                if req is not None and req.future is not None and not req.future.done():
                    req.future.set_result(event)

    def _on_hello(self, hello: ev.Hello, conn: _Conn) -> None:
        self._hello = hello
        self._backoff.reset()
        self._online.set()
        self._set_state(ev.ConnectionState.ONLINE)
        for sub in self._subs.values():
            self._send_subscribe(sub)
        self._wake.set()

    def _on_error(self, error: ev.ServerError, req: _Request | None) -> None:
        if req is None:
            self._emit(error)
            return
        exc = StormError(error.code, error.message, field=error.field)
        if req.op == "publish" and req.cmid:
            self._on_publish_error(req.cmid, error, exc)
        elif req.op == "subscribe" and req.channel:
            sub = self._subs.get(req.channel)
            if sub is not None and error.code in RETRY_PUBLISH:  # unavailable: ask again shortly
                delay = 0.5 + self._rng.uniform(0, 1.0)
                asyncio.get_running_loop().call_later(delay, self._retry_subscribe, sub)
            elif sub is not None:
                del self._subs[req.channel]
                sub.error = exc
                sub.confirmed.set()
            self._emit(error)
        elif req.future is not None and not req.future.done():
            req.future.set_exception(exc)

    def _on_publish_error(self, cmid: str, error: ev.ServerError, exc: StormError) -> None:
        msg = self._outbox.get(cmid)
        if msg is None:
            return
        if error.code in RETRY_PUBLISH:
            ceiling = min(self.options.publish_retry_max_s, 0.25 * 2 ** min(msg.attempts, 10))
            msg.retry_at = time.monotonic() + ceiling / 2 + self._rng.uniform(0, ceiling / 2)
            msg.sent_gen, msg.state = -1, SendState.QUEUED
            self._wake.set()
            return
        self._outbox.pop(cmid)
        self._wake.set()  # the next message of its channel may go
        msg._fail(error.code, error.message, exc)
        self._emit(ev.SendFailed(msg, error.code, error.message))

    def _on_subscribed(self, reply: ev.Subscribed) -> None:
        sub = self._subs.get(reply.channel)
        if sub is None:
            return  # unsubscribed meanwhile
        if sub.last is None:
            sub.last = reply.offset
        elif reply.offset < sub.last:  # the log is behind what we saw: it lost events (embedded restart)
            sub.last = reply.offset
            self._emit(ev.ResyncRequired(reply.channel, ev.ResyncReason.LOG_REWOUND, reply.offset))
        if not reply.recovered:
            self._emit(ev.ResyncRequired(reply.channel, ev.ResyncReason.NOT_RECOVERED, reply.offset))
        sub.reply = reply
        sub.error = None
        sub.confirmed.set()
        self._emit(reply)

    def _on_channel_event(self, event: ev.ChannelEvent) -> None:
        sub = self._subs.get(event.channel)
        if sub is None:
            return
        if sub.last is not None and event.offset <= sub.last:
            return  # seen already (replay overlap, resubscribe)
        sub.last = event.offset
        if isinstance(event, ev.Message) and event.cmid:
            key = (event.channel, event.author, event.cmid)
            if key in self._seen:
                return  # the same message published twice by a retry the server did not recognise
            self._seen[key] = None
            if len(self._seen) > self.options.seen_cmids:
                self._seen.popitem(last=False)
            if self._hello is not None and event.author == self._hello.user.id:
                self._reconcile(event.cmid, event.id, event.offset, False)
        self._emit(event)

    def _reconcile(self, cmid: str | None, message_id: str | None, offset: int | None, duplicate: bool) -> None:
        msg = self._outbox.get(cmid)
        if msg is None or cmid is None:
            return
        self._outbox.pop(cmid)
        self._wake.set()  # the next message of its channel may go
        msg._resolve(message_id, offset, duplicate)
        self._emit(ev.Acked(msg))

    # -- state and events --------------------------------------------------------------------------------
    def _set_state(self, state: ev.ConnectionState, *, code: int | None = None, reason: str = "",
                   retry_in: float | None = None) -> None:
        previous = self._state
        if state is previous:
            return
        self._state = state
        self._emit(ev.StateChanged(state, previous, code, reason, retry_in))

    def _emit(self, event: Any) -> None:
        self._queue.put_nowait(event)

    def _finish(self, error: ClientClosed, *, code: int | None = None, reason: str = "") -> None:
        if self._finished:
            return
        self._finished = True
        self._close_error = error
        self._set_state(ev.ConnectionState.CLOSED, code=code, reason=reason)
        for msg in self._outbox:
            msg._abort(error)
        for sub in self._subs.values():
            sub.error = error
            sub.confirmed.set()
        self._online.set()  # wake waiters: they see _finished and raise
        self._emit(_END)


def _retry_after(exc: InvalidStatus) -> float | None:
    """The ``Retry-After`` (seconds) of a refused upgrade, or None (then the usual backoff applies)."""
    if exc.response.status_code not in (429, 503):
        return None
    value = exc.response.headers.get("Retry-After", "")
    try:
        seconds = float(value)
    except ValueError:
        return 1.0  # an overload answer without a usable hint: still wait a little (HTTP dates not sent)
    return seconds if 0 <= seconds < 3600 else 1.0


class _EventStream:
    def __init__(self, queue: asyncio.Queue[Any]) -> None:
        self._queue = queue

    def __aiter__(self) -> _EventStream:
        return self

    async def __anext__(self) -> ev.Event:
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)  # later iterators end too
            raise StopAsyncIteration
        event: ev.Event = item
        return event


__all__ = ["ClientOptions", "StormClient", "StormSdkError", "TokenProvider"]
