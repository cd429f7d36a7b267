"""Serve a Quart app with Hypercorn on uvloop, stopping cleanly on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import sys
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
    # Hypercorn's error log goes through the root logger's handlers (and their SecretRedactor,
    # storm/redact.py) rather than a stderr handler of its own that nothing filters.
    error_log = logging.getLogger("hypercorn.error")
    error_log.setLevel(logging.WARNING)
    hc.errorlog = error_log
    hc.loglevel = "WARNING"
    hc.backlog = 4096
    # frames over STORM_MAX_FRAME_BYTES get a `too_large` error from the session; frames over twice that
    # are refused by the server library with close 1009 before they are buffered whole
    hc.websocket_max_message_size = 2 * cfg.max_frame_bytes
    hc.websocket_ping_interval = None  # the protocol has its own ping and idle timeout
    hc.graceful_timeout = cfg.drain_timeout_s
    # Slow handshakes (slowloris): Hypercorn's idle timer runs from the connection's first byte until a
    # whole request is parsed, so a request trickled in byte by byte is dropped after this.  Its headers
    # are bounded by h11_max_incomplete_size (16 KiB by default).
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
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    gateway = app.extensions.get("gateway")

    @app.before_serving  # registered last, so it runs after the app's own start-up hooks
    async def _tune_gc() -> None:
        tune_gc()

    async def shutdown_trigger() -> None:
        await stop.wait()
        if gateway is not None:  # tell clients 1012 before Hypercorn starts closing sockets itself
            await gateway.drain()

    await serve(app, hypercorn_config(cfg), shutdown_trigger=shutdown_trigger)  # type: ignore[arg-type]


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
