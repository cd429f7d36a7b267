"""The chaos traffic driver: live load for the whole of an experiment's method, recorded message by message.

``connections`` SDK clients (storm_sdk.StormClient: they reconnect with backoff, resume from their last
offset and resend their outbox with the same cmids, as an application does) in channels of ``channel_size``,
spread round-robin over the gateways; ``publishers_per_channel`` of each channel publish at ``rate`` messages
per second each, with cmids ``<tag>.<user>-<seq>``.  Recorded per publish: sent, acked (id, offset) or refused;
per delivery: to whom, which message, at which offset, when.  ``slow_fraction`` adds that share of raw
clients per channel that subscribe and then stop reading (the gateway must close them with 4008 and nobody
else's latency may move).  :mod:`storm_tools.chaos.judge` scores the records.

The workspace is provisioned through the tenants API of the running cluster (dev tokens), one per run.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from storm_tools.bench.wsclient import SubscribingClient
from storm_tools.chaos.slo_seam import collect, points_to_json


@dataclass(frozen=True)
class DriverConfig:
    connections: int = 200
    channel_size: int = 10
    publishers_per_channel: int = 2
    rate: float = 1.0  # per publisher, messages per second
    duration_s: float = 60.0
    settle_s: float = 45.0  # after the last publish: acks, then deliveries, each while it makes progress
    settle_max_s: float = 150.0  # the longest the two together wait while they make progress (_wait_while_moving)
    backoff_max_s: float = 2.0
    slow_fraction: float = 0.0
    tag: str = "m"  # cmid prefix: the baseline and the method of one run never share a cmid
    body_chars: int = 0  # pad each message's text to this length (0: the short "<user> #<seq>")

    def __post_init__(self) -> None:
        if self.connections < 2 or self.channel_size < 2 or self.connections < self.channel_size:
            raise ValueError(f"need connections >= channel_size >= 2, got {self.connections}, {self.channel_size}")
        if not 1 <= self.publishers_per_channel <= self.channel_size:
            raise ValueError(f"publishers_per_channel must be within 1..{self.channel_size}")
        if not (self.rate > 0 and self.duration_s > 0 and self.settle_s > 0 and self.backoff_max_s > 0):
            raise ValueError("rate, duration_s, settle_s and backoff_max_s must be positive")
        if self.settle_max_s < self.settle_s:
            raise ValueError(f"settle_max_s must be at least settle_s ({self.settle_s}), got {self.settle_max_s}")
        if not 0 <= self.slow_fraction < 1:
            raise ValueError(f"slow_fraction must be within [0, 1), got {self.slow_fraction}")
        if not 0 <= self.body_chars <= 4000:
            raise ValueError(f"body_chars must be within 0..4000 (the protocol's text limit), got {self.body_chars}")

    @property
    def channels(self) -> int:
        return self.connections // self.channel_size


@dataclass(frozen=True)
class Workspace:
    slug: str
    channels: tuple[str, ...]
    users: tuple[str, ...]  # users[i] is in channels[i // channel_size]
    secret: str

    def token(self, user: str) -> str:
        from storm.adapters.dev_identity import DevIdentity

        return DevIdentity(self.secret, ttl_s=3600).issue(f"dev|{user}", self.slug, user.title())

    def as_dict(self) -> dict[str, Any]:
        return {"slug": self.slug, "channels": list(self.channels), "users": list(self.users), "secret": self.secret}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Workspace:
        return cls(data["slug"], tuple(data["channels"]), tuple(data["users"]), data["secret"])


async def provision(api_url: str, secret: str, cfg: DriverConfig, slow_users: int = 0,
                    prefix: str = "chaos-") -> Workspace:
    """A fresh workspace (``<prefix><hex>``, plan pro) with one user per connection and one public channel per
    ``channel_size`` users, through the tenants API.  The prefix is the run's: its consumers take only those."""
    import httpx

    from storm.adapters.dev_identity import DevIdentity

    issuer = DevIdentity(secret, ttl_s=3600)
    slug = f"{prefix}{uuid.uuid4().hex[:10]}"
    users = tuple(f"u{i:04d}" for i in range(cfg.channels * cfg.channel_size + slow_users))
    async with httpx.AsyncClient(base_url=api_url, timeout=30) as http:
        async def call(method: str, path: str, token: str, body: Any) -> Any:
            response = await http.request(method, path, json=body, headers={"Authorization": f"Bearer {token}"})
            if response.status_code != 201:
                raise RuntimeError(f"{method} {path}: {response.status_code} {response.text[:300]}")
            return response.json()

        await call("POST", "/v1/workspaces", issuer.issue(f"dev|{users[0]}", "*", "Owner"),
                   {"slug": slug, "name": slug, "plan": "pro"})
        owner = issuer.issue(f"dev|{users[0]}", slug, "Owner")
        for user in users[1:]:
            await call("POST", f"/v1/workspaces/{slug}/members", owner, {"subject": f"dev|{user}", "name": user})
        channels = [str((await call("POST", f"/v1/workspaces/{slug}/channels", owner, {"name": f"ch{c:03d}"}))["id"])
                    for c in range(cfg.channels)]
    return Workspace(slug, tuple(channels), users, secret)


