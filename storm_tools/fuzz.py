"""Property-based fuzzing of what clients control: the frame decoder, the session core and the tenants REST
payloads (docs/security.md, "Input validation and fuzzing").

The same strategies and checks serve two callers: ``tests/service/test_fuzz.py`` (a bounded number of
examples in every ``make test``) and ``storm fuzz --cases N`` (longer campaigns on demand, JSON summary on
stdout, progress on stderr).  Properties:

* **decoder**: :func:`storm.protocol.commands.decode_command` returns a command or raises
  ``ProtocolViolation`` with a known error code, for any bytes or text;
* **session**: an authenticated :class:`~storm.protocol.session.Session` fed any sequence of frames never
  raises, never answers ``internal``, emits only well-formed events, and closes only with 4004 (garbage) or
  not at all;
* **rest**: the tenants API answers any body on any write endpoint with a deliberate status (never 5xx)
  and a well-formed error body, and its catch-all never logs an unexpected exception.

Hypothesis is a development dependency (``pip install -e '.[dev]'``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from storm.protocol import commands as c
from storm.protocol.codes import CloseCode, ErrorCode

KNOWN_CODES = frozenset(x.value for x in ErrorCode)

# ---- strategies -----------------------------------------------------------------------------------------
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30)
json_values = st.recursive(
    scalars, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=10), kids, max_size=4),
    max_leaves=10,
)
ints = st.integers() | st.sampled_from([0, 1, -1, 2**53, 2**53 + 1, 2**62, 2**63, 2**64])
channel_like = st.uuids().map(str) | st.text(max_size=40) | st.sampled_from(["", "_control", "_workspace"])


def frames(channels: list[str] | None = None, messages: list[str] | None = None) -> st.SearchStrategy[Any]:
    """Client frames: plausible commands (known channels, in-range values), mangled commands (wrong types,
    stray fields, unknown ops), arbitrary JSON and arbitrary text/bytes."""
    chans = st.sampled_from(channels) | channel_like if channels else channel_like
    mids = st.sampled_from(messages) | st.uuids().map(str) if messages else st.uuids().map(str)
    fields: dict[str, st.SearchStrategy[Any]] = {
        "id": ints, "channel": chans, "since": ints, "before": ints, "offset": ints, "limit": ints,
        "cmid": st.text(max_size=70), "text": st.text(max_size=60) | st.integers(3990, 4010).map(lambda n: "x" * n),
        "thread": mids, "message_id": mids, "emoji": st.text(max_size=70), "remove": st.booleans(),
        "token": st.text(max_size=50),
    }
    plausible = st.builds(
        lambda op, extra: {"op": op, **extra},
        st.sampled_from([op for op in c.OPS if op != "auth"] + ["auth"]),
        st.fixed_dictionaries({}, optional=fields),
    )
    mangled = st.builds(
        lambda op, extra, stray: {"op": op, **extra, **stray},
        st.sampled_from(c.OPS) | st.text(max_size=12) | json_values,
        st.fixed_dictionaries({}, optional={k: v | json_values for k, v in fields.items()}),
        st.dictionaries(st.text(max_size=8), json_values, max_size=2),
    )
    encoded = st.one_of(plausible, plausible, mangled, json_values).map(json.dumps)
    raw = st.text(max_size=200) | st.binary(max_size=200) | st.sampled_from(
        ["", "{", "[" * 5000, '{"op":"ping"}' * 2, '{"op":"ping","id":1.0}', "\ud800", '{"op":"\\ud800"}'])
    return st.one_of(encoded, encoded, encoded, raw)


# ---- checks -------------------------------------------------------------------------------------------
def check_decoder(frame: str | bytes, max_bytes: int = 65536) -> None:
    try:
        c.decode_command(frame, max_bytes)
    except c.ProtocolViolation as exc:
        assert exc.code.value in KNOWN_CODES, exc.code


class _Collect:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None

    def send(self, data: bytes) -> bool:
        for part in data.split(b"\n"):
            event = json.loads(part)
            assert isinstance(event, dict) and isinstance(event.get("type"), str), event
            self.events.append(event)
        return True

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)


class SessionTarget:
    """Embedded services with the demo workspace, driven from synchronous hypothesis tests."""

    def __init__(self, runner: asyncio.Runner, directory: Path) -> None:
        self.runner = runner
        self.directory = directory

    def start(self) -> None:
        from gateway.hub import Hub
        from storm.adapters.dev_identity import DevIdentity
        from storm.bootstrap import build_services
        from storm.config import Config
        from storm_tools.seed import DEMO_CHANNELS, DEMO_WORKSPACE, channel_id, seed_demo

        cfg = Config.from_env({}, database_url=f"sqlite+aiosqlite:///{self.directory}/fuzz.db",
                              publish_rate=1e6, publish_burst=10**6, user_publish_rate=1e6,
                              user_publish_burst=10**6, workspace_publish_rate=1e6, idle_timeout_s=1e6)
        self.services = build_services(cfg)
        self.hub = Hub(self.services.broker, self.services.clock, sweep_interval_s=3600)

        async def up() -> None:
            await self.services.start()
            ws = await seed_demo(self.services.store)
            await self.services.broker.ensure_workspace(ws.slug, ws.quotas)
            await self.hub.start()

        self.runner.run(up())
        self.channels = [channel_id(DEMO_WORKSPACE, n) for n in DEMO_CHANNELS]
        self.token = DevIdentity(cfg.dev_secret).issue("dev|alice", DEMO_WORKSPACE, "Alice", ttl_s=10**6)

    def stop(self) -> None:
        async def down() -> None:
            await self.hub.stop()
            await self.services.stop()

        self.runner.run(down())

    def check(self, sequence: list[Any]) -> None:
        events, closed = self.converse(sequence)
        codes = [e["code"] for e in events if e["type"] == "error"]
        assert ErrorCode.INTERNAL.value not in codes, events
        assert set(codes) <= KNOWN_CODES, codes
        assert closed is None or closed[0] == CloseCode.PROTOCOL_VIOLATION, closed

    def converse(self, sequence: list[Any]) -> tuple[list[dict[str, Any]], tuple[int, str] | None]:
        """Authenticate a fresh session, feed it ``sequence``; return its events and close."""
        from storm.protocol.session import Session, SessionContext, State

        s = self.services
        ctx = SessionContext(config=s.config, clock=s.clock, broker=s.broker, cache=s.cache, store=s.store,
                             identity=s.identity, directory=s.directory, hub=self.hub)
        transport = _Collect()
        session = Session(ctx, transport)

        async def go() -> None:
            await session.receive(json.dumps({"op": "auth", "token": self.token}))
            assert session.state is State.OPEN, transport.events
            for frame in sequence:
                await session.receive(frame)
            await session.closed()

        self.runner.run(go())
        return transport.events, transport.closed


REST_ENDPOINTS = [
    ("POST", "/v1/workspaces"), ("POST", "/v1/workspaces/{slug}/members"),
    ("PATCH", "/v1/workspaces/{slug}/members/{member}"), ("POST", "/v1/workspaces/{slug}/channels"),
    ("POST", "/v1/workspaces/{slug}/channels/{channel}/members"),
    ("POST", "/v1/workspaces/{slug}/channels/{channel}/archive"),
    ("POST", "/v1/workspaces/{slug}/members/{member}/ban"),
]
DELIBERATE = {200, 201, 204, 308, 400, 401, 403, 404, 405, 409, 413, 415}


class RestTarget:
    """The tenants API in-process (Quart test client) with one workspace, a member and a channel."""

    def __init__(self, runner: asyncio.Runner, directory: Path) -> None:
        self.runner = runner
        self.directory = directory
        self.errors: list[logging.LogRecord] = []

    def start(self) -> None:
        from storm.adapters.dev_identity import DevIdentity
        from storm.bootstrap import build_services
        from storm.config import Config
        from tenants.app import create_app

        cfg = Config.from_env({}, database_url=f"sqlite+aiosqlite:///{self.directory}/rest.db")
        self.app = create_app(build_services(cfg)).test_app()
        self.runner.run(self.app.startup())
        self.client = self.app.test_client()
        self.token = DevIdentity(cfg.dev_secret).issue("dev|owner", "*", "Owner", ttl_s=10**6)
        errors = self.errors

        class _Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                errors.append(record)

        self.handler = _Handler(logging.ERROR)
        logging.getLogger("storm.tenants").addHandler(self.handler)
        self.slug = "fuzz"
        _, _ = self.send("POST", "/v1/workspaces", {"slug": self.slug, "name": "Fuzz", "plan": "enterprise"})
        _, member = self.send("POST", f"/v1/workspaces/{self.slug}/members", {"subject": "dev|m"})
        _, channel = self.send("POST", f"/v1/workspaces/{self.slug}/channels", {"name": "p", "kind": "private"})
        self.ids = {"slug": self.slug, "member": member["user_id"], "channel": channel["id"]}

    def stop(self) -> None:
        logging.getLogger("storm.tenants").removeHandler(self.handler)
        self.runner.run(self.app.shutdown())

    def send(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        async def go() -> tuple[int, Any]:
            r = await self.client.open(path, method=method, json=body,
                                       headers={"Authorization": f"Bearer {self.token}"})
            return r.status_code, (await r.get_json() if r.mimetype == "application/json" else None)

        return self.runner.run(go())

    def check(self, endpoint: int, body: Any) -> None:
        method, template = REST_ENDPOINTS[endpoint % len(REST_ENDPOINTS)]
        status, reply = self.send(method, template.format(**self.ids), body)
        assert status in DELIBERATE, (status, reply)
        assert not self.errors, [r.getMessage() for r in self.errors]
        if status >= 400:
            assert isinstance(reply, dict) and set(reply) == {"error"}, reply
            assert isinstance(reply["error"].get("code"), str), reply


rest_bodies = st.one_of(
    json_values,
    st.dictionaries(st.sampled_from(["slug", "name", "plan", "subject", "role", "kind", "members", "user_id"]),
                    json_values | st.text(max_size=50) | st.uuids().map(str), max_size=5),
)


# ---- campaigns ------------------------------------------------------------------------------------------
def _settings(cases: int) -> settings:
    return settings(max_examples=cases, deadline=None, database=None, suppress_health_check=list(HealthCheck),
                    phases=[Phase.generate, Phase.shrink])


def run_campaign(target: str, cases: int, *, seed: int | None = None,
                 progress: Callable[[str, int], None] | None = None) -> dict[str, Any]:
    """Run ``cases`` examples against one target; returns ``{target, cases, failures, seconds}``."""
    done = 0
    started = time.monotonic()

    def tick() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(target, done)

    with tempfile.TemporaryDirectory(prefix="storm-fuzz-") as tmp, asyncio.Runner() as runner:
        if target == "decoder":
            @given(frame=frames())
            def prop(frame: Any) -> None:
                tick()
                check_decoder(frame)
        elif target == "session":
            session_target = SessionTarget(runner, Path(tmp))
            session_target.start()
            sequence = st.lists(frames(session_target.channels), min_size=1, max_size=6)

            @given(seq=sequence)
            def prop(seq: list[Any]) -> None:
                tick()
                session_target.check(seq)
        elif target == "rest":
            rest_target = RestTarget(runner, Path(tmp))
            rest_target.start()

            @given(endpoint=st.integers(0, len(REST_ENDPOINTS) - 1), body=rest_bodies)
            def prop(endpoint: int, body: Any) -> None:
                tick()
                rest_target.check(endpoint, body)
        else:
            raise ValueError(f"unknown fuzz target {target!r}")
        if seed is not None:
            prop = hypothesis_seed(seed)(prop)
        failures: list[str] = []
        try:
            _settings(cases)(prop)()
        except Exception as exc:  # an unhandled exception is exactly what fuzzing looks for
            for sub in exc.exceptions if isinstance(exc, ExceptionGroup) else [exc]:
                notes = " | ".join(getattr(sub, "__notes__", []))
                failures.append(f"{type(sub).__name__}: {str(sub)[:1000]} ({notes[:1000]})")
        finally:
            if target == "session":
                session_target.stop()
            elif target == "rest":
                rest_target.stop()
    return {"target": target, "cases": done, "failures": failures,
            "seconds": round(time.monotonic() - started, 2)}


def main(args: argparse.Namespace) -> dict[str, Any]:
    targets = ["decoder", "session", "rest"] if args.target == "all" else [args.target]
    storm_logger = logging.getLogger("storm")
    level = storm_logger.level
    storm_logger.setLevel(logging.CRITICAL)  # expected refusals are not news here
    every = max(1, args.cases // 10)

    def progress(target: str, n: int) -> None:
        if n % every == 0:
            print(f"storm fuzz: {target} {n}/{args.cases}", file=sys.stderr, flush=True)

    try:
        results = [run_campaign(t, args.cases, seed=args.seed, progress=progress) for t in targets]
    finally:
        storm_logger.setLevel(level)
    return {
        "cases": sum(r["cases"] for r in results), "failed": any(r["failures"] for r in results),
        "targets": {r["target"]: {k: v for k, v in r.items() if k != "target"} for r in results},
        "seed": args.seed, "run": uuid.uuid4().hex[:8],
    }
