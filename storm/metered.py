"""Dependency latencies, measured around the adapters (wired by the bootstrap only when metrics are on).

``storm.broker.publish_latency``, ``storm.cache.op_latency`` (by method) and ``storm.store.tx_latency`` are
timed here, outside the adapters, so no adapter knows about metrics.  Each wrapper times the port's methods
and passes every other attribute (``limit_work_to``, ``engine``, ``serialization_retries``, ...) through
to the adapter, so optional capabilities found with ``getattr`` still are.  Not used when metrics are off:
the adapters are then handed out unwrapped.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from storm.metrics import Metrics, Sample
from storm.ports.broker import ChannelPreparer, WorkBacklog, WorkScope
from storm.ports.store import CountsRetries

CACHE_METHODS = ("get", "set", "delete", "put_if_absent", "incr", "rate_take", "revoke", "is_revoked",
                 "revoked_among", "presence_add", "presence_remove", "presence_refresh", "presence_refresh_many",
                 "presence_lease", "presence_list", "presence_count", "watch_presence_expiry", "drop_workspace")


def _timed(method: Callable[..., Awaitable[Any]], sample: Sample) -> Callable[..., Awaitable[Any]]:
    async def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.monotonic()
        try:
            return await method(*args, **kwargs)
        finally:
            sample.add((time.monotonic() - start) * 1000.0)

    return timed


class _Passthrough:
    def __init__(self, target: Any) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)

    def __repr__(self) -> str:
        return f"<metered {self._target!r}>"


class MeteredBroker(_Passthrough):
    def __init__(self, broker: Any, metrics: Metrics) -> None:
        super().__init__(broker)
        self.publish = _timed(broker.publish, metrics.sample("storm.broker.publish_latency"))
        # The broker's optional capabilities (storm/ports/broker.py) as attributes of this object: isinstance
        # on a runtime_checkable protocol looks them up statically from Python 3.12 on, past __getattr__.
        for capability, method in ((ChannelPreparer, "ensure_channel"), (WorkScope, "limit_work_to"),
                                   (WorkBacklog, "work_backlog")):
            if isinstance(broker, capability):
                setattr(self, method, getattr(broker, method))


class MeteredCache(_Passthrough):
    def __init__(self, cache: Any, metrics: Metrics) -> None:
        super().__init__(cache)
        for name in CACHE_METHODS:
            op = "presence" if name.startswith("presence_") else name
            setattr(self, name, _timed(getattr(cache, name), metrics.sample("storm.cache.op_latency", op=op)))


class MeteredStore(_Passthrough):
    def __init__(self, store: Any, metrics: Metrics) -> None:
        super().__init__(store)
        self._tx = metrics.sample("storm.store.tx_latency")
        self.run = _timed(store.run, self._tx)
        if isinstance(store, CountsRetries):
            metrics.count_of("storm.store.serialization_retries", lambda: store.serialization_retries)

    @asynccontextmanager
    async def unit_of_work(self, *, read_only: bool = False) -> AsyncIterator[Any]:
        start = time.monotonic()
        try:
            async with self._target.unit_of_work(read_only=read_only) as uow:
                yield uow
        finally:
            self._tx.add((time.monotonic() - start) * 1000.0)
