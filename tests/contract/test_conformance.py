"""Each adapter satisfies its port, checked at run time where that is cheap.

The type checker proves it statically (every adapter module ends with a ``_conforms`` function under
``TYPE_CHECKING``, checked by ``make lint``); this suite checks what mypy cannot see from one module: the
same parameter names, kinds and defaults as the Protocol (callers of the port may pass keywords), coroutine
methods where the port has coroutines, which optional capabilities each adapter has, and the lifecycle every
adapter shares (storm/lifecycle.py).  Docs: docs/architecture.md, "Ports and adapters".
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import db.repositories as repos
from db.store import SqlStore, SqlUnitOfWork
from storm.adapters import memory_store as mem
from storm.adapters.auth0_identity import Auth0Identity
from storm.adapters.dev_identity import DevIdentity
from storm.adapters.hazelcast_cache import HazelcastCache
from storm.adapters.memory_broker import MemoryBroker, _BroadcastSubscription, _WorkConsumer
from storm.adapters.memory_cache import MemoryCache
from storm.adapters.pulsar_broker import PulsarBroadcastSubscription, PulsarBroker
from storm.adapters.pulsar_work import PulsarWorkSubscription
from storm.errors import Unavailable
from storm.ports import broker as broker_port
from storm.ports import cache as cache_port
from storm.ports import identity as identity_port
from storm.ports import store as store_port
from storm.ports.clock import SystemClock

PAIRS: list[tuple[type, type]] = [
    (broker_port.Broker, MemoryBroker),
    (broker_port.Broker, PulsarBroker),
    (broker_port.BroadcastSubscription, _BroadcastSubscription),
    (broker_port.BroadcastSubscription, PulsarBroadcastSubscription),
    (broker_port.WorkSubscription, _WorkConsumer),
    (broker_port.WorkSubscription, PulsarWorkSubscription),
    (broker_port.ChannelPreparer, PulsarBroker),
    (broker_port.WorkScope, PulsarBroker),
    (broker_port.WorkBacklog, MemoryBroker),
    (broker_port.WorkBacklog, PulsarBroker),
    (cache_port.Cache, MemoryCache),
    (cache_port.Cache, HazelcastCache),
    (identity_port.IdentityVerifier, DevIdentity),
    (identity_port.IdentityVerifier, Auth0Identity),
    (store_port.Store, SqlStore),
    (store_port.UnitOfWork, SqlUnitOfWork),
    (store_port.WorkspaceRepository, repos.SqlWorkspaceRepository),
    (store_port.UserRepository, repos.SqlUserRepository),
    (store_port.MembershipRepository, repos.SqlMembershipRepository),
    (store_port.ChannelRepository, repos.SqlChannelRepository),
    (store_port.MessageRepository, repos.SqlMessageRepository),
    (store_port.ReactionRepository, repos.SqlReactionRepository),
    (store_port.ReadMarkerRepository, repos.SqlReadMarkerRepository),
    (store_port.Store, mem.MemoryStore),
    (store_port.UnitOfWork, mem.MemoryUnitOfWork),
    (store_port.WorkspaceRepository, mem.MemoryWorkspaceRepository),
    (store_port.UserRepository, mem.MemoryUserRepository),
    (store_port.MembershipRepository, mem.MemoryMembershipRepository),
    (store_port.ChannelRepository, mem.MemoryChannelRepository),
    (store_port.MessageRepository, mem.MemoryMessageRepository),
    (store_port.ReactionRepository, mem.MemoryReactionRepository),
    (store_port.ReadMarkerRepository, mem.MemoryReadMarkerRepository),
]


def _methods(port: type) -> dict[str, Callable[..., Any]]:
    """The port's methods: its own callables (properties are data, checked by the type checker)."""
    return {name: fn for name, fn in vars(port).items()
            if inspect.isfunction(fn) and (not name.startswith("_") or name in ("__aenter__", "__aexit__"))}


