"""Adapters under contract.  Each fixture is parametrized over every adapter of the port; real adapters
join the list with the infrastructure (they need the live services and fail, not skip, under CI=true)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from storm.adapters.memory_broker import MemoryBroker
from storm.adapters.memory_cache import MemoryCache
from storm.ports.clock import SystemClock

ACK_TIMEOUT_S = 0.5


@pytest.fixture
def workspace() -> str:
    """A unique tenant per test (centrifuge's unique key prefix habit)."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def channel() -> str:
    return str(uuid.uuid4())


@pytest.fixture(params=["memory"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[MemoryBroker]:
    b = MemoryBroker(SystemClock(), retention_messages=50, ack_timeout_s=ACK_TIMEOUT_S)
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


@pytest.fixture(params=["memory"])
async def cache(request: pytest.FixtureRequest) -> AsyncIterator[MemoryCache]:
    c = MemoryCache(SystemClock())
    await c.start()
    try:
        yield c
    finally:
        await c.stop()
