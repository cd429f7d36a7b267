"""The gateway's publish path alone: CPU per publish on the real Hazelcast, in one process (issue 12).

    python -m storm_tools.bench.publish_path [--workspaces 50] [--duration 20]

``storm bench e2e`` measures every role at once on a 2-core machine that also runs Pulsar, PostgreSQL and
the clients, so its gateway figure moves with everything else.  This bench isolates what a publish costs a
gateway's event loop: sessions (storm/protocol/session.py) fed publish frames directly, no socket, with the
directory, the shared rate buckets and the cmid claims on the Hazelcast that the environment names
(``STORM_HAZELCAST_*``, else ``scripts/services.sh env``'s), and the memory broker and store (their cost is
small and the same before and after).  ``--workspaces`` throwaway demo workspaces of 4 users each; every user
publishes every 2 s (as the e2e bench's users do at ``--connections 2000 --rate 1000``) for ``--duration``
seconds.  Result: ``cpu_us_per_publish`` = the process's CPU time over the publishing window / acks
(it includes this driver's frame building, a few µs).  The workspaces' cache entries are dropped after.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
import uuid
from typing import Any

from gateway.hub import Hub
from storm.adapters.dev_identity import DevIdentity
from storm.bootstrap import build_services
from storm.config import Config
from storm.protocol.session import Session, SessionContext, State
from storm_tools.seed import DEMO_USERS, channel_id, seed_demo

USER_PERIOD_S = 2.0


class _Transport:
    """A socket's end of a session: frames kept, events decoded only when counted."""

    def __init__(self) -> None:
        self.frames: list[bytes] = []
        self.closed: tuple[int, str] | None = None

    def send(self, data: bytes) -> bool:
        self.frames.append(data)
        return True

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def take(self) -> list[dict[str, Any]]:
        events = [json.loads(p) for f in self.frames for p in f.split(b"\n")]
        self.frames = []
        return events


def _env() -> dict[str, str]:
    from storm_tools.verify import _service_env  # the environment's STORM_*, else scripts/services.sh env's

    return {k: v for k, v in _service_env().items() if k.startswith("STORM_")}


async def run(workspaces: int, duration: float) -> dict[str, Any]:
    cfg = Config.from_env(_env(), store="memory", broker="memory", cache="hazelcast")
    svc = build_services(cfg)
    await svc.start()
    hub = Hub(svc.broker, svc.clock, sweep_interval_s=3600)
    await hub.start()
    ctx = SessionContext(config=svc.config, clock=svc.clock, broker=svc.broker, cache=svc.cache, store=svc.store,
                         identity=svc.identity, directory=svc.directory, hub=hub)
    identity = DevIdentity(svc.config.dev_secret)
    run_id = uuid.uuid4().hex[:8]
    slugs = [f"pp{run_id}{i}" for i in range(workspaces)]
    sessions: list[tuple[Session, _Transport, str]] = []
    try:
        for slug in slugs:
            ws = await seed_demo(svc.store, workspace=slug)
            await svc.broker.ensure_workspace(ws.slug, ws.quotas)
            for user in DEMO_USERS:
                t = _Transport()
                s = Session(ctx, t)
                token = identity.issue(f"dev|{user}", slug, user.title())
                await s.receive(json.dumps({"op": "auth", "token": token}))
                if s.state is not State.OPEN:
                    raise RuntimeError(f"auth failed: {t.take()}")
                sessions.append((s, t, channel_id(slug, "general")))
        for n, (s, t, ch) in enumerate(sessions):  # warm-up: directory entries, leases
            await s.receive(json.dumps({"op": "publish", "id": 0, "channel": ch, "cmid": f"w{n}", "text": "w"}))
            t.take()
        loop = asyncio.get_running_loop()
        interval = USER_PERIOD_S / len(sessions)
        tasks: list[asyncio.Task[None]] = []
        k = 0
        cpu0, t0 = time.process_time(), time.monotonic()
        while time.monotonic() - t0 < duration:
            due = int((time.monotonic() - t0) / interval)
            while k <= due:
                s, _, ch = sessions[k % len(sessions)]
                frame = json.dumps({"op": "publish", "id": k + 1, "channel": ch, "cmid": f"{run_id}-{k}", "text": "x"})
                tasks.append(loop.create_task(s.receive(frame)))
                k += 1
            await asyncio.sleep(interval)
        await asyncio.gather(*tasks)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
        events = [e for _, t, _ in sessions for e in t.take()]
        acks = sum(e["type"] == "ack" for e in events)
        errors = sum(e["type"] == "error" for e in events)
        return {"publishes": k, "acks": acks, "errors": errors, "users": len(sessions), "cpu_s": round(cpu, 3),
                "wall_s": round(wall, 1), "cpu_us_per_publish": round(cpu / max(acks, 1) * 1e6, 1),
                "load_avg_1m": round(os.getloadavg()[0], 2)}
    finally:
        for s, _, _ in sessions:
            with contextlib.suppress(Exception):
                await s.closed()
        for slug in slugs:
            with contextlib.suppress(Exception):
                await svc.cache.drop_workspace(slug)
        await hub.stop()
        await svc.stop()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m storm_tools.bench.publish_path", description=__doc__.split("\n")[0])
    p.add_argument("--workspaces", type=int, default=50, help="throwaway workspaces of 4 users (default 50)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of publishing (default 20)")
    p.add_argument("--json", action="store_true", help="(the result is always one JSON line)")
    args = p.parse_args()
    print(json.dumps(asyncio.run(run(args.workspaces, args.duration))))


if __name__ == "__main__":
    main()