def _shape(fn: Callable[..., Any]) -> list[tuple[str, object, object]]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize(("port", "adapter"), PAIRS, ids=[f"{a.__name__}-{p.__name__}" for p, a in PAIRS])
def test_adapter_methods_have_the_port_signatures(port: type, adapter: type) -> None:
    methods = _methods(port)
    assert methods, f"{port.__name__} has no methods to compare"
    for name, fn in methods.items():
        mine = getattr(adapter, name, None)
        assert callable(mine), f"{adapter.__name__} lacks {port.__name__}.{name}"
        assert _shape(mine) == _shape(fn), f"{adapter.__name__}.{name} differs from {port.__name__}.{name}"
        assert inspect.iscoroutinefunction(mine) == inspect.iscoroutinefunction(fn), (
            f"{adapter.__name__}.{name}: coroutine or not, as the port says")


def test_the_check_above_catches_a_mismatch() -> None:
    """The comparison is not vacuous: a renamed parameter or a plain method where a coroutine belongs fails."""

    class Renamed:
        async def verify(self, jwt: str) -> identity_port.Claims:
            raise NotImplementedError

    class NotAsync:
        def verify(self, token: str) -> identity_port.Claims:
            raise NotImplementedError

    for wrong in (Renamed, NotAsync):
        with pytest.raises(AssertionError):
            test_adapter_methods_have_the_port_signatures(identity_port.IdentityVerifier, wrong)


def test_optional_capabilities_are_found_by_isinstance_not_hasattr() -> None:
    from storm.bootstrap import pulsar_settings
    from storm.config import Config

    memory = MemoryBroker(SystemClock())
    pulsar = PulsarBroker(pulsar_settings(Config()), SystemClock())  # nothing connects before start()
    assert isinstance(pulsar, broker_port.ChannelPreparer) and isinstance(pulsar, broker_port.WorkScope)
    assert not isinstance(memory, broker_port.ChannelPreparer) and not isinstance(memory, broker_port.WorkScope)
    assert isinstance(pulsar, broker_port.WorkBacklog) and isinstance(memory, broker_port.WorkBacklog)
    assert isinstance(SqlStore("sqlite+aiosqlite:///:memory:"), store_port.CountsRetries)


def test_a_metered_broker_keeps_exactly_the_capabilities_of_its_adapter() -> None:
    """With metrics on, the bootstrap wraps the broker (storm/metered.py); tools still find its capabilities,
    also where isinstance looks attributes up statically (Python 3.12 on: inspect.getattr_static)."""
    from storm.bootstrap import pulsar_settings
    from storm.config import Config
    from storm.metered import MeteredBroker
    from storm.metrics import Metrics

    pulsar = MeteredBroker(PulsarBroker(pulsar_settings(Config()), SystemClock()), Metrics())
    memory = MeteredBroker(MemoryBroker(SystemClock()), Metrics())
    for capability, name in ((broker_port.ChannelPreparer, "ensure_channel"), (broker_port.WorkScope, "limit_work_to"),
                             (broker_port.WorkBacklog, "work_backlog")):
        assert isinstance(pulsar, capability)
        inspect.getattr_static(pulsar, name)  # AttributeError if only __getattr__ could find it
    assert isinstance(memory, broker_port.WorkBacklog)
    assert not isinstance(memory, broker_port.ChannelPreparer) and not isinstance(memory, broker_port.WorkScope)


# ---- the shared lifecycle (aiokafka's): no I/O before start, start once, stop idempotent, async with ----------
def _memory_broker() -> Any:
    return MemoryBroker(SystemClock())


def _memory_cache() -> Any:
    return MemoryCache(SystemClock())


def _sqlite_store() -> Any:
    return SqlStore("sqlite+aiosqlite:///:memory:")


def _memory_store() -> Any:
    return mem.MemoryStore()


async def _use(resource: Any) -> None:
    """One call of the port, to tell a running adapter from a stopped one."""
    if isinstance(resource, MemoryBroker):
        await resource.head("ws", "ch")
    elif isinstance(resource, MemoryCache):
        await resource.get("ws", "k")
    else:
        await resource.ping()


@pytest.fixture(params=[_memory_broker, _memory_cache, _sqlite_store, _memory_store],
                ids=["memory-broker", "memory-cache", "sql-store", "memory-store"])
