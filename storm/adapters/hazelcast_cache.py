"""Hazelcast cache adapter: the Cache port (storm/ports/cache.py) on a Hazelcast 5.x cluster (OSS; no CP).

Design and guarantees: docs/cache.md.  In short:

* The client is the asyncio client of hazelcast-python-client >= 5.7 (``hazelcast.asyncio``): every call
  is a coroutine on our event loop, so nothing blocks it and no thread is involved.  Nothing connects in
  ``__init__``; ``start()`` connects (and refuses a second call); ``stop()`` is idempotent.
* A fixed set of IMaps, shared by all workspaces; every key starts with ``<len>:<workspace>/`` (the length
  makes the prefix unambiguous whatever the slug holds), and ``drop_workspace`` removes one workspace's
  entries from each map with a key-range predicate.  A fixed set keeps one near cache and one
  entry listener per client, however many workspaces there are.
* Directory entries (``ws``, ``webhooks``, ``member:``, ``channel:``, ``chmember:``, written by storm/directory.py) live
  in ``storm.directory``, read through this process's :class:`NearCache`, invalidated by the map's entry
  events (one listener per client) and by our own writes.
* Presence: one ``storm.presence`` entry per (workspace, channel, connection); the value is JSON so queries
  by (workspace, channel[, user], gateway lease) use hash indexes.  A gateway's entries carry its lease
  (``gw``) and no TTL: they live while its one ``storm.presence.leases`` entry (the lease's end, wall time)
  is renewed, so keeping 50 000 connections present is one write per interval, not 50 000 ``setTtl``.
  Readers leave out the entries of lapsed leases (``not in_("gw", lapsed...)``, the lease map read at most
  once a second per process); a lapsed lease is noticed by every watcher's poll (leaves) and reaped by any
  renewing gateway one TTL later (docs/cache.md, "Presence leases").  Entries without a lease keep a TTL.
* Counters are PN counters (CRDT), one per key, listed in ``storm.counters`` so they can be destroyed.
* Rate buckets: optimistic compare-and-set on a small ``"tokens|timestamp"`` string (no locks, no CP).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import random
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

with warnings.catch_warnings():
    # `import hazelcast` loads its threaded client too, which imports the stdlib asyncore on Python 3.11
    # (deprecated there); we use only the asyncio client.
    warnings.filterwarnings("ignore", message="The asyncore module is deprecated", category=DeprecationWarning)
    from hazelcast.aggregator import count
    from hazelcast.asyncio import HazelcastClient
    from hazelcast.config import Config as HzConfig
    from hazelcast.config import IndexType
    from hazelcast.core import HazelcastJsonValue
    from hazelcast.errors import ConsistencyLostError, HazelcastError, TargetNotMemberError
    from hazelcast.predicate import Predicate, and_, equal, greater_or_equal, in_, less, like, not_, not_equal

import hazelcast.serialization.data as _hz_data
import mmh3

from storm.errors import BadRequest, Unavailable
from storm.lifecycle import Lifecycle
from storm.ports.cache import (
    PresenceEntry,
    PresenceExpired,
    PresenceKey,
    PresenceWanted,
    Unwatch,
    check_bucket,
    check_presence_batch,
    check_ttl,
)
from storm.ports.clock import Clock

log = logging.getLogger("storm.cache.hazelcast")

MURMUR_SEED = 0x01000193  # Hazelcast's partition hash: murmur3 x86 32-bit of the data after its 8-byte header


def partition_hash(data: bytes | bytearray) -> int:
    """What the client's ``hazelcast.hash.murmur_hash3_x86_32`` computes (the signed 32-bit murmur3 of the
    serialised key without its 8-byte header, which picks the key's partition and so its member), in C: the
    client's pure-Python version took 10.5 µs for a 60-byte key against 0.25 µs here, on every keyed call (the
    cmid claim, the rate buckets, presence writes) — 5 % of a gateway's CPU in ``storm bench e2e``
    (docs/benchmarks.md).  Installed over the client's by :func:`_install_partition_hash`;
    tests/unit/test_hazelcast_indexes.py checks both agree on every length and on random keys."""
    return int(mmh3.hash(bytes(data[8:]), MURMUR_SEED))


def _install_partition_hash() -> None:
    """``hazelcast.serialization.data`` imported the function by name (``Data.hash_code``, ``Data.__hash__``):
    that module-level name is the one to replace.  Private to hazelcast-python-client 5.7 (pinned < 5.8)."""
    if getattr(_hz_data, "murmur_hash3_x86_32", None) is None:
        log.warning("hazelcast client internals changed: keeping its pure-Python partition hash")
        return
    _hz_data.murmur_hash3_x86_32 = partition_hash  # type: ignore[attr-defined]  # its own import, not re-exported


_install_partition_hash()

MAP_DIRECTORY = "storm.directory"  # near-cached: read on every authorisation, written on membership changes
MAP_KV = "storm.kv"  # every other key/value (cmid dedup, ...): write-heavy, no near cache
MAP_PRESENCE = "storm.presence"
MAP_LEASES = "storm.presence.leases"  # lease (a gateway process) -> its end, wall time; no TTL: reaped
MAP_COUNTERS = "storm.counters"  # registry of PN counter names, per workspace (PN counters cannot be listed)
MAP_RATE = "storm.rate"
MAP_REVOKED = "storm.revoked"
# Hash indexes of storm.presence: a user's entries in a channel, a channel's entries, a lease's entries.  Also
# in the members' configuration (scripts/services/hazelcast/hazelcast.xml, terraform/modules/hazelcast).
PRESENCE_INDEXES = (("ws", "ch", "uid"), ("ws", "ch"), ("gw",))
COUNTER_PREFIX = "storm.counter."
DIRECTORY_KEYS = ("member:", "user:", "channel:", "chmember:")  # see storm/directory.py
DIRECTORY_EXACT = frozenset({"ws", "webhooks"})  # the directory's keys without an id

NEAR_CACHE_TTL_S = 30.0  # = the directory's CACHE_TTL_S: bounds staleness if an invalidation is lost
NEAR_CACHE_MAX_ENTRIES = 50_000
NEVER_EXPIRES_MS = 2**62  # an entry view's expiration time for an entry without TTL is Long.MAX_VALUE
CONNECT_TIMEOUT_S = 10.0  # start() gives up (Unavailable) when no member answers by then
# After start, the client reconnects for ever (retry backoff up to 30 s): with a finite cluster_connect_timeout
# the Hazelcast client shuts itself down for good after an outage longer than it, and every later call of the
# process fails with "Client is not active" although the member is back (found by the hazelcast-loss chaos
# experiment: the API refused every workspace creation after a 20 s member loss).
TARGET_RETRY_S = 1.0  # a PN counter call whose replica left the cluster is retried once after this
INVOCATION_TIMEOUT_S = 5.0  # one operation gives up (Unavailable) after this, retries included
RATE_CAS_RETRIES = 8
RATE_BACKOFF_S = 0.002  # upper bound of the random pause after the n-th lost race, times n
COUNTER_PROXIES_MAX = 10_000  # PN counter proxies kept by the client; the rest are let go (LRU)
DROP_CONCURRENCY = 32
REFRESH_IN_FLIGHT = 256  # set_ttl invocations one presence_refresh_many keeps in flight (pipelined)
LEASES_FRESH_S = 1.0  # how long this process trusts its reading of the lease map (presence readers)
LEASE_POLL_S = 1.0  # how often a watching process looks for lapsed leases (their users' leaves)

P = ParamSpec("P")
T = TypeVar("T")


def _ns(workspace: str) -> str:
    if not isinstance(workspace, str) or not workspace:
        raise BadRequest("workspace must be a non-empty string", field="workspace")
    return f"{len(workspace)}:{workspace}/"


def _in_workspace(workspace: str) -> Predicate:
    """Keys that start with the workspace prefix: the range [prefix, prefix with '/' bumped to '0')."""
    prefix = _ns(workspace)
    return and_(greater_or_equal("__key", prefix), less("__key", prefix[:-1] + "0"))


def _is_directory_key(key: str) -> bool:
    return key in DIRECTORY_EXACT or key.startswith(DIRECTORY_KEYS)


class NearCache:
    """The directory's near cache: answers this process read from ``storm.directory``, by key, kept until an
    entry event of the map says the key changed (set, removed, evicted, expired — from any client), at most
    ``ttl`` seconds, at most ``max_entries`` (the oldest dropped first).

    Why not the client's own near cache: a hit there cost 20–27 µs of pure Python (the key serialised and
    murmur-hashed, the value deserialised, a future), and a publish makes about three directory lookups
    (docs/benchmarks.md, issue 12); a hit here is a dict lookup.  The members send the same one event per
    change to each client either way.

    Races: an answer read while its key was invalidated is not kept (``begin_read``/``end_read``); our own writes
    invalidate the key at once; after a reconnection everything is dropped, since events may have been lost
    while disconnected (hits answer during an outage, as before).  Staleness is otherwise the event's delay
    (milliseconds on a LAN), and the TTL bounds it if an event is lost."""

    def __init__(self, ttl: float, max_entries: int, now: Callable[[], float] = time.monotonic) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._now = now
        self._entries: dict[str, tuple[bytes, float]] = {}
        self._reading: dict[str, list[int]] = {}  # key -> [reads in flight, invalidated meanwhile (0/1)]
        self.hits = 0

    def get(self, key: str) -> bytes | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= self._now():
            self._entries.pop(key, None)
            return None
        self.hits += 1
        return entry[0]

    def begin_read(self, key: str) -> None:
        """A read of ``key`` from the cluster starts; pair with :meth:`end_read`."""
        state = self._reading.get(key)
        if state is None:
            self._reading[key] = [1, 0]
        else:
            state[0] += 1

    def end_read(self, key: str, value: bytes | None, lives_s: float) -> None:
        """Keep ``value`` (for at most ``lives_s``, the entry's remaining life in the cluster) unless ``key`` was
        invalidated while any read of it was in flight: the answer could be the old one."""
        state = self._reading.get(key)
        if state is None:  # cleared meanwhile
            return
        state[0] -= 1
        if state[0] <= 0:
            del self._reading[key]
        if state[1] or value is None or lives_s <= 0:
            return
        entries = self._entries
        if len(entries) >= self._max:
            del entries[next(iter(entries))]
        entries[key] = (value, self._now() + min(self._ttl, lives_s))

    def invalidate(self, key: str) -> None:
        self._entries.pop(key, None)
        state = self._reading.get(key)
        if state is not None:
            state[1] = 1

    def clear(self) -> None:
        self._entries.clear()
        for state in self._reading.values():
            state[1] = 1

    def __len__(self) -> int:
        return len(self._entries)

    # Hazelcast listeners (called on the client's event loop, which is ours)
    def on_event(self, event: Any) -> None:
        key = getattr(event, "key", None)
        if isinstance(key, str):
            self.invalidate(key)
        else:
            self.clear()

    def on_clear(self, _event: Any) -> None:
        self.clear()

    def on_state(self, state: str) -> None:
        """While disconnected, hits still answer (as the client's own near cache did: a Hazelcast outage does
        not stop authorisation); after a (re)connection, events may have been missed: start afresh."""
        if state == "CONNECTED":
            self.clear()


def _presence_key(workspace: str, channel: str, conn_id: str) -> str:
    return f"{_ns(workspace)}{len(channel)}:{channel}/{conn_id}"


def _hz_ttl(ttl: float) -> float:
    """Hazelcast keeps expiry times in whole seconds (an entry set with ttl=1.5 may go after 0.5 s).
    Rounding up and adding a second makes entries live at least ``ttl`` and at most about ttl + 2 s."""
    return float(math.ceil(check_ttl(ttl)) + 1)


def _encode_bucket(tokens: float, stamp: float) -> str:
    return f"{tokens!r}|{stamp!r}"


def _decode_bucket(raw: str) -> tuple[float, float]:
    tokens, stamp = raw.split("|")
    return float(tokens), float(stamp)


def _operation(
    fn: Callable[Concatenate[HazelcastCache, P], Coroutine[Any, Any, T]],
) -> Callable[Concatenate[HazelcastCache, P], Coroutine[Any, Any, T]]:
    """Refuse calls outside start()..stop() and turn client errors into ``Unavailable`` (retriable)."""

    @functools.wraps(fn)
    async def wrapper(self: HazelcastCache, /, *args: P.args, **kwargs: P.kwargs) -> T:
        self._life.check()
        try:
            return await fn(self, *args, **kwargs)
        except HazelcastError as exc:
            raise Unavailable(f"hazelcast {fn.__name__} failed: {type(exc).__name__}: {exc}") from exc

    return wrapper


def _reconnect_forever(client: Any) -> None:
    """Make a started client retry its cluster connection for ever (backoff capped by the client at 30 s).

    The client has one ``cluster_connect_timeout`` for its first connection and for every reconnection; we
    want a bounded first connection (start() answers Unavailable) and an unbounded reconnection, and its
    asyncio client offers no public way to say so (``async_start`` still blocks ``create_and_start``). So the
    wait strategy's bound is lifted after start. Private to hazelcast-python-client 5.7 (pinned < 5.8);
    tests/integration/test_hazelcast_outage.py fails if this stops working."""
    strategy = getattr(getattr(client, "_connection_manager", None), "_wait_strategy", None)
    if strategy is None or not hasattr(strategy, "_cluster_connect_timeout"):
        log.warning("hazelcast client internals changed: after an outage over %.0f s it will not reconnect",
                    CONNECT_TIMEOUT_S)
        return
    strategy._cluster_connect_timeout = math.inf
    strategy._cluster_connect_timeout_text = "INFINITE"


@dataclass(frozen=True, slots=True)
class HazelcastSettings:
    """What the adapter takes from the configuration; :func:`storm.bootstrap.hazelcast_settings` builds it
    from ``STORM_HAZELCAST_MEMBERS`` and ``STORM_HAZELCAST_CLUSTER`` (docs/configuration.md)."""

    members: tuple[str, ...]  # "host:port" of the members to connect to
    cluster: str  # the cluster name

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("HazelcastSettings.members: at least one host:port")


class HazelcastCache:
    def __init__(self, settings: HazelcastSettings, clock: Clock, *,
                 counter_proxies_max: int = COUNTER_PROXIES_MAX) -> None:
        self._members = list(settings.members)
        self._cluster = settings.cluster
        self._clock = clock
        self._client: Any = None
        self._maps: dict[str, Any] = {}
        self._counter_names: OrderedDict[str, None] = OrderedDict()
        self._counter_proxies_max = counter_proxies_max
        self._life = Lifecycle("cache")
        self._expiry_checks: set[asyncio.Task[None]] = set()
        self._background: set[asyncio.Task[None]] = set()  # the indexes declared again after a reconnection
        self._near = NearCache(NEAR_CACHE_TTL_S, NEAR_CACHE_MAX_ENTRIES)
        self._leases: dict[str, float] = {}  # lease -> its end (wall time), as last read from MAP_LEASES
        self._leases_read = -math.inf  # time.monotonic() of that reading
        self._lease_watchers: dict[int, tuple[PresenceWanted, PresenceExpired]] = {}
        self._lease_poll: asyncio.Task[None] | None = None
        self._watch_ids = 0

    def _client_config(self) -> HzConfig:
        cfg = HzConfig()  # type: ignore[no-untyped-call]  # hazelcast's __init__ lacks its `-> None`
        cfg.cluster_name = self._cluster
        cfg.cluster_members = self._members
        cfg.cluster_connect_timeout = CONNECT_TIMEOUT_S  # the first connection; then for ever (_reconnect_forever)
        cfg.invocation_timeout = INVOCATION_TIMEOUT_S
        cfg.statistics_enabled = False
        return cfg

    # -- lifecycle --------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._life.begin_start()
        client = None
        try:
            client = await HazelcastClient.create_and_start(self._client_config())
            _reconnect_forever(client)
            for name in (MAP_DIRECTORY, MAP_KV, MAP_PRESENCE, MAP_LEASES, MAP_COUNTERS, MAP_RATE, MAP_REVOKED):
                self._maps[name] = await client.get_map(name)
            near = self._near
            client.lifecycle_service.add_listener(near.on_state)
            await self._maps[MAP_DIRECTORY].add_entry_listener(
                include_value=False, added_func=near.on_event, removed_func=near.on_event,
                updated_func=near.on_event, evicted_func=near.on_event, expired_func=near.on_event,
                merged_func=near.on_event, evict_all_func=near.on_clear, clear_all_func=near.on_clear)
            await self._declare_indexes()
            client.lifecycle_service.add_listener(self._on_state)
        except BaseException as exc:  # also cancellation: never leave a connected client behind
            self._life.start_failed()
            if client is not None:
                await client.shutdown()
            if isinstance(exc, HazelcastError | OSError):
                where = f"{','.join(self._members)} (cluster {self._cluster!r})"
                raise Unavailable(f"hazelcast at {where}: {exc}") from exc
            raise
        self._client = client
        if not self._life.started():  # stop() ran while we were connecting
            self._client = None
            self._maps.clear()
            await client.shutdown()
            return
        log.info("hazelcast cache connected members=%s cluster=%s", self._members, self._cluster)

    async def _declare_indexes(self) -> None:
        """The presence map's hash indexes (:data:`PRESENCE_INDEXES`); declaring an existing index is a no-op
        cluster-side."""
        presence = self._maps[MAP_PRESENCE]
        for attributes in PRESENCE_INDEXES:
            await presence.add_index(attributes=list(attributes), index_type=IndexType.HASH)

    def _on_state(self, state: str) -> None:
        """After a reconnection, declare the indexes again: a cluster that restarted whole (one member here, a
        full restart in production) comes back without the indexes a client added, and every presence query
        then scans the whole map (53 ms of the member's CPU per query at 30 000 entries, against 1.4 ms on the
        index, measured on the member).  The members' own configuration declares them too
        (scripts/services/hazelcast/hazelcast.xml, the Terraform module); this covers a cluster configured by
        someone else.  Called on the client's loop, which is ours."""
        if state != "CONNECTED" or self._client is None or not self._maps:
            return  # the first connection: start() declares them

        async def declare() -> None:
            try:
                await self._declare_indexes()
                log.info("hazelcast reconnected: presence indexes declared again")
            except Exception as exc:  # the cluster went away again: the next CONNECTED tries again
                log.warning("hazelcast reconnected, declaring the presence indexes failed: %s", exc)

        task = asyncio.ensure_future(declare())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def stop(self) -> None:
        if not self._life.begin_stop():
            return
        for task in list(self._background):
            task.cancel()
        for task in list(self._expiry_checks):
            task.cancel()
        self._lease_watchers.clear()
        poll, self._lease_poll = self._lease_poll, None
        if poll is not None:
            poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poll
        client, self._client = self._client, None
        self._maps.clear()
        self._counter_names.clear()
        self._near.clear()
        if client is not None:
            await client.shutdown()

    async def __aenter__(self) -> HazelcastCache:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def __del__(self) -> None:
        if self._life.running:
            warnings.warn(f"{self!r} was never stopped", ResourceWarning, source=self, stacklevel=1)

    def _kv_map(self, key: str) -> Any:
        if not isinstance(key, str):
            raise BadRequest("key must be a string", field="key")
        return self._maps[MAP_DIRECTORY if _is_directory_key(key) else MAP_KV]

    # -- key/value --------------------------------------------------------------------------------------
    async def get(self, workspace: str, key: str) -> bytes | None:
        if isinstance(key, str) and _is_directory_key(key) and self._life.running:
            hit = self._near.get(_ns(workspace) + key)
            if hit is not None:
                return hit
        return await self._get(workspace, key)

    @_operation
    async def _get(self, workspace: str, key: str) -> bytes | None:
        m = self._kv_map(key)
        full = _ns(workspace) + key
        if m is not self._maps[MAP_DIRECTORY]:
            value = await m.get(full)
            return None if value is None else bytes(value)  # stored as bytearray: Hazelcast's byte[]
        near = self._near
        near.begin_read(full)
        found, lives_s = None, 0.0
        try:
            view = await m.get_entry_view(full)  # the value and when it expires, in one round trip
            if view is not None:
                found = bytes(view.value)
                expires = view.expiration_time  # ms since the epoch; Long.MAX_VALUE when it never expires
                lives_s = math.inf if expires >= NEVER_EXPIRES_MS else expires / 1000.0 - time.time()
        finally:
            near.end_read(full, found, lives_s)  # kept unless it changed while we read
        return found

    @_operation
    async def set(self, workspace: str, key: str, value: bytes, ttl: float) -> None:
        full = _ns(workspace) + key
        try:
            await self._kv_map(key).set(full, bytearray(value), ttl=_hz_ttl(ttl))
        finally:
            self._near.invalidate(full)

    @_operation
    async def delete(self, workspace: str, key: str) -> None:
        full = _ns(workspace) + key
        try:
            await self._kv_map(key).delete(full)
        finally:
            self._near.invalidate(full)

    @_operation
    async def put_if_absent(self, workspace: str, key: str, value: bytes, ttl: float) -> bytes | None:
        full = _ns(workspace) + key
        try:
            existing = await self._kv_map(key).put_if_absent(full, bytearray(value), ttl=_hz_ttl(ttl))
        finally:
            self._near.invalidate(full)
        return None if existing is None else bytes(existing)

    @_operation
    async def incr(self, workspace: str, key: str, delta: int = 1) -> int:
        if not isinstance(key, str):
            raise BadRequest("key must be a string", field="key")
        registry_key = _ns(workspace) + key
        counter = await self._counter(COUNTER_PREFIX + registry_key)
        # Listed before (or while) it is first used, so drop_workspace finds it.  No TTL: counters live as
        # long as the workspace.
        _, value = await asyncio.gather(self._maps[MAP_COUNTERS].set(registry_key, ""),
                                        self._add_and_get(counter, delta))
        return int(value)

    @staticmethod
    async def _add_and_get(counter: Any, delta: int) -> int:
        """``counter.add_and_get``, starting a new session when the replicas lost the old one.

        A member that restarts loses its PN counters (Hazelcast keeps no CRDT state across a restart), and the
        proxy's session guarantees with them: every later call fails ``ConsistencyLostError`` until the proxy
        is reset (storm day, a Hazelcast restart: 25 525 connects refused ``unavailable`` by the workspace
        connection quota).  The failed call changed nothing, so it is retried once after the reset; the count
        starts again from what the cluster holds (docs/cache.md, "Counters").

        Just after such a restart the proxy may still target the member as it was (its old uuid), and the
        client's member list may not hold the new one yet: ``TargetNotMemberError`` (a fresh clone's
        test_hazelcast_outage, 2026-12-07).  The proxy's remembered target is then dropped (private to
        hazelcast-python-client 5.7, pinned < 5.8) and the call retried once after ``TARGET_RETRY_S``."""
        try:
            return int(await counter.add_and_get(delta))
        except (ConsistencyLostError, TargetNotMemberError) as exc:
            log.warning("hazelcast counter %s lost its replica (%s: member restart?); starting a new session",
                        counter.name, type(exc).__name__)
            counter.reset()
            if isinstance(exc, TargetNotMemberError):
                if hasattr(counter, "_current_target_replica_address"):
                    counter._current_target_replica_address = None
                await asyncio.sleep(TARGET_RETRY_S)
            return int(await counter.add_and_get(delta))

    async def _counter(self, name: str) -> Any:
        """The PN counter proxy, keeping at most ``counter_proxies_max`` proxies in the client.

        The client keeps every proxy it ever created; with one counter per reaction key that grows without
        bound, so the least recently used ones are released locally (the counter itself stays in the
        cluster; its next use makes a new proxy).  The client has no public call for a local release."""
        names = self._counter_names
        if name in names:
            names.move_to_end(name)
        else:
            names[name] = None
            while len(names) > self._counter_proxies_max:
                old, _ = names.popitem(last=False)
                proxies = getattr(getattr(self._client, "_proxy_manager", None), "_proxies", None)
                if isinstance(proxies, dict):
                    proxies.pop(("hz:impl:PNCounterService", old), None)
        return await self._client.get_pn_counter(name)

    # -- rate buckets and revocations -------------------------------------------------------------------
    @_operation
    async def rate_take(self, workspace: str, key: str, rate: float, burst: int, cost: int = 1) -> float:
        """Optimistic compare-and-set on ``"tokens|timestamp"``; see docs/cache.md, "Rate buckets".

        Timestamps are the Clock's wall time, shared by every process: a process whose clock runs ahead
        only delays refills (timestamps never move back).  The entry's TTL is the time until the bucket
        is full again, so an expired entry and a full bucket are the same thing."""
        check_bucket(rate, burst, cost)
        if not isinstance(key, str):
            raise BadRequest("key must be a string", field="key")
        buckets, k = self._maps[MAP_RATE], _ns(workspace) + key
        for attempt in range(RATE_CAS_RETRIES):
            if attempt:  # lost a race: back off a random moment so racing takers spread out
                await asyncio.sleep(random.random() * RATE_BACKOFF_S * attempt)  # nosec B311: jitter
            now = self._clock.time()
            raw = await buckets.get(k)
            if raw is None:
                tokens = float(burst - cost)
                ttl = self._refill_s(tokens, burst, rate)
                if await buckets.put_if_absent(k, _encode_bucket(tokens, now), ttl=ttl) is None:
                    return 0.0
                continue  # another process created it first: take from theirs
            tokens, stamp = _decode_bucket(raw)
            tokens = min(float(burst), tokens + max(0.0, now - stamp) * rate)
            if tokens < cost:
                return (cost - tokens) / rate
            tokens -= cost
            if await buckets.replace_if_same(k, raw, _encode_bucket(tokens, max(stamp, now))):
                await buckets.set_ttl(k, self._refill_s(tokens, burst, rate))
                return 0.0
        log.debug("rate bucket ws=%s key=%s: %d lost races in a row, refusing", workspace, key, RATE_CAS_RETRIES)
        return cost / rate

    @staticmethod
    def _refill_s(tokens: float, burst: int, rate: float) -> float:
        return _hz_ttl(max((burst - tokens) / rate, 0.001))  # the extra second covers clock differences

    @_operation
    async def revoke(self, workspace: str, subject: str, ttl: float) -> None:
        """The value is the revocation's end (wall time), checked on read, so a revocation ends on time
        although Hazelcast's TTL (garbage collection here) is rounded up to seconds.  A shorter revocation
        never shortens a longer one."""
        until = self._clock.time() + check_ttl(ttl)
        ttl = _hz_ttl(ttl)
        if not isinstance(subject, str) or not subject:
            raise BadRequest("subject must be a non-empty string", field="subject")
        revoked, k = self._maps[MAP_REVOKED], _ns(workspace) + subject
        for _ in range(RATE_CAS_RETRIES):
            current = await revoked.put_if_absent(k, until, ttl=ttl)
            if current is None or current >= until:
                return
            if await revoked.replace_if_same(k, current, until):
                await revoked.set_ttl(k, ttl)
                return
        await revoked.set(k, until, ttl=ttl)  # still contended: the last writer wins, revoked either way

    @_operation
    async def is_revoked(self, workspace: str, subject: str) -> bool:
        if not isinstance(subject, str):
            raise BadRequest("subject must be a string", field="subject")
        until = await self._maps[MAP_REVOKED].get(_ns(workspace) + subject)
        return until is not None and until > self._clock.time()

    @_operation
    async def revoked_among(self, workspace: str, subjects: Sequence[str]) -> frozenset[str]:
        """One query for the workspace's whole list (its keys share the prefix ``_ns(workspace)``; the list
        is short, entries live a token's lifetime at most), filtered here: a Hazelcast call per subject, or a
        ``get_all`` (one invocation per partition), cost more than the list."""
        wanted = frozenset(subjects)
        if not wanted:
            return wanted
        prefix = _ns(workspace)
        pattern = prefix + "%"  # a "_" or "%" in the slug matches more, never less: filtered below
        now = self._clock.time()
        found: list[str] = []
        for k, until in await self._maps[MAP_REVOKED].entry_set(like("__key", pattern)):
            if isinstance(k, str) and k.startswith(prefix) and until is not None and until > now:
                subject = k[len(prefix):]
                if subject in wanted:
                    found.append(subject)
        return frozenset(found)

    # -- presence ---------------------------------------------------------------------------------------
    @staticmethod
    def _user_in_channel(workspace: str, channel: str, user_id: str) -> Predicate:
        return and_(equal("ws", workspace), equal("ch", channel), equal("uid", user_id))

    async def _lease_view(self, *, fresh: bool = False) -> dict[str, float]:
        """The lease map (lease -> end), read again when ``fresh`` or older than ``LEASES_FRESH_S``."""
        now = time.monotonic()
        if fresh or now - self._leases_read >= LEASES_FRESH_S:
            self._leases = {k: float(v) for k, v in await self._maps[MAP_LEASES].entry_set()}
            self._leases_read = now
        return self._leases

    def _live_in(self, view: dict[str, float], *conditions: Predicate) -> Predicate:
        """``conditions`` and not an entry of a lapsed lease.  Lapsed, not "not live": a lapsed lease stays in
        the map until it is reaped with its entries, while a lease this process has not read yet (a gateway
        that started less than ``LEASES_FRESH_S`` ago) must not hide its users.  Usually no lease has
        lapsed, and the query is the same as without leases."""
        now = self._clock.time()
        lapsed = [lease for lease, until in view.items() if until <= now]
        return and_(*conditions, not_(in_("gw", *lapsed))) if lapsed else and_(*conditions)

    async def _live(self, *conditions: Predicate) -> Predicate:
        return self._live_in(await self._lease_view(), *conditions)

    @_operation
    async def presence_add(
        self, workspace: str, channel: str, conn_id: str, entry: PresenceEntry, ttl: float, *, first: bool = True,
        lease: str | None = None,
    ) -> bool:
        """Count the user's other live entries (one aggregation on the index, not a listing), then write
        ours: of two racing first entries at least one sees none (a join may be announced twice, never
        missed because of that race); docs/cache.md.  ``first=False``: the write alone.  With a lease the
        entry has no TTL of its own (``gw`` names the lease)."""
        hz_ttl: float | None = _hz_ttl(ttl) if lease is None else None
        if lease is not None and (until := (await self._lease_view()).get(lease)) is not None \
                and until <= self._clock.time():
            return False  # a lapsed lease: the entry would never be seen (as the embedded adapter)
        presence, key = self._maps[MAP_PRESENCE], _presence_key(workspace, channel, conn_id)
        value = HazelcastJsonValue(json.dumps(
            {"ws": workspace, "ch": channel, "conn": conn_id, "uid": entry.user_id, "name": entry.name,
             "gw": lease or ""},
            separators=(",", ":"),
        ))
        if not first:
            await presence.set(key, value, ttl=hz_ttl)
            return False
        others = await presence.aggregate(count(), await self._live(
            self._user_in_channel(workspace, channel, entry.user_id), not_equal("conn", conn_id)))
        await presence.set(key, value, ttl=hz_ttl)
        return not int(others)

    @_operation
    async def presence_lease(self, lease: str, ttl: float) -> bool:
        """Read the lease map (a handful of entries: one per gateway), write ours, and reap the leases lapsed
        for ``ttl`` s or more: one ``remove_all`` of their entries on the ``gw`` index, then the lease
        itself (only if unchanged: a gateway that came back keeps it).  A lapsed lease of our own loses its
        entries before it is renewed (the watchers told their subscribers those users left)."""
        ttl = check_ttl(ttl)
        if not isinstance(lease, str) or not lease:
            raise BadRequest("lease must be a non-empty string", field="lease")
        leases, presence = self._maps[MAP_LEASES], self._maps[MAP_PRESENCE]
        view = dict(await self._lease_view(fresh=True))
        now = self._clock.time()
        mine = view.get(lease)
        if mine is not None and mine <= now:
            await presence.remove_all(equal("gw", lease))
        await leases.set(lease, now + ttl)
        self._leases[lease] = now + ttl
        for other, until in view.items():
            if other != lease and until + ttl <= now:
                log.info("reaping the presence entries of lease %s, lapsed %.0f s ago", other, now - until)
                await presence.remove_all(equal("gw", other))
                if await leases.remove_if_same(other, until):
                    self._leases.pop(other, None)
        return mine is not None and mine > now

    @_operation
    async def presence_remove(self, workspace: str, channel: str, conn_id: str, *,
                              last: bool = True) -> PresenceEntry | None:
        """Remove ours, then look for the user's others: of two racing last removals at least one sees
        none (a leave may be announced twice, never missed because of that race)."""
        presence = self._maps[MAP_PRESENCE]
        gone = await presence.remove(_presence_key(workspace, channel, conn_id))
        if gone is None or not last:
            return None
        doc = gone.loads()
        if await presence.key_set(await self._live(self._user_in_channel(workspace, channel, doc["uid"]))):
            return None
        return PresenceEntry(doc["uid"], doc["name"])

    @_operation
    async def presence_refresh(self, workspace: str, channels: list[str], conn_id: str, ttl: float) -> None:
        ttl = _hz_ttl(ttl)
        presence = self._maps[MAP_PRESENCE]
        # set_ttl does nothing for an entry that is gone (expired or removed): a dead entry stays dead.
        await asyncio.gather(*(presence.set_ttl(_presence_key(workspace, ch, conn_id), ttl) for ch in channels))

    @_operation
    async def presence_refresh_many(self, keys: Sequence[PresenceKey], ttl: float) -> None:
        """One call for a gateway's entries: the ``set_ttl`` invocations are pipelined on the client's
        connections, ``REFRESH_IN_FLIGHT`` at a time (Hazelcast has no batched TTL update without a
        member-side entry processor)."""
        hz_ttl = _hz_ttl(ttl)
        check_presence_batch(keys)
        presence = self._maps[MAP_PRESENCE]
        names = [_presence_key(k.workspace, k.channel, k.conn_id) for k in keys]
        for i in range(0, len(names), REFRESH_IN_FLIGHT):
            await asyncio.gather(*(presence.set_ttl(n, hz_ttl) for n in names[i:i + REFRESH_IN_FLIGHT]))

    @_operation
    async def presence_list(self, workspace: str, channel: str) -> list[PresenceEntry]:
        values = await self._maps[MAP_PRESENCE].values(await self._live(equal("ws", workspace), equal("ch", channel)))
        users: dict[str, PresenceEntry] = {}
        for value in values:
            doc = value.loads()
            users.setdefault(doc["uid"], PresenceEntry(doc["uid"], doc["name"]))
        return sorted(users.values(), key=lambda e: (e.name, e.user_id))

    @_operation
    async def presence_count(self, workspace: str, channel: str) -> int:
        """One aggregation run by the members on the (ws, ch) index, of the entries of live leases."""
        result = await self._maps[MAP_PRESENCE].aggregate(count(), await self._live(equal("ws", workspace),
                                                                                    equal("ch", channel)))
        return int(result)

    @_operation
    async def watch_presence_expiry(self, wanted: PresenceWanted, listener: PresenceExpired) -> Unwatch:
        """An entry listener for EXPIRED events on ``storm.presence`` (the members send every client that
        registered one each expiry, with the old value).  For a wanted channel, one query asks whether the
        user has another live entry there; if not, the listener is called.  Expiry is run by each
        member's expiration task (every 5 s by default), so an event comes up to ~5 s after the TTL."""
        presence = self._maps[MAP_PRESENCE]

        def on_expired(event: Any) -> None:
            value = event.old_value if event.old_value is not None else event.value
            try:
                doc = value.loads()
                workspace, channel = doc["ws"], doc["ch"]
                if not wanted(workspace, channel):
                    return
                entry = PresenceEntry(doc["uid"], doc["name"])
            except Exception:
                log.exception("ignoring a presence expiry event that cannot be read")
                return
            task = asyncio.get_running_loop().create_task(self._report_expiry(workspace, channel, entry, listener))
            self._expiry_checks.add(task)
            task.add_done_callback(self._expiry_checks.discard)

        registration = await presence.add_entry_listener(include_value=True, expired_func=on_expired)
        self._watch_ids += 1
        wid = self._watch_ids
        self._lease_watchers[wid] = (wanted, listener)
        if self._lease_poll is None:
            self._lease_poll = asyncio.get_running_loop().create_task(self._poll_leases())

        async def unwatch() -> None:
            self._lease_watchers.pop(wid, None)
            if not self._lease_watchers and self._lease_poll is not None:
                poll, self._lease_poll = self._lease_poll, None
                poll.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poll
            if self._life.running:
                with contextlib.suppress(HazelcastError):
                    await presence.remove_entry_listener(registration)

        return unwatch

    async def _poll_leases(self) -> None:
        """Every ``LEASE_POLL_S``: read the lease map; for each lease that lapsed since the last look, report
        the users of its entries (in wanted channels) who have no live entry left there.  At least once: a
        process that starts while a lapsed lease is still unreaped reports it too."""
        reported: set[str] = set()
        failing = False  # an outage is logged once when it starts and once when it ends, not every second
        while True:
            await asyncio.sleep(LEASE_POLL_S)
            try:
                view = dict(await self._lease_view(fresh=True))
                now = self._clock.time()
                lapsed = {lease for lease, until in view.items() if until <= now}
                reported &= lapsed  # reaped, or renewed (a later lapse is news again)
                for lease in lapsed - reported:
                    await self._report_lapse(lease, view)
                    reported.add(lease)
            except (HazelcastError, KeyError) as exc:  # KeyError: stopped meanwhile
                if not failing:
                    log.warning("presence lease poll failed (retrying every %.0f s): %s", LEASE_POLL_S, exc)
                failing = True
                continue
            except Exception:  # our bug: logged, the next poll tries again
                log.exception("presence lease poll failed")
                continue
            if failing:
                log.info("presence lease poll works again")
                failing = False

    async def _report_lapse(self, lease: str, view: dict[str, float]) -> None:
        presence = self._maps[MAP_PRESENCE]
        docs = [v.loads() for v in await presence.values(equal("gw", lease))]
        for wanted, listener in list(self._lease_watchers.values()):
            gone: dict[tuple[str, str], dict[str, PresenceEntry]] = {}
            for doc in docs:
                if wanted(doc["ws"], doc["ch"]):
                    gone.setdefault((doc["ws"], doc["ch"]), {})[doc["uid"]] = PresenceEntry(doc["uid"], doc["name"])
            for (workspace, channel), users in gone.items():
                here = await presence.values(self._live_in(view, equal("ws", workspace), equal("ch", channel)))
                still = {v.loads()["uid"] for v in here}
                for uid, entry in users.items():
                    if uid in still:
                        continue  # still here through another gateway's connection
                    try:
                        listener(workspace, channel, entry)
                    except Exception:
                        log.exception("presence expiry listener failed ws=%s channel=%s", workspace, channel)

    async def _report_expiry(self, workspace: str, channel: str, entry: PresenceEntry,
                             listener: PresenceExpired) -> None:
        try:
            mine = self._user_in_channel(workspace, channel, entry.user_id)
            others = await self._maps[MAP_PRESENCE].key_set(await self._live(mine))
        except (HazelcastError, KeyError) as exc:  # KeyError: stopped meanwhile
            log.warning("presence expiry not reported ws=%s channel=%s: %s", workspace, channel, exc)
            return
        if others:
            return  # the user is still here through another connection (or came back)
        try:
            listener(workspace, channel, entry)
        except Exception:
            log.exception("presence expiry listener failed ws=%s channel=%s", workspace, channel)

    # -- workspace deletion -----------------------------------------------------------------------------
    @_operation
    async def drop_workspace(self, workspace: str) -> None:
        """Remove the workspace's entries from every map (one key-range predicate per map, run by the
        members on every partition) and destroy its PN counters.  Entries written concurrently by sessions
        still open can survive the drop; they all expire by TTL except counters (docs/cache.md)."""
        in_ws = _in_workspace(workspace)
        maps = self._maps
        await asyncio.gather(
            *(maps[name].remove_all(in_ws) for name in (MAP_DIRECTORY, MAP_KV, MAP_RATE, MAP_REVOKED)),
            maps[MAP_PRESENCE].remove_all(equal("ws", workspace)),
        )
        registry = maps[MAP_COUNTERS]
        names = [COUNTER_PREFIX + k for k in await registry.key_set(in_ws)]
        for i in range(0, len(names), DROP_CONCURRENCY):
            await asyncio.gather(*(self._destroy_counter(n) for n in names[i:i + DROP_CONCURRENCY]))
        await registry.remove_all(in_ws)

    async def _destroy_counter(self, name: str) -> None:
        self._counter_names.pop(name, None)
        counter = await self._client.get_pn_counter(name)
        await counter.destroy()


if TYPE_CHECKING:  # the type checker proves the port is satisfied (centrifuge's `var _ Broker = ...`)
    from storm.ports.cache import Cache

    def _conforms(cache: HazelcastCache) -> None:
        _cache: Cache = cache
