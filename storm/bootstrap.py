"""The one place that wires STORM together (cosmicpython's bootstrap, minus import-time engines).

``build_services(config)`` constructs adapters without connecting; ``Services.start()`` connects them in
dependency order and ``Services.stop()`` closes them in reverse, idempotently.  Quart apps call these
from ``before_serving`` / ``after_serving``.

Adapters never see the whole :class:`~storm.config.Config`: each takes a small settings object that the
functions at the end build from it (``pulsar_settings``, ``hazelcast_settings``, ``auth0_settings``), so an
adapter's constructor says what it depends on and a test builds one without a full configuration.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from storm.config import Config, ConfigError
from storm.directory import Directory
from storm.errors import StormError
from storm.lifecycle import Lifecycle, Resource
from storm.metrics import Metrics
from storm.ports.broker import Broker, WorkBacklog
from storm.ports.cache import Cache
from storm.ports.clock import Clock, SystemClock
from storm.ports.identity import IdentityVerifier
from storm.ports.store import Store

if TYPE_CHECKING:
    from storm.adapters.auth0_identity import Auth0Settings
    from storm.adapters.hazelcast_cache import HazelcastSettings
    from storm.adapters.pulsar_broker import PulsarSettings

log = logging.getLogger("storm.bootstrap")


@dataclass
class Services:
    config: Config
    clock: Clock
    store: Store
    broker: Broker
    cache: Cache
    identity: IdentityVerifier
    directory: Directory
    metrics: Metrics = field(default_factory=Metrics)  # docs/observability.md; the dropping one by default
    # Not constructor arguments: dataclasses.replace(services, store=...) makes a fresh, unstarted copy.
    _started: list[Resource] = field(default_factory=list, init=False, repr=False)
    _life: Lifecycle = field(default_factory=lambda: Lifecycle("services"), init=False, repr=False)

    async def start(self) -> None:
        self._life.begin_start()
        parts: tuple[Resource, ...] = (self.store, self.cache, self.broker)
        for part in parts:
            await part.start()
            self._started.append(part)
        await self.metrics.start()  # the flush timer and process probes, when an agent is configured
        self._started.append(self.metrics)
        self._life.started()

    async def stop(self) -> None:
        if not self._life.begin_stop():
            return
        while self._started:
            part = self._started.pop()
            try:
                await part.stop()
            except Exception:  # one failing adapter must not keep the others open
                log.exception("error stopping %s", type(part).__name__)

    async def health_checks(self) -> dict[str, str]:
        """What ``/healthz`` reports of the adapters: ``{"store": "ok"}``, or the reason it is not."""
        try:
            await self.store.ping()
        except StormError as exc:
            return {"store": exc.message}
        return {"store": "ok"}

    def work_backlog(self, subscription: str) -> Callable[[], Awaitable[float | None]]:
        """How to read the backlog of a work subscription (``storm.consumer.backlog``): None when the broker
        cannot tell (it is no :class:`~storm.ports.broker.WorkBacklog`, or its answer failed)."""
        broker = self.broker

        async def read() -> float | None:
            if not isinstance(broker, WorkBacklog):
                return None
            try:
                return float(await broker.work_backlog(subscription))
            except (StormError, ValueError) as exc:  # ValueError: an admin answer that is not JSON
                log.debug("backlog of %s unavailable: %r", subscription, exc)
                return None

        return read

    async def __aenter__(self) -> Services:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def build_services(config: Config, *, clock: Clock | None = None, role: str = "dev") -> Services:
    """``role`` (gateway, api, consumers, or dev for everything in one process) is the metrics' service tag."""
    clock = clock or SystemClock()
    store = _build_store(config)
    cache = _build_cache(config, clock)
    broker = _build_broker(config, clock, store)
    identity = _build_identity(config)
    metrics = _build_metrics(config, role)
    if metrics.enabled:  # dependency latencies, timed around the adapters (storm/metered.py)
        from storm.metered import MeteredBroker, MeteredCache, MeteredStore

        store = cast(Store, MeteredStore(store, metrics))
        cache = cast(Cache, MeteredCache(cache, metrics))
        broker = cast(Broker, MeteredBroker(broker, metrics))
    directory = Directory(store, cache)
    return Services(config=config, clock=clock, store=store, broker=broker, cache=cache, identity=identity,
                    directory=directory, metrics=metrics)


