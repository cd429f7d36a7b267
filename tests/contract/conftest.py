"""Shared by the contract suites: a unique tenant and channel per test, and the broker's ack timeout.

Each suite parametrizes its own adapter fixture over every adapter of its port (``broker`` in
test_broker_contract.py, ``cache`` in test_cache_contract.py; ``store`` lives in tests/conftest.py): real
adapters join with the infrastructure (they need the live services and fail, not skip, under CI=true)."""

from __future__ import annotations

import uuid

import pytest

ACK_TIMEOUT_S = 0.5


@pytest.fixture
def workspace() -> str:
    """A unique tenant per test (centrifuge's unique key prefix habit)."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def channel() -> str:
    return str(uuid.uuid4())