async def resource(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    made = request.param()
    try:
        yield made
    finally:
        await made.stop()


async def test_unstarted_adapters_refuse_work(resource: Any) -> None:
    with pytest.raises(Unavailable):
        await _use(resource)


async def test_start_twice_raises_and_stop_is_idempotent(resource: Any) -> None:
    await resource.start()
    await _use(resource)
    with pytest.raises(RuntimeError, match="called twice"):
        await resource.start()
    await resource.stop()
    await resource.stop()
    with pytest.raises(Unavailable):
        await _use(resource)
    with pytest.raises(RuntimeError, match="called twice"):  # a stopped adapter is not started again
        await resource.start()


async def test_async_with_starts_and_stops(resource: Any) -> None:
    async with resource as same:
        assert same is resource
        await _use(resource)
    with pytest.raises(Unavailable):
        await _use(resource)


# ---- the bootstrap hands the memory broker what it needs in its constructor (it used to probe with hasattr) ---
async def test_the_embedded_broker_continues_after_the_last_stored_offset(tmp_path: Any) -> None:
    """`storm dev` restarts with an empty in-process log: a channel's next offset follows the last one stored,
    so (channel, offset) stays unique in the store across restarts."""
    import uuid
    from datetime import UTC, datetime

    from storm.bootstrap import build_services
    from storm.config import Config
    from storm.domain import Channel, Message, Workspace

    now = datetime.now(UTC)
    ws = Workspace(id=uuid.uuid4(), slug="offsets", name="Offsets", plan="free", created_at=now)
    channel = Channel(id=uuid.uuid4(), workspace_id=ws.id, name="general", created_at=now)
    async with build_services(Config(database_url=f"sqlite+aiosqlite:///{tmp_path}/o.db")) as services:

        async def seed(uow: store_port.UnitOfWork) -> None:
            await uow.workspaces.add(ws)
            await uow.channels.add(channel)
            await uow.messages.add_many([Message(id=uuid.uuid4(), workspace_id=ws.id, channel_id=channel.id,
                                                 author_id=uuid.uuid4(), body="before", offset=41,
                                                 created_at=now)])

        await services.store.run(seed)
        assert await services.broker.publish(ws.slug, str(channel.id), b"{}") == 42
        assert await services.broker.publish(ws.slug, str(uuid.uuid4()), b"{}") == 1  # nothing stored there


async def test_the_backlog_gauge_reads_the_brokers_work_backlog(tmp_path: Any) -> None:
    """``Services.work_backlog`` (the ``storm.consumer.backlog`` gauge) asks a WorkBacklog broker: records
    waiting, not those handed out; None for a broker that cannot tell."""
    import dataclasses
    import uuid

    from storm.bootstrap import build_services
    from storm.config import Config

    async with build_services(Config(database_url=f"sqlite+aiosqlite:///{tmp_path}/b.db")) as services:
        read = services.work_backlog("persistence")
        assert await read() == 0.0
        sub = await services.broker.subscribe_work("persistence")
        for _ in range(3):
            await services.broker.publish("ws", str(uuid.uuid4()), b"{}")
        assert await read() == 3.0
        got = await sub.receive(2, 1.0)
        assert len(got) == 2 and await read() == 1.0
        await sub.close()
        blind = dataclasses.replace(services, broker=object())  # type: ignore[arg-type]
        assert await blind.work_backlog("persistence")() is None


async def test_the_persistence_worker_shares_the_lifecycle(tmp_path: Any) -> None:
    from consumers.persistence import PersistenceWorker
    from storm.bootstrap import build_services
    from storm.config import Config

    async with build_services(Config(database_url=f"sqlite+aiosqlite:///{tmp_path}/w.db")) as services:
        worker = PersistenceWorker(services)
        async with worker as same:
            assert same is worker
            with pytest.raises(RuntimeError, match="called twice"):
                await worker.start()
        await worker.stop()  # idempotent
        with pytest.raises(RuntimeError, match="called twice"):
            await worker.start()


async def test_a_pulsar_broker_started_and_never_stopped_warns() -> None:
    """aiokafka's habit: a ResourceWarning names what was left open (the suite turns warnings into errors)."""
    import gc

    from storm.bootstrap import pulsar_settings
    from storm.config import Config

    broker = PulsarBroker(pulsar_settings(Config(pulsar_url="pulsar://127.0.0.1:1",
                                                 pulsar_admin_url="http://127.0.0.1:1")), SystemClock())
    await broker.start()  # connects nothing yet
    client, admin = broker._client, broker.admin
    with pytest.warns(ResourceWarning, match="started and never stopped"):
        del broker
        gc.collect()
    assert client is not None
    await client.close()
    await admin.close()
