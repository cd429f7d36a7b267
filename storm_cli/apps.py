"""The Quart apps each process serves, composed from the roles.  Only this layer knows that ``storm dev``
puts the gateway, the tenants API, the persistence and webhook workers and the demo seed in one process."""

from __future__ import annotations

from typing import Any

from quart import Quart

from consumers.persistence import PersistenceWorker
from consumers.webhooks import WebhookWorker
from gateway.app import Component, create_app
from storm.bootstrap import Services
from storm_tools.seed import seed_hook
from tenants.api import register as register_tenants_api


def dev_app(services: Services, *, page: bool = True, consumers: bool = True, on_started: Any = None) -> Quart:
    """Everything in one process (``storm dev`` and the in-process tests): the gateway with the chat page,
    the tenants API under ``/v1``, the persistence and webhook workers (``consumers``) and the demo seed (when
    ``STORM_SEED_DEMO``)."""
    components: list[Component] = [PersistenceWorker(services), WebhookWorker(services)] if consumers else []
    return create_app(services, page=page, components=components, on_start=[seed_hook],
                      extensions=[register_tenants_api], on_started=on_started)


def gateway_app(services: Services) -> Quart:
    """The gateway role of ``storm serve gateway``: the WebSocket, the chat page, the demo seed when asked."""
    return create_app(services, on_start=[seed_hook])