def _build_metrics(config: Config, role: str) -> Metrics:
    """DogStatsD when ``DD_DOGSTATSD_URL`` or ``DD_AGENT_HOST`` is set, else the null sink (docs/observability.md)."""
    from storm.adapters.dogstatsd_metrics import Target

    try:
        target = Target.parse(config.dd_dogstatsd_url, config.dd_agent_host, config.dd_dogstatsd_port)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if target is None:
        from storm.adapters.null_metrics import NullMetrics

        return Metrics(NullMetrics(), interval_s=config.metrics_interval_s)
    import os
    import socket

    from storm.adapters import process_metrics
    from storm.adapters.dogstatsd_metrics import DogStatsdMetrics

    instance = config.gateway_id or f"{socket.gethostname()}:{os.getpid()}"
    tags = [f"service:{config.dd_service or role}", f"instance:{instance}"]
    tags += [f"{name}:{value}" for name, value in (("env", config.dd_env), ("version", config.dd_version)) if value]
    metrics = Metrics(DogStatsdMetrics(target, tags), interval_s=config.metrics_interval_s)
    process_metrics.install(metrics)
    return metrics


def _last_stored_offset(store: Store) -> Callable[[str, str], Awaitable[int]]:
    """For the embedded broker: continue a channel's offsets after the last one persisted, so offsets stay
    monotonic across restarts of `storm dev` (the log itself is not durable)."""

    async def last(workspace: str, channel: str) -> int:
        try:
            channel_id = uuid.UUID(channel)
        except ValueError:
            return 0
        async with store.unit_of_work() as uow:
            ws = await uow.workspaces.get_by_slug(workspace)
            if ws is None:
                return 0
            newest = await uow.messages.page(ws.id, channel_id, before=None, limit=1)
        return newest[0].offset if newest else 0

    return last


def _build_store(config: Config) -> Store:
    if config.store == "memory":
        from storm.adapters.memory_store import MemoryStore

        return MemoryStore()
    from db.store import PoolSize, SqlStore

    return SqlStore(config.database_url, pool=PoolSize(config.db_pool_size, config.db_pool_overflow,
                                                        config.db_pool_timeout_s))


def _build_cache(config: Config, clock: Clock) -> Cache:
    if config.cache == "memory":
        from storm.adapters.memory_cache import MemoryCache

        return MemoryCache(clock)
    from storm.adapters.hazelcast_cache import HazelcastCache

    return HazelcastCache(hazelcast_settings(config), clock)


def _build_broker(config: Config, clock: Clock, store: Store) -> Broker:
    if config.broker == "memory":
        from storm.adapters.memory_broker import MemoryBroker

        return MemoryBroker(clock, retention_messages=config.retention_messages, retention_s=config.retention_s,
                            ack_timeout_s=config.ack_timeout_s, initial_offset=_last_stored_offset(store))
    from storm.adapters.pulsar_relay import pulsar_broker  # PulsarBroker, or its relay-fed variant (ADR 0013)

    return pulsar_broker(pulsar_settings(config), clock)


def _build_identity(config: Config) -> IdentityVerifier:
    if config.identity == "dev":
        from storm.adapters.dev_identity import DevIdentity

        return DevIdentity(config.dev_secret, ttl_s=config.token_ttl_s)
    from storm.adapters.auth0_identity import Auth0Identity

    return Auth0Identity(auth0_settings(config))


# -- per-adapter settings -------------------------------------------------------------------------------
def pulsar_settings(config: Config) -> PulsarSettings:
    from storm.adapters.pulsar_broker import PulsarSettings

    return PulsarSettings(
        service_url=config.pulsar_url, admin_url=config.pulsar_admin_url, cluster=config.pulsar_cluster,
        gateway_id=config.gateway_id, max_channel_readers=config.max_channel_readers,
        ack_timeout_s=config.ack_timeout_s, max_redeliveries=config.consumer_max_redeliveries,
        send_timeout_s=config.publish_timeout_s, broadcast=config.broadcast,
        work_attach_chunk=config.work_attach_chunk,
    )


def hazelcast_settings(config: Config) -> HazelcastSettings:
    from storm.adapters.hazelcast_cache import HazelcastSettings

    members = tuple(m.strip() for m in config.hazelcast_members.split(",") if m.strip())
    if not members:
        raise ConfigError("STORM_HAZELCAST_MEMBERS must name at least one host:port")
    return HazelcastSettings(members=members, cluster=config.hazelcast_cluster)


def auth0_settings(config: Config) -> Auth0Settings:
    from storm.adapters.auth0_identity import Auth0Settings

    domain = config.auth0_domain.strip().rstrip("/")
    return Auth0Settings(
        issuer=config.auth0_issuer or f"https://{domain}/",
        audience=config.auth0_audience,
        jwks_url=config.auth0_jwks_url or f"https://{domain}/.well-known/jwks.json",
        leeway_s=config.auth0_leeway_s,
        workspace_claim=config.auth0_workspace_claim,
        required_scopes=frozenset(config.auth0_required_scopes.split()),
        jwks_cache_s=config.auth0_jwks_cache_s,
        jwks_min_refetch_s=config.auth0_jwks_min_refetch_s,
    )