@dataclass
class _Member:
    user: str
    channel: str
    url: str
    client: Any = None
    task: asyncio.Task[None] | None = None
    onlines: int = 0
    closed_for_good: str = ""  # the SDK gave up: the close code and reason of its last connection


class _Stats:
    """What bench.wsclient.SubscribingClient reports to."""

    def __init__(self) -> None:
        self.closed = 0
        self.first_error: str | None = None
        self.stopping = False

    def error(self, payload: bytes) -> None:
        self.first_error = self.first_error or payload[:200].decode(errors="replace")


#: A slow reader's socket receive buffer (the kernel doubles it): small, so that what the reader misses lands in
#: the gateway's outbox within the experiment instead of in megabytes of loopback socket buffers.
SLOW_READER_RCVBUF = 4096


class _SlowReader(SubscribingClient):
    """Subscribes, then stops reading its socket (its heartbeat still goes out, as an app whose reader is stuck
    but whose timer is not: so the gateway's idle timeout, 4002, is not what closes it); the gateway's
    per-connection outbox fills up once the socket buffers are full (its receive buffer is clamped to
    :data:`SLOW_READER_RCVBUF`)."""

    def __init__(self, host: str, port: int, token: str, channel: str, stats: _Stats) -> None:
        super().__init__(host, port, b'{"op":"auth","token":"%s"}' % token.encode(), stats)
        self._subscribe = b'{"op":"subscribe","id":1,"channel":"%s"}' % channel.encode()
        self.close_code: int | None = None
        #: How the connection ended, as the judge reads it: the close code the gateway sent when its frame got
        #: through; ``"reset"`` when the socket was cut first (the gateway's close frame sits behind everything
        #: a stopped reader did not read, and after ``CLOSE_WAIT_S`` the gateway cuts the socket: such a reader
        #: learns of the end from its next ping or read, never from the frame; the gateways' own count of 4008
        #: closes says why); ``"open"`` while it lasts.
        self.ended: int | str = "open"
        self.closed = asyncio.get_running_loop().create_future()

    def subscribe_frame(self) -> bytes:
        return self._subscribe

    def on_close(self, code: int | None) -> None:
        self.close_code = code
        self.ended = code if code is not None else "reset"
        if not self.closed.done():
            self.closed.set_result(code)
        super().on_close(code)


