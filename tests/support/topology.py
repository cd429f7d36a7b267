"""The STORM topology on the real services, as separate processes (docs/delivery.md, "Fault tests").

The fixture ``topology`` of tests/e2e/conftest.py (one per test session) enters :func:`running_topology`,
which creates a database of its own on the services' PostgreSQL, migrates it, then starts on free loopback
ports, each with ``python -m storm_cli.main serve <role>`` (storm_cli/cluster.py):

* ``gateway-a`` and ``gateway-b``: two WebSocket gateways;
* ``api``: the tenants REST API;
* ``consumers``: the persistence worker;

all on ``STORM_BROKER=pulsar`` and ``STORM_CACHE=hazelcast``.  Tests kill and restart them by PID through
``topology.procs[name]``; every test starts by bringing back whatever an earlier test left dead.  Teardown
stops them by PID (SIGTERM, SIGKILL past the drain budget) and drops the database.  Each process logs to a
file; the tail of every log is attached to a failing test's report ("storm process logs").

Each test provisions its own workspace through the tenants API (``topology.provision``), so runs and tests
never share a channel.  Needs PostgreSQL, Pulsar and Hazelcast: skipped locally when one is missing, failed
under ``CI=true`` (tests/conftest.py).  The fault tests are tests/e2e/test_faults.py and
tests/e2e/test_topology.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from db.admin import create_database, drop_database
from storm_tools.verify import Provisioned, StormProcess, free_ports

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 120.0
DRAIN_TIMEOUT_S = 5.0
LOG_TAIL_LINES = 80
POOL_USERS = ("alice", "bob", "listener0", "listener1")
POOL_SIZE = 7  # workspaces provisioned before the consumers start: one per test that checks the database

ACTIVE: list[Topology] = []  # the running topology, for the log section of a failing test's report


class Topology:
    """Two gateways, the tenants API and the consumers, each its own process on the real services."""

    def __init__(self, env: dict[str, str], database_url: str, admin_url: str, log_dir: Path) -> None:
        self.env = env
        self.database_url = database_url
        self.pulsar_admin_url = admin_url
        gw_a, gw_b, api, consumers = free_ports(4)
        self.pool: list[Provisioned] = []
        self.created: list[Provisioned] = []  # deleted at teardown: Pulsar tenants outlive the database
        self.procs: dict[str, StormProcess] = {
            "gateway-a": StormProcess("gateway-a", "gateway", gw_a, {**env, "STORM_GATEWAY_ID": "rs-gw-a"}, log_dir),
            "gateway-b": StormProcess("gateway-b", "gateway", gw_b, {**env, "STORM_GATEWAY_ID": "rs-gw-b"}, log_dir),
            "api": StormProcess("api", "api", api, env, log_dir),
            "consumers": StormProcess("consumers", "consumers", consumers, env, log_dir),
        }

    @property
    def secret(self) -> str:
        from storm.config import Config

        return Config.from_env(self.env).dev_secret

    def start(self) -> None:
        """Gateways and API first; then the workspace pool; then the consumers, which find the pool's
        workspaces at start instead of at their next tenant discovery (every 30 s: see docs/delivery.md)."""
        others = [p for name, p in self.procs.items() if name != "consumers"]
        for proc in others:
            proc.start()
        for proc in others:
            proc.wait_ready(READY_TIMEOUT_S)
        self.pool = asyncio.run(self._fill_pool(POOL_SIZE))
        self.procs["consumers"].start()
        self.procs["consumers"].wait_ready(READY_TIMEOUT_S)

    async def _fill_pool(self, size: int) -> list[Provisioned]:
        return [await self._create(POOL_USERS) for _ in range(size)]

    def revive(self) -> None:
        """Restart whatever an earlier test killed or stopped."""
        dead = [p for p in self.procs.values() if not p.alive]
        for proc in dead:
            proc.start()
        for proc in dead:
            proc.wait_ready(READY_TIMEOUT_S)

    async def delete_workspaces(self) -> None:
        """Delete every workspace this topology created, through the API (Pulsar tenant, rows, cache)."""
        for ws in self.created:
            with contextlib.suppress(Exception):
                await self.api("DELETE", f"/v1/workspaces/{ws.slug}", token=self.token(ws.users[0], ws.slug))

    def stop(self) -> None:
        for name in ("gateway-a", "gateway-b", "api", "consumers"):  # drain order, consumers last
            self.procs[name].stop(DRAIN_TIMEOUT_S + 10)

    def logs(self) -> str:
        return "\n".join(p.log_tail(LOG_TAIL_LINES) for p in self.procs.values())

    # -- provisioning through the tenants API ----------------------------------------------------------
    def token(self, user: str, workspace: str) -> str:
        from storm.adapters.dev_identity import DevIdentity

        return DevIdentity(self.secret, ttl_s=3600).issue(f"dev|{user}", workspace, user.title())

    async def api(self, method: str, path: str, *, token: str, body: Any = None) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.procs["api"].http_url, timeout=30) as http:
            return await http.request(method, path, json=body, headers={"Authorization": f"Bearer {token}"})

    async def provision(self, users: tuple[str, ...] = ("alice", "bob")) -> Provisioned:
        """A workspace of its own for the calling test, with ``users`` as members (the first owns it) and one
        public channel: taken from the pool made before the consumers started, else created now (then the
        consumers persist its messages only after their next tenant discovery)."""
        if set(users) <= set(POOL_USERS) and users[0] == POOL_USERS[0] and self.pool:
            return self.pool.pop()
        return await self._create(users)

    async def _create(self, users: tuple[str, ...], *, plan: str = "pro") -> Provisioned:
        slug = f"rs-{uuid.uuid4().hex[:12]}"
        owner = users[0]
        star = self.token(owner, "*")
        created = await self.api("POST", "/v1/workspaces", token=star, body={"slug": slug, "name": slug, "plan": plan})
        assert created.status_code == 201, created.text
        owner_token = self.token(owner, slug)
        for user in users[1:]:
            added = await self.api("POST", f"/v1/workspaces/{slug}/members", token=owner_token,
                                   body={"subject": f"dev|{user}", "name": user.title()})
            assert added.status_code == 201, added.text
        channel = await self.api("POST", f"/v1/workspaces/{slug}/channels", token=owner_token,
                                 body={"name": "general"})
        assert channel.status_code == 201, channel.text
        provisioned = Provisioned(slug=slug, channel=channel.json()["id"], users=users, secret=self.secret)
        self.created.append(provisioned)
        return provisioned


def pulsar_tenant_status(admin_url: str, tenant: str) -> int:
    try:
        with urllib.request.urlopen(f"{admin_url}/admin/v2/tenants/{tenant}", timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def running_topology(pg_url: str, pulsar_urls: tuple[str, str], hazelcast_members: str) -> Iterator[Topology]:
    """A migrated database of its own, the four processes started; everything stopped and dropped after."""
    service_url, admin_url = pulsar_urls
    database_url = asyncio.run(create_database(pg_url, f"storm_rs_{uuid.uuid4().hex[:10]}"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "STORM_MODE": "embedded", "STORM_IDENTITY": "dev",
           "STORM_BROKER": "pulsar", "STORM_CACHE": "hazelcast", "STORM_DATABASE_URL": database_url,
           "STORM_PULSAR_URL": service_url, "STORM_PULSAR_ADMIN_URL": admin_url,
           "STORM_HAZELCAST_MEMBERS": hazelcast_members, "STORM_SEED_DEMO": "false",
           "STORM_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S),
           # its consumers take only its own workspaces (rs-*): other deployments share this Pulsar
           "STORM_CONSUMER_WORKSPACE_PREFIX": "rs-",
           # the fault tests publish 2 x 1000 messages in seconds: lift the per-connection/user limits
           "STORM_PUBLISH_RATE": "400", "STORM_PUBLISH_BURST": "400",
           "STORM_USER_PUBLISH_RATE": "1000", "STORM_USER_PUBLISH_BURST": "1000"}
    # logs outside pytest's basetemp, which other pytest runs on this machine rotate away
    topo = Topology(env, database_url, admin_url, Path(tempfile.mkdtemp(prefix="storm-realservices-")))
    ACTIVE.append(topo)
    try:
        from db.migrate import upgrade_async

        asyncio.run(upgrade_async(database_url))
        topo.start()
        yield topo
    finally:
        with contextlib.suppress(Exception):
            topo.revive()
            asyncio.run(topo.delete_workspaces())
        topo.stop()
        ACTIVE.remove(topo)
        with contextlib.suppress(Exception):
            asyncio.run(drop_database(database_url))
