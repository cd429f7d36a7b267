"""The tenants API as its own process: ``create_app(services)`` (see docs/tenants-api.md).

Nothing connects at import or construction time: ``services.start()`` runs in ``before_serving`` and
``services.stop()`` (idempotent) in ``after_serving``.
"""

from __future__ import annotations

import logging
from typing import Any

from quart import Quart
from quart_schema import document_response, security_scheme

from storm.bootstrap import Services
from tenants.api import register
from tenants.schemas import Health

log = logging.getLogger("storm.tenants")


def create_app(services: Services) -> Quart:
    app = Quart("storm.tenants")
    register(app, services)

    @app.get("/healthz")
    @security_scheme([])
    @document_response(Health, 200)
    @document_response(Health, 503)
    async def healthz() -> tuple[dict[str, Any], int]:
        """Liveness and database reachability: 200 when the store answers, 503 otherwise."""
        try:
            await services.store.ping()
        except Exception as exc:  # any failure to reach the store means "not healthy"
            log.warning("healthz: store unreachable: %r", exc)
            return {"status": "unavailable"}, 503
        return {"status": "ok"}, 200

    @app.before_serving
    async def _start() -> None:
        await services.start()

    @app.after_serving
    async def _stop() -> None:
        await services.stop()

    return app