async def _connect_small_window(factory: Any, host: str, port: int) -> Any:
    """Connect with the receive buffer clamped *before* the handshake: set later, the kernel keeps the window
    it already advertised (a minute of 3 000-character texts then fitted in loopback buffers)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SLOW_READER_RCVBUF)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, (host, port)), 10)
        _, proto = await loop.create_connection(factory, sock=sock)
    except BaseException:
        sock.close()
        raise
    await asyncio.wait_for(asyncio.shield(proto.opened), 10)
    return proto


async def _ping_forever(readers: list[_SlowReader], every_s: float = 15.0) -> None:
    while True:
        await asyncio.sleep(every_s)
        for reader in readers:
            if reader.transport is not None and not reader.transport.is_closing():
                reader.send_text(b'{"op":"ping"}')


async def _subscribe(client: Any, channel: str, within_s: float = 180.0) -> None:
    """Subscribe, asking again after a request timeout or a retriable refusal (``unavailable``, ``internal``:
    docs/sdk.md): a fault may land while the clients are still setting up (a gateway killed, a reconnect storm,
    Pulsar going down: the 22:11 pulsar-restart run's driver gave up on one ``internal``), and the driver must
    not give up on its load because of it."""
    from storm_sdk.errors import StormSdkError

    deadline = time.monotonic() + within_s
    pause = 0.5
    while True:
        try:
            await client.subscribe(channel)
            return
        except StormSdkError as exc:
            if not exc.retriable or time.monotonic() > deadline:
                raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 5.0)


async def _wait_while_moving(done: Callable[[], bool], progress: Callable[[], int], quiet_s: float,
                             max_s: float, step_s: float = 0.5) -> bool:
    """Wait until ``done()``; give up once ``progress()`` has not changed for ``quiet_s`` or after ``max_s``.
    Returns ``done()``.  The settle used to be a fixed ``settle_s``: after a Hazelcast loss or a Pulsar
    restart that outlasted the load (63 s and 230 s to come back on the loaded machine of the 19:18 run),
    acks and deliveries still arriving were cut off and counted as never acked or lost."""
    loop = asyncio.get_running_loop()
    start = last_move = loop.time()
    seen = progress()
    while not done():
        now = loop.time()
        if now - last_move >= quiet_s or now - start >= max_s:
            break
        await asyncio.sleep(step_s)
        current = progress()
        if current != seen:
            seen, last_move = current, loop.time()
    return done()


@dataclass
class Records:
    started_at: float = 0.0
    ended_at: float = 0.0
    workspace: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    members: dict[str, str] = field(default_factory=dict)
    sent: list[dict[str, Any]] = field(default_factory=list)
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    slow_readers: dict[str, int | str] = field(default_factory=dict)  # user -> _SlowReader.ended
    reconnects: int = 0
    closed_for_good: dict[str, str] = field(default_factory=dict)  # user -> last close (the SDK stopped trying)
    metrics: list[dict[str, Any]] = field(default_factory=list)  # the cluster's DogStatsD points meanwhile

    def as_dict(self) -> dict[str, Any]:
        return {"started_at": self.started_at, "ended_at": self.ended_at, "workspace": self.workspace,
                "config": self.config, "members": self.members, "sent": self.sent, "deliveries": self.deliveries,
                "slow_readers": self.slow_readers, "reconnects": self.reconnects,
                "closed_for_good": self.closed_for_good, "metrics": self.metrics}


async def drive(ws: Workspace, gateways: list[str], cfg: DriverConfig, say: Any = print, metrics_port: int = 0,
                metrics_interval_s: float = 1.0) -> Records:
    """Run the load for ``cfg.duration_s``, settle, and return the records, with the DogStatsD points the
    cluster sent to 127.0.0.1:``metrics_port`` meanwhile (0: none).  ``gateways``: ws:// URLs."""
    async with collect(metrics_port) as collector:
        rec = await _drive(ws, gateways, cfg, say)
        if metrics_port:
            await asyncio.sleep(metrics_interval_s * 2 + 0.5)  # the processes' last flush of the run
    rec.metrics = points_to_json(collector)
    return rec


async def _drive(ws: Workspace, gateways: list[str], cfg: DriverConfig, say: Any) -> Records:
    from storm_sdk import BackoffPolicy, ClientOptions, ConnectionState, Message, StateChanged, StormClient
    from storm_sdk.errors import OutboxFull

    size = cfg.channel_size
    regular = cfg.channels * size
    members = [_Member(user, ws.channels[i // size], gateways[i % len(gateways)])
               for i, user in enumerate(ws.users[:regular])]
    rec = Records(workspace=ws.slug, members={m.user: m.channel for m in members},
                  config={k: getattr(cfg, k) for k in cfg.__dataclass_fields__})
    options = ClientOptions(outbox_max=int(cfg.rate * (cfg.duration_s + cfg.settle_s)) + 100,
                            backoff=BackoffPolicy(max_s=cfg.backoff_max_s), request_timeout_s=30.0)

    async def collect(m: _Member) -> None:
        async for event in m.client.events():
            if isinstance(event, Message) and event.channel == m.channel:
                rec.deliveries.append({"receiver": m.user, "channel": m.channel, "message_id": event.id,
                                       "cmid": event.cmid or "", "offset": event.offset, "at": time.time()})
            elif isinstance(event, StateChanged) and event.state == ConnectionState.ONLINE:
                m.onlines += 1
            elif isinstance(event, StateChanged) and event.state == ConnectionState.CLOSED:
                m.closed_for_good = f"{event.code} {event.reason}".strip()

    stats = _Stats()
    slow: list[tuple[str, _SlowReader]] = []
    pinger: asyncio.Task[None] | None = None
    waiters: set[asyncio.Task[None]] = set()
    try:
        for m in members:
            m.client = StormClient(m.url, functools.partial(ws.token, m.user), options)
            await m.client.start()
            m.task = asyncio.create_task(collect(m))
        await asyncio.gather(*(_subscribe(m.client, m.channel) for m in members))
        slow_per_channel = round(size * cfg.slow_fraction)
        for c, channel in enumerate(ws.channels):
            for k in range(slow_per_channel):
                user = ws.users[regular + c * slow_per_channel + k]
                url = gateways[(c + k) % len(gateways)]
                host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
                reader = await _connect_small_window(
                    functools.partial(_SlowReader, host, int(port), ws.token(user), channel, stats), host, int(port))
                await asyncio.wait_for(reader.ready, 30)
                reader.transport.pause_reading()
                slow.append((user, reader))
        pinger = asyncio.create_task(_ping_forever([r for _, r in slow])) if slow else None
        say(f"{len(members)} clients online and subscribed in {len(ws.channels)} channels"
            + (f", {len(slow)} slow readers" if slow else ""))

        async def await_ack(entry: dict[str, Any], pending: Any, deadline: float) -> None:
            try:
                await pending.wait(timeout=max(0.1, deadline - time.monotonic()))
                entry.update(acked_at=time.time(), message_id=pending.message_id, offset=pending.offset,
                             duplicate=pending.duplicate, attempts=pending.attempts)
            except TimeoutError:
                entry["attempts"] = pending.attempts
            except Exception as exc:  # refused for good: the SDK's error carries the server's code
                entry["error"] = f"{type(exc).__name__}: {exc}"[:200]

        ack_deadline = time.monotonic() + cfg.duration_s + cfg.settle_max_s

        async def publish(m: _Member) -> None:
            interval = 1.0 / cfg.rate
            pad = "x" * cfg.body_chars
            start = time.monotonic()
            seq = 0
            while time.monotonic() - start < cfg.duration_s:
                cmid = f"{cfg.tag}.{m.user}-{seq:06d}"
                entry: dict[str, Any] = {"cmid": cmid, "sender": m.user, "channel": m.channel,
                                         "sent_at": time.time()}
                rec.sent.append(entry)
                try:
                    text = f"{m.user} #{seq}"
                    pending = m.client.publish(m.channel, f"{text} {pad}"[:cfg.body_chars] if pad else text,
                                               cmid=cmid)
                except OutboxFull as exc:
                    entry["error"] = f"OutboxFull: {exc}"
                else:
                    task = asyncio.create_task(await_ack(entry, pending, ack_deadline))
                    waiters.add(task)
                    task.add_done_callback(waiters.discard)
                seq += 1
                await asyncio.sleep(max(0.0, start + seq * interval - time.monotonic()))

        rec.started_at = time.time()
        publishers = [m for i, m in enumerate(members) if i % size < cfg.publishers_per_channel]
        await asyncio.gather(*(publish(m) for m in publishers))
        say(f"published {len(rec.sent)} messages in {time.time() - rec.started_at:.1f} s; settling")
        settle_until = time.monotonic() + cfg.settle_max_s
        await _wait_while_moving(lambda: not waiters, lambda: len(waiters), cfg.settle_s, cfg.settle_max_s)
        wanted: dict[str, set[str]] = {}
        for s in rec.sent:
            if s.get("message_id"):
                wanted.setdefault(s["channel"], set()).add(s["message_id"])
        have: dict[str, set[str]] = {}
        counted = 0

        def all_delivered() -> bool:
            nonlocal counted
            for d in rec.deliveries[counted:]:
                have.setdefault(d["receiver"], set()).add(d["message_id"])
            counted = len(rec.deliveries)
            return all(wanted.get(m.channel, set()) <= have.get(m.user, set()) for m in members)

        await _wait_while_moving(all_delivered, lambda: len(rec.deliveries), cfg.settle_s,
                                 max(cfg.settle_s, settle_until - time.monotonic()))
        rec.ended_at = time.time()
        rec.closed_for_good = {m.user: m.closed_for_good for m in members if m.closed_for_good}
        for _user, reader in slow:
            reader.transport.resume_reading()  # read what is buffered up to the close frame, if one came
        for user, reader in slow:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(reader.closed), 5)
            rec.slow_readers[user] = reader.ended
    finally:
        stats.stopping = True
        if slow and pinger is not None:
            pinger.cancel()
        for _, reader in slow:
            reader.close()
        for task in list(waiters):
            task.cancel()
        for m in members:
            if m.client is not None:
                with contextlib.suppress(Exception):
                    await m.client.stop()
            if m.task is not None:
                m.task.cancel()
                with contextlib.suppress(BaseException):
                    await m.task
    rec.reconnects = sum(max(0, m.onlines - 1) for m in members)
    return rec


async def stored_messages(database_url: str, slug: str) -> dict[str, list[str]]:
    """cmid -> message ids the database holds for the workspace ``slug`` (every channel)."""
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(text(
                "SELECT m.client_msg_id, m.id FROM messages m JOIN workspaces w ON w.id = m.workspace_id "
                "WHERE w.slug = :slug AND m.client_msg_id IS NOT NULL"), {"slug": slug})
            out: dict[str, list[str]] = {}
            for cmid, message_id in rows:
                out.setdefault(str(cmid), []).append(str(message_id))
            return out
    finally:
        await engine.dispose()
