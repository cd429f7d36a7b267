"""A PulsarBroker of the tests: its own gateway id, its work subscriptions limited to one workspace."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from storm.adapters.pulsar_broker import PulsarBroker
from storm.bootstrap import pulsar_settings
from storm.config import Config
from storm.domain import PLANS
from storm.ports.clock import SystemClock


def workspace_broker(pulsar_urls: tuple[str, str], workspace: str, **options: Any) -> PulsarBroker:
    """Not started; ``options`` go to PulsarBroker (``read_timeout_s``, …)."""
    service_url, admin_url = pulsar_urls
    cfg = Config(broker="pulsar", pulsar_url=service_url, pulsar_admin_url=admin_url,
                 gateway_id=f"test-{uuid.uuid4().hex[:8]}")
    return PulsarBroker(pulsar_settings(cfg), SystemClock(), workspace_filter=lambda t: t == workspace, **options)


@asynccontextmanager
async def started_workspace(pulsar_urls: tuple[str, str], **options: Any) -> AsyncIterator[tuple[PulsarBroker, str]]:
    """A started broker and a fresh workspace on it (the free plan), deleted and stopped afterwards."""
    workspace = f"t-{uuid.uuid4().hex[:12]}"
    broker = workspace_broker(pulsar_urls, workspace, **options)
    await broker.start()
    try:
        await broker.ensure_workspace(workspace, PLANS["free"])
        yield broker, workspace
    finally:
        try:
            await broker.delete_workspace(workspace)
        finally:
            await broker.stop()
