"""Directory: who is who and who may do what, read through the cache (cache-aside over the store).

Used by the gateway session and the tenants API alike, so both authorise the same way.  Every lookup
takes the workspace first.  Entries are invalidated by the tenants API when memberships or channels
change; the TTL bounds staleness if an invalidation is lost.  How long an entry lives depends on what can make
it wrong (docs/cache.md, "Entry lifetimes"): what the tenants API invalidates ``INVALIDATED_TTL_S`` (10 min, so
that a reconnect storm minutes after the connects is served from the cache), a user's id and name a day (never
updated), the workspace ``CACHE_TTL_S``.

Two guards against a thundering herd on the store (docs/cache.md, "Directory"): each entry's TTL is drawn
from ``ttl`` ± ``TTL_JITTER`` (entries cached together, e.g. when 2 000 clients subscribe at start, used to
expire together, and every publish of the following second queried PostgreSQL: multi-second stalls on
both gateways every 30 s in ``storm bench e2e``); and concurrent misses of one key in one process share one
store read (single flight).  First sights of users (a connect's user and membership, not cached yet) are read
in batches per workspace, one unit of work for those that arrive while the previous batch is read.

An invalidation (``forget_*``, after the tenants API commits a change) does not delete the entry: it writes
a short-lived **tombstone**, and loads cache what they read with ``put_if_absent``.  A load that read the
store just before the commit and writes just after the invalidation would otherwise cache the old answer
for a whole TTL (a removed member still admitted for 30 s); with the tombstone its write is refused, and
lookups during those seconds read the store.

**Stale if the store is down.** When a lookup misses the cache and the store cannot be read (``Unavailable``:
PostgreSQL restarting, a zone lost), the answer this process last saw for that key — in the cache or from the
store — is used, if it is at most ``STALE_IF_ERROR_S`` old; otherwise the ``Unavailable`` stands.  Without it,
a 30 s database outage expired the cached roles and channels of a gateway one by one and every publish that
missed them was refused ``unavailable`` until the database came back (chaos ``postgres-restart``: client-side
ack p99 15 s), though nothing a publish needs had changed: a membership or channel change is committed to the
store first, so none can happen while it is down.  A tombstone seen for a key drops its last answer.  Bound
(docs/security.md): a change committed less than a tombstone's life (2 s) before the outage, whose
invalidation this process never saw, can be ignored for the outage, at most ``STALE_IF_ERROR_S``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import msgspec

from storm.domain import Channel, ChannelKind, Role, User, Workspace
from storm.errors import Forbidden, NotFound, Unavailable
from storm.ports.cache import Cache
from storm.ports.identity import Claims
from storm.ports.store import Store, UnitOfWork

CACHE_TTL_S = 30.0  # entries nobody invalidates (the workspace, ``ws``): the TTL is their only bound
# Entries the tenants API invalidates (a tombstone after its commit) on every change that affects them:
# ``member:`` (add, role change, removal, ban, workspace creation), ``channel:`` (creation, archive, membership),
# ``chmember:`` (added to / removed from a private channel, removed from the workspace), ``webhooks``.  The TTL
# only bounds an invalidation that was lost (the API's tombstone write failed after its commit); it outlives a
# reconnect, so a user who connected minutes before a gateway died is not a first sight on the survivor
# (issue 11, docs/cache.md "Entry lifetimes").
INVALIDATED_TTL_S = 600.0
USER_TTL_S = 86_400.0  # ``user:<subject>`` -> id and name: a user row is never updated nor deleted
TTL_JITTER = 0.2  # each entry lives ttl x uniform(0.8, 1.2)
TOMBSTONE = b"\xff"  # what an invalidation writes: no cached value is a single 0xff byte
DECODED_MAX = 10_000  # decoded entries kept per process (cleared when full)
TOMBSTONE_TTL_S = 2.0  # while it lives, lookups read the store and loads cannot cache what they read
FIRST_SIGHT_BATCH = 100  # first sights of one workspace read in one unit of work (Directory._first_sight)
STALE_IF_ERROR_S = 300.0  # how old a last-seen answer may be to stand in for an unreadable store
LAST_KNOWN_MAX = 100_000  # last-seen answers kept per process (the oldest dropped first)
INVALIDATED_PREFIXES = ("member:", "channel:", "chmember:")  # keys the tenants API invalidates (with "webhooks")

log = logging.getLogger("storm.directory")

T = TypeVar("T")


def _fail(futures: Iterable[asyncio.Future[Any]], exc: BaseException | None = None) -> None:
    """Fail the waiters of a batch read that did not happen: with ``exc``, or ``Unavailable`` when it was
    cancelled (``exc`` a cancellation, or none: the directory is shutting down).  Each is marked retrieved, so
    a waiter that left does not warn."""
    if exc is None or isinstance(exc, asyncio.CancelledError):
        exc = Unavailable("the directory's read was cancelled (shutting down)")
    for future in futures:
        if not future.done():
            future.set_exception(exc)
            future.exception()


def _answer(futures: Iterable[asyncio.Future[Any]], values: Iterable[Any]) -> None:
    """Give the waiters of a batch read their values, in order (a waiter that left is skipped)."""
    for future, value in zip(futures, values, strict=True):
        if not future.done():
            future.set_result(value)


class _LoadCancelled(Exception):
    """What waiters of a single-flight load see when the loading task was cancelled."""


class _CachedChannel(msgspec.Struct, array_like=True):
    id: str
    name: str
    kind: str
    archived: bool


class _CachedUser(msgspec.Struct, array_like=True):
    id: str  # hex
    name: str


class _CachedWorkspace(msgspec.Struct, array_like=True):
    id: str
    slug: str
    name: str
    plan: str


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated user acting in one workspace."""

    user: User
    workspace: Workspace
    role: Role
    claims: Claims


