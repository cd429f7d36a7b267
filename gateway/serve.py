"""Serve a Quart app with Hypercorn on uvloop, stopping cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Coroutine
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig
from quart import Quart

from storm.config import Config


def hypercorn_config(cfg: Config) -> HypercornConfig:
    hc = HypercornConfig()
    hc.bind = [f"{cfg.host}:{cfg.port}"]
    hc.accesslog = None
    if cfg.access_log:  # STORM_ACCESS_LOG: through the root logger's handlers, like the error log below
        access_log = logging.getLogger("hypercorn.access")
        access_log.setLevel(logging.INFO)
        hc.accesslog = access_log
    # Hypercorn's error log goes through the root logger's handlers (and their SecretRedactor,
    # storm/redact.py) rather than a stderr handler of its own that nothing filters.
    error_log = logging.getLogger("hypercorn.error")
    error_log.setLevel(logging.WARNING)
    hc.errorlog = error_log
    hc.loglevel = "WARNING"
    hc.backlog = 4096
    # WebSockets never reach Hypercorn: the front door serves /ws (ADR 0007); Quart has no WebSocket route
    hc.graceful_timeout = cfg.drain_timeout_s
    # Slow handshakes (slowloris): the front door (gateway/frontdoor.py) cuts a connection whose request
    # head is not complete STORM_HANDSHAKE_TIMEOUT_S after its first byte; where Hypercorn reads requests
    # itself (piped connections after their first request, apps without a gateway), its idle timer does
    # the same.  Heads are bounded to 16 KiB either way.
    hc.keep_alive_timeout = cfg.handshake_timeout_s
    return hc


GC_THRESHOLDS = (5_000, 20, 100)  # CPython default (700, 10, 10): see tune_gc


def tune_gc() -> None:
    """Fewer, cheaper collections for a long-running server (docs/benchmarks.md, "GC").

    Called once start-up is over: what exists then (modules, app, adapters, seeded caches) lives as long as
    the process, so ``gc.freeze()`` moves it out of every later collection, and full collections then scan
    only what was allocated since (connections, sessions).  Young collections run less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def serve_app(app: Quart, cfg: Config, *, stop: asyncio.Event | None = None) -> None:
    """Serve ``app`` until ``stop`` is set (or SIGINT/SIGTERM).  A gateway app gets the front door
    (gateway/frontdoor.py, ADR 0007) on the public port, with Hypercorn behind it on a Unix socket in a
    private directory; other apps are served by Hypercorn on the port directly."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    gateway = app.extensions.get("gateway")
    hc = hypercorn_config(cfg)
    door: Any = None
    private_dir = None
    if gateway is not None:
        from gateway.frontdoor import FrontDoor

        private_dir = tempfile.mkdtemp(prefix="storm-http-", dir=_short_temp_dir())  # 0700: only this user
        upstream = os.path.join(private_dir, "http.sock")
        hc.bind = [f"unix:{upstream}"]
        door = FrontDoor(gateway, app.extensions["guard"], upstream)

        @app.before_serving  # after the app's own start-up hooks: the hub runs before a socket is taken
        async def _open_front_door() -> None:
            try:
                await door.start(backlog=hc.backlog)
            except OSError as exc:
                raise SystemExit(f"storm: cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}") from exc

    @app.before_serving  # registered last, so it runs after the app's own start-up hooks
    async def _tune_gc() -> None:
        tune_gc()

    async def shutdown_trigger() -> None:
        await stop.wait()
        if gateway is not None:  # tell clients 1012 before Hypercorn starts closing sockets itself
            await gateway.drain()
        if door is not None:
            door.stop_listening()

    try:
        await serve(app, hc, shutdown_trigger=shutdown_trigger)
    finally:
        if door is not None:
            await door.close()
        if private_dir is not None:
            shutil.rmtree(private_dir, ignore_errors=True)


UNIX_PATH_MAX = 100  # sun_path is 108 bytes on Linux (104 on macOS); leave room for "/storm-http-xxxxxxxx/http.sock"


def _short_temp_dir() -> str:
    """The temp dir for Hypercorn's Unix socket, or /tmp when its path would be too long for AF_UNIX
    (a deep TMPDIR, as CI runners set, would make the bind fail)."""
    base = tempfile.gettempdir()
    return base if len(base) + 32 <= UNIX_PATH_MAX or not os.path.isdir("/tmp") else "/tmp"  # noqa: S108


def run(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``main`` on uvloop where available."""
    try:
        import uvloop

        factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        factory = None
    if sys.platform == "win32":  # pragma: no cover
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())
