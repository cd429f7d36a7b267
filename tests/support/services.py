"""Started services on the demo workspace, as the session and gateway tests use them."""

from __future__ import annotations

from storm.bootstrap import Services, build_services
from storm.config import Config
from storm.ports.clock import Clock
from storm_tools.seed import seed_demo


async def demo_services(cfg: Config, clock: Clock | None = None) -> Services:
    """Build and start the services, seed the demo workspace and create its broker tenant; the caller
    stops them."""
    svc = build_services(cfg, clock=clock)
    await svc.start()
    ws = await seed_demo(svc.store)
    await svc.broker.ensure_workspace(ws.slug, ws.quotas)
    return svc
