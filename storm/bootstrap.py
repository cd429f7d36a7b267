"""The one place that wires STORM together (cosmicpython's bootstrap, minus import-time engines).

``build_services(config)`` constructs adapters without connecting; ``Services.start()`` connects them in
dependency order and ``Services.stop()`` closes them in reverse, idempotently.  Quart apps call these
from ``before_serving`` / ``after_serving``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from storm.config import Config
from storm.directory import Directory
from storm.errors import StormError
from storm.ports.broker import Broker
from storm.ports.cache import Cache
from storm.ports.clock import Clock, SystemClock
from storm.ports.identity import IdentityVerifier
from storm.ports.store import Store

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
    _started: list[Any] = field(default_factory=list)
    _state: str = "new"

    async def start(self) -> None:
        if self._state != "new":
            raise RuntimeError(f"services already {self._state}; build new ones to start again")
        self._state = "starting"
        for part in (self.store, self.cache, self.broker):
            await part.start()
            self._started.append(part)
        self._state = "running"

    async def stop(self) -> None:
        if self._state in ("stopped", "new"):
            self._state = "stopped"
            return
        self._state = "stopped"
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

    async def __aenter__(self) -> Services:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def build_services(config: Config, *, clock: Clock | None = None) -> Services:
    clock = clock or SystemClock()
    store = _build_store(config)
    cache = _build_cache(config, clock)
    broker = _build_broker(config, clock)
    identity = _build_identity(config)
    directory = Directory(store, cache)
    if hasattr(broker, "set_initial_offset"):
        broker.set_initial_offset(_last_stored_offset(store))
    return Services(config=config, clock=clock, store=store, broker=broker, cache=cache, identity=identity,
                    directory=directory)


def _last_stored_offset(store: Store) -> Any:
    """For the embedded broker: continue a channel's offsets after the last one persisted, so offsets stay
    monotonic across restarts of `storm dev` (the log itself is not durable)."""

    async def last(workspace: str, channel: str) -> int:
        import uuid

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
    from db.store import SqlStore

    return SqlStore(config.database_url)


def _build_cache(config: Config, clock: Clock) -> Cache:
    if config.cache == "memory":
        from storm.adapters.memory_cache import MemoryCache

        return MemoryCache(clock)
    from storm.adapters.hazelcast_cache import HazelcastCache

    return HazelcastCache(config, clock)


def _build_broker(config: Config, clock: Clock) -> Broker:
    if config.broker == "memory":
        from storm.adapters.memory_broker import MemoryBroker

        return MemoryBroker(clock, retention_messages=config.retention_messages, retention_s=config.retention_s,
                            ack_timeout_s=config.ack_timeout_s)
    from storm.adapters.pulsar_broker import PulsarBroker

    return PulsarBroker(config, clock, send_timeout_s=config.publish_timeout_s)


def _build_identity(config: Config) -> IdentityVerifier:
    if config.identity == "dev":
        from storm.adapters.dev_identity import DevIdentity

        return DevIdentity(config.dev_secret, ttl_s=config.token_ttl_s)
    from storm.adapters.auth0_identity import Auth0Identity

    return Auth0Identity(config)