class Directory:
    def __init__(self, store: Store, cache: Cache, ttl: float = CACHE_TTL_S, *,
                 invalidated_ttl: float = INVALIDATED_TTL_S, user_ttl: float = USER_TTL_S) -> None:
        self._store = store
        self._cache = cache
        self._ttl = ttl
        self._invalidated_ttl = invalidated_ttl
        self._user_ttl = user_ttl
        self._loading: dict[tuple[str, str], asyncio.Future[Any]] = {}
        # cached bytes -> the immutable object they decode to: a connect reads the same workspace and user
        # entries again and again; keyed by the bytes themselves, so a changed entry is a new key
        self._decoded: dict[tuple[str, bytes], Any] = {}
        # first sights waiting for the next batch, per workspace; the workspaces whose batch reader runs
        self._first_sights: dict[str, list[tuple[Claims, asyncio.Future[tuple[User, Role | None]]]]] = {}
        self._reading: set[str] = set()
        self._readers: set[asyncio.Task[None]] = set()
        self._reads: dict[str, list[tuple[Callable[[UnitOfWork], Awaitable[Any]], asyncio.Future[Any]]]] = {}
        self._reads_running: set[str] = set()
        # read states waiting for the next drain, per workspace (Directory.read_state)
        self._states: dict[str, list[tuple[tuple[uuid.UUID, uuid.UUID, int], asyncio.Future[tuple[int, int]]]]] = {}
        # (workspace, key) -> (the last answer this process saw, when): served while the store is down
        self._last_known: dict[tuple[str, str], tuple[bytes, float]] = {}
        self._now: Callable[[], float] = time.monotonic
        self.stale_served = 0  # lookups answered from _last_known because the store was unavailable

    def _entry_ttl(self, key: str = "ws") -> float:
        """How long the entry ``key`` lives in the cache, jittered: a user's id and name for a day (immutable),
        what the tenants API invalidates for ``INVALIDATED_TTL_S``, the rest for ``ttl``."""
        if key.startswith("user:"):
            base = self._user_ttl
        elif key.startswith(INVALIDATED_PREFIXES) or key == "webhooks":
            base = self._invalidated_ttl
        else:
            base = self._ttl
        return base * random.uniform(1 - TTL_JITTER, 1 + TTL_JITTER)  # nosec B311: spreading, not security

    async def _single_flight(self, workspace: str, key: str, load: Callable[[], Awaitable[T]]) -> T:
        """Run ``load`` once for concurrent callers of one (workspace, key) in this process."""
        running = self._loading.get((workspace, key))
        if running is not None:
            try:
                return cast(T, await asyncio.shield(running))
            except _LoadCancelled:
                pass  # the loader's task was cancelled, not ours: load it ourselves
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._loading[(workspace, key)] = future
        try:
            value = await load()
        except BaseException as exc:
            future.set_exception(_LoadCancelled() if isinstance(exc, asyncio.CancelledError) else exc)
            future.exception()  # retrieved: waiters get it, and an unwaited future does not warn
            raise
        finally:
            # Only our own entry: when a loader is cancelled, each of its waiters loads for itself and the last
            # one registered owns the slot; deleting it unconditionally raised KeyError in the others ("internal")
            if self._loading.get((workspace, key)) is future:
                del self._loading[(workspace, key)]
        future.set_result(value)
        return value

    async def _load_or_stale(self, workspace: str, key: str, load: Callable[[], Awaitable[T]],
                             decode: Callable[[bytes], T]) -> T:
        """``load`` (single flight); if the store is unavailable, the last answer seen for the key, decoded, when
        it is recent enough (module docstring, "Stale if the store is down")."""
        try:
            return await self._single_flight(workspace, key, load)
        except Unavailable as exc:
            known = self._last_known.get((workspace, key))
            if known is None or self._now() - known[1] > STALE_IF_ERROR_S:
                raise
            if self.stale_served % 1000 == 0:
                log.warning("store unavailable (%s): answering ws=%s %s from its last known value (%d so far)",
                            exc, workspace, key.split(":", 1)[0], self.stale_served + 1)
            self.stale_served += 1
            return decode(known[0])

    def _seen(self, workspace: str, key: str, raw: bytes) -> None:
        k = (workspace, key)
        if k not in self._last_known and len(self._last_known) >= LAST_KNOWN_MAX:
            del self._last_known[next(iter(self._last_known))]
        self._last_known[k] = (raw, self._now())

    # -- users --------------------------------------------------------------------------------------------
    async def resolve_user(self, claims: Claims, workspace: str | None = None) -> User:
        """The user behind a token, created on first sight (identity provider is the source of truth).

        With ``workspace``, read through the cache (``user:<subject>`` in that workspace): a user row is
        never updated nor deleted, so the entry cannot go stale, and a connect does not query the store for
        a user it has seen (it did on every connect, docs/benchmarks.md "Connect").  Access is not decided
        here: the membership (``member:``) and the revocation list stay the gates."""
        if workspace is None:
            return await self._store.run(lambda uow: self._get_or_create_user(uow, claims))
        key = f"user:{claims.subject}"
        raw = await self._lookup(workspace, key)
        if raw:
            c = msgspec.msgpack.decode(raw, type=_CachedUser)
            return User(id=uuid.UUID(c.id), subject=claims.subject, name=c.name)

        async def load() -> User:
            user = await self._store.run(lambda uow: self._get_or_create_user(uow, claims))
            await self._remember(workspace, key, msgspec.msgpack.encode(_CachedUser(user.id.hex, user.name)))
            return user

        return await self._single_flight(workspace, key, load)

    async def batched_read(self, workspace: str, fn: Callable[[UnitOfWork], Awaitable[T]]) -> T:
        """One store read (``fn`` in a unit of work), batched with the reads of ``workspace`` that arrive while
        a batch is being read: one unit of work for all of them (``FIRST_SIGHT_BATCH`` at most), as for first
        sights, opened ``read_only`` (no transaction: one round trip per statement, no ``BEGIN``/``ROLLBACK``;
        ``fn`` must only read, and its statements do not share a snapshot).  A read that fails fails its whole
        batch (the connection may be the cause).  The
        directory's own misses use it, and so does a subscribe's read state (storm/protocol/subscriptions.py):
        a transaction per subscribe was 15 % of a day connect's gateway CPU (docs/storm-day.md)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._reads.setdefault(workspace, []).append((fn, future))
        if workspace not in self._reads_running:
            self._reads_running.add(workspace)
            task = asyncio.ensure_future(self._run_reads(workspace))
            self._readers.add(task)
            task.add_done_callback(self._readers.discard)
        return cast(T, await future)

    async def read_state(self, workspace: Workspace, user_id: uuid.UUID, channel_id: uuid.UUID,
                         head: int) -> tuple[int, int]:
        """The user's read marker of the channel and the unread messages up to ``head`` (``subscribed.read``
        and ``unread``, docs/protocol.md "Read state").  The read states asked while one is being read are
        read together, as **one** ``unread_at`` (two statements for up to a hundred of them) in the next
        :meth:`batched_read` of the workspace: two statements per subscribe were most of a subscribe's cost
        (``storm bench connect --subscribe 1``, docs/benchmarks.md)."""
        future: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()
        pending = self._states.setdefault(workspace.slug, [])
        pending.append(((user_id, channel_id, head), future))
        if len(pending) == 1:  # the first since the last drain: the next batch reads them all
            task = asyncio.ensure_future(self._drain_states(workspace))
            self._readers.add(task)
            task.add_done_callback(self._readers.discard)
        return await future

    async def _drain_states(self, workspace: Workspace) -> None:
        taken: list[tuple[tuple[uuid.UUID, uuid.UUID, int], asyncio.Future[tuple[int, int]]]] = []

        async def drain(uow: UnitOfWork) -> list[tuple[int, int]]:
            # a caller that left (its client gave up and closed the socket: the subscribe was cancelled) is not read
            taken.extend(item for item in self._states.pop(workspace.slug, []) if not item[1].done())
            if not taken:
                return []
            return await uow.read_markers.unread_at(workspace.id, [item for item, _ in taken])

        try:
            values = await self.batched_read(workspace.slug, drain)
        except BaseException as exc:
            # not drained when the batch failed before it: everything pending was waiting for this drain
            _fail([f for _, f in taken or self._states.pop(workspace.slug, [])], exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        _answer((f for _, f in taken), values)

    async def _run_reads(self, workspace: str) -> None:
        try:
            while pending := self._reads.get(workspace):
                batch, rest = pending[:FIRST_SIGHT_BATCH], pending[FIRST_SIGHT_BATCH:]
                if rest:
                    self._reads[workspace] = rest
                else:
                    del self._reads[workspace]
                # a caller that left meanwhile (cancelled: its client closed the socket) is not read for
                batch = [(fn, future) for fn, future in batch if not future.done()]
                if not batch:
                    continue
                results: list[Any] = []
                try:  # lookups that need no shared snapshot: no transaction (docs/database.md)
                    async with self._store.unit_of_work(read_only=True) as uow:
                        for fn, _ in batch:
                            results.append(await fn(uow))
                except BaseException as exc:
                    _fail([future for _, future in batch], exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                _answer((future for _, future in batch), results)
        finally:
            self._reads_running.discard(workspace)
            _fail([future for _, future in self._reads.pop(workspace, [])])

    async def _first_sight(self, ws: Workspace, claims: Claims) -> tuple[User, Role | None]:
        """The user and its membership of ``ws``, read from the store and cached, in a **batch**: the
        first sights of one workspace that arrive while a batch is being read are read together by the next
        one, in one unit of work (one pool checkout, its pre-ping, one begin and rollback: most of a first
        sight's cost on PostgreSQL, docs/benchmarks.md "Connect").  No added wait: a lone first sight is read
        at once; under a ramp or a reconnect storm the batches grow by themselves (at most
        ``FIRST_SIGHT_BATCH`` subjects each)."""
        future: asyncio.Future[tuple[User, Role | None]] = asyncio.get_running_loop().create_future()
        self._first_sights.setdefault(ws.slug, []).append((claims, future))
        if ws.slug not in self._reading:
            self._reading.add(ws.slug)
            task = asyncio.ensure_future(self._read_first_sights(ws))  # its own task: no caller's cancel stops it
            self._readers.add(task)
            task.add_done_callback(self._readers.discard)
        return await future

    async def _read_first_sights(self, ws: Workspace) -> None:
        try:
            while pending := self._first_sights.get(ws.slug):
                batch, rest = pending[:FIRST_SIGHT_BATCH], pending[FIRST_SIGHT_BATCH:]
                if rest:
                    self._first_sights[ws.slug] = rest
                else:
                    del self._first_sights[ws.slug]
                try:
                    found = await self._load_members(ws, [c for c, _ in batch])
                except BaseException as exc:
                    _fail([future for _, future in batch], exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                    continue
                for c, future in batch:
                    if not future.done():
                        future.set_result(found[c.subject])
        finally:
            self._reading.discard(ws.slug)
            _fail([future for _, future in self._first_sights.pop(ws.slug, [])])  # only when cancelled

    async def _load_members(self, ws: Workspace, batch: list[Claims]) -> dict[str, tuple[User, Role | None]]:
        found: dict[str, tuple[User, Role | None]] = {}
        async with self._store.unit_of_work(read_only=True) as uow:  # reads first, no transaction: for known users
            known = await uow.users.get_many_by_subject([c.subject for c in batch])
            roles = {m.user_id: m.role for m in await uow.memberships.get_many(ws.id, [u.id for u in known])
                     } if known else {}
        for user in known:
            found[user.subject] = user, roles.get(user.id)
        unknown = [c for c in batch if c.subject not in found]
        if unknown:  # first sight of these subjects anywhere: created, committed together

            async def tx(uow: UnitOfWork) -> dict[str, tuple[User, Role | None]]:
                made: dict[str, tuple[User, Role | None]] = {}
                for claims in unknown:
                    user = await self._get_or_create_user(uow, claims)
                    m = await uow.memberships.get(ws.id, user.id)
                    made[claims.subject] = user, m.role if m else None
                return made

            found.update(await self._store.run(tx))
        await asyncio.gather(*(self._remember_member(ws.slug, subject, user, role)
                               for subject, (user, role) in found.items()))
        return found

    async def _remember_member(self, slug: str, subject: str, user: User, role: Role | None) -> None:
        await self._remember(slug, f"user:{subject}", msgspec.msgpack.encode(_CachedUser(user.id.hex, user.name)))
        await self._remember(slug, f"member:{user.id.hex}", (role.value if role else "").encode())

    @staticmethod
    async def _get_or_create_user(uow: UnitOfWork, claims: Claims) -> User:
        user = await uow.users.get_by_subject(claims.subject)
        if user is None:
            user = User(id=uuid.uuid4(), subject=claims.subject, name=claims.name[:80] or claims.subject)
            await uow.users.add(user)
        return user

    # -- workspaces -----------------------------------------------------------------------------------
    async def workspace(self, slug: str) -> Workspace:
        raw = await self._lookup(slug, "ws")
        if raw is not None:
            ws: Workspace | None = self._decoded.get(("ws", raw))
            if ws is None:
                c = msgspec.msgpack.decode(raw, type=_CachedWorkspace)
                ws = self._memo(("ws", raw), Workspace(id=uuid.UUID(c.id), slug=c.slug, name=c.name, plan=c.plan))
            return ws
        return await self._load_or_stale(slug, "ws", lambda: self._load_workspace(slug), self._decode_workspace)

    def _decode_workspace(self, raw: bytes) -> Workspace:
        c = msgspec.msgpack.decode(raw, type=_CachedWorkspace)
        return Workspace(id=uuid.UUID(c.id), slug=c.slug, name=c.name, plan=c.plan)

    async def _load_workspace(self, slug: str) -> Workspace:
        async with self._store.unit_of_work(read_only=True) as uow:
            ws = await uow.workspaces.get_by_slug(slug)
        if ws is None:
            raise NotFound(f"workspace {slug!r} not found", field="workspace")
        value = _CachedWorkspace(str(ws.id), ws.slug, ws.name, ws.plan)
        await self._remember(slug, "ws", msgspec.msgpack.encode(value))
        return ws

    async def role(self, workspace: Workspace, user_id: uuid.UUID) -> Role | None:
        key = f"member:{user_id.hex}"
        raw = await self._lookup(workspace.slug, key)
        if raw is not None:
            return Role(raw.decode()) if raw else None

        async def load() -> Role | None:
            m = await self.batched_read(workspace.slug, lambda uow: uow.memberships.get(workspace.id, user_id))
            role = m.role if m else None
            await self._remember(workspace.slug, key, (role.value if role else "").encode())
            return role

        return await self._load_or_stale(workspace.slug, key, load, lambda raw: Role(raw.decode()) if raw else None)

    async def principal(self, claims: Claims, workspace_slug: str | None = None) -> Principal:
        """Authorise ``claims`` for a workspace: the token must be bound to it (or to ``*``) and the user
        must be a member.  Raises Forbidden / NotFound."""
        slug = workspace_slug or claims.workspace
        if claims.workspace not in ("*", slug):
            raise Forbidden("token is not valid for this workspace", field="workspace")
        ws = await self.workspace(slug)
        raw = await self._lookup(slug, f"user:{claims.subject}")
        if raw:  # a user seen before: the role from its own entry (invalidated on membership changes)
            known: User | None = self._decoded.get((claims.subject, raw))
            if known is None:
                c = msgspec.msgpack.decode(raw, type=_CachedUser)
                known = self._memo((claims.subject, raw), User(id=uuid.UUID(c.id), subject=claims.subject,
                                                               name=c.name))
            user = known
            role = await self.role(ws, user.id)
        else:  # first sight: the user and the membership in one transaction, both cached
            key = f"user:{claims.subject}"
            try:
                user, role = await self._single_flight(slug, key, lambda: self._first_sight(ws, claims))
            except Unavailable:
                known_raw = self._last_known.get((slug, key))
                if known_raw is None or self._now() - known_raw[1] > STALE_IF_ERROR_S:
                    raise
                # seen before its entry expired, the store down: the user as last seen, the role as role() finds
                c = msgspec.msgpack.decode(known_raw[0], type=_CachedUser)
                user = User(id=uuid.UUID(c.id), subject=claims.subject, name=c.name)
                self.stale_served += 1
                role = await self.role(ws, user.id)
        if role is None:
            raise Forbidden("not a member of this workspace", field="workspace")
        return Principal(user=user, workspace=ws, role=role, claims=claims)

    async def forget_member(self, workspace: str, user_id: uuid.UUID) -> None:
        await self._forget(workspace, f"member:{user_id.hex}")

    # -- channels -------------------------------------------------------------------------------------
    async def channel(self, workspace: Workspace, channel_id: str) -> Channel:
        try:
            cid = uuid.UUID(channel_id)
        except ValueError:
            raise NotFound("no such channel", field="channel") from None
        key = f"channel:{cid.hex}"
        raw = await self._lookup(workspace.slug, key)
        if raw is not None:
            if not raw:
                raise NotFound("no such channel", field="channel")
            c = msgspec.msgpack.decode(raw, type=_CachedChannel)
            return Channel(id=cid, workspace_id=workspace.id, name=c.name, kind=ChannelKind(c.kind),
                           archived=c.archived)

        async def load() -> Channel | None:
            ch = await self.batched_read(workspace.slug, lambda uow: uow.channels.get(workspace.id, cid))
            value = b"" if ch is None else msgspec.msgpack.encode(
                _CachedChannel(str(cid), ch.name, ch.kind.value, ch.archived))
            await self._remember(workspace.slug, key, value)
            return ch

        def decode(raw: bytes) -> Channel | None:
            if not raw:
                return None
            c = msgspec.msgpack.decode(raw, type=_CachedChannel)
            return Channel(id=cid, workspace_id=workspace.id, name=c.name, kind=ChannelKind(c.kind),
                           archived=c.archived)

        ch = await self._load_or_stale(workspace.slug, key, load, decode)
        if ch is None:
            raise NotFound("no such channel", field="channel")
        return ch

    async def check_channel_access(self, p: Principal, channel_id: str, *, write: bool = False) -> Channel:
        """The channel, if ``p`` may read it (and write, when ``write``); NotFound hides private channels."""
        ch = await self.channel(p.workspace, channel_id)
        if ch.is_private and not await self._is_channel_member(p, ch):
            raise NotFound("no such channel", field="channel")
        if write and ch.archived:
            raise Forbidden("channel is archived", field="channel")
        return ch

    async def _is_channel_member(self, p: Principal, ch: Channel) -> bool:
        return await self._flag(p.workspace.slug, f"chmember:{ch.id.hex}:{p.user.id.hex}",
                                lambda uow: uow.channels.is_member(p.workspace.id, ch.id, p.user.id))

    async def _flag(self, workspace: str, key: str, read: Callable[[UnitOfWork], Awaitable[object]]) -> bool:
        """A yes/no answer cached as ``1``/``0``: the cache, else ``read`` (truthy: yes) through the batched
        store read, remembered; stale if the store is down."""
        raw = await self._lookup(workspace, key)
        if raw is not None:
            return raw == b"1"

        async def load() -> bool:
            yes = bool(await self.batched_read(workspace, read))
            await self._remember(workspace, key, b"1" if yes else b"0")
            return yes

        return await self._load_or_stale(workspace, key, load, lambda raw: raw == b"1")

    async def forget_channel(self, workspace: str, channel_id: uuid.UUID, user_id: uuid.UUID | None = None) -> None:
        await self._forget(workspace, f"channel:{channel_id.hex}")
        if user_id is not None:
            await self._forget(workspace, f"chmember:{channel_id.hex}:{user_id.hex}")

    # -- webhooks ---------------------------------------------------------------------------------------
    async def has_webhooks(self, workspace: Workspace) -> bool:
        """Whether the workspace has any outgoing webhook: the webhook worker reads the webhooks themselves
        only then (most workspaces have none; their secrets never go to the cache)."""
        return await self._flag(workspace.slug, "webhooks", lambda uow: uow.webhooks.list(workspace.id))

    async def forget_webhooks(self, workspace: str) -> None:
        """After a webhook was created or deleted (committed)."""
        await self._forget(workspace, "webhooks")

    # -- the cache ----------------------------------------------------------------------------------------
    def _memo(self, key: tuple[str, bytes], value: T) -> T:
        if len(self._decoded) >= DECODED_MAX:
            self._decoded.clear()
        self._decoded[key] = value
        return value

    async def _lookup(self, workspace: str, key: str) -> bytes | None:
        """The cached value, or None on a miss or a tombstone (then the caller loads from the store)."""
        raw = await self._cache.get(workspace, key)
        if raw == TOMBSTONE:
            self._last_known.pop((workspace, key), None)  # changed: the old answer must not stand in
            return None
        if raw is not None:
            self._seen(workspace, key, raw)
        return raw

    async def _remember(self, workspace: str, key: str, value: bytes) -> None:
        """Cache what a load read, unless anything is there: another load's answer, or a tombstone."""
        self._seen(workspace, key, value)
        await self._cache.put_if_absent(workspace, key, value, self._entry_ttl(key))

    async def _forget(self, workspace: str, key: str) -> None:
        await self._cache.set(workspace, key, TOMBSTONE, TOMBSTONE_TTL_S)
