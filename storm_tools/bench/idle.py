"""`storm bench idle`: memory the gateway holds per authenticated idle connection.

Start the gateway (``storm dev`` child), wait until its RSS is stable, open N connections from client
children (at most ``--per-process`` each, every child on its own source address 127.0.0.2, 127.0.0.3, ...;
each connection authenticates, waits for ``hello`` and then stays silent), wait until the RSS is stable
again, and report ``(rss_after - rss_before) / connections``.  RSS is psutil's, summed over the server
process and its children.  "Stable" means: sampled every 0.5 s, the last ``--settle-s`` seconds of samples
vary by at most 256 KiB (or ``--settle-timeout`` passed; ``settled`` says which).

The client side runs as ``python -m storm_tools.bench.idle --child`` (see procs.ClientProcess).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from storm_tools.bench.fanout import HOST, log_dir, split, storm_env, storm_tokens
from storm_tools.bench.procs import (
    ClientProcess,
    Progress,
    ServerProcess,
    child_channel,
    free_port,
    open_all,
    python_module,
    raise_nofile,
    source_address,
)
from storm_tools.bench.wsclient import WSClient, connect

SETTLE_TOLERANCE = 256 * 1024


# ---- client child -------------------------------------------------------------------------------------
class IdleClient(WSClient):
    lost = 0  # class-wide: connections the server closed after hello

    def __init__(self, host: str, port: int, auth: bytes) -> None:
        super().__init__(host, port)
        self._auth = auth
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_open(self) -> None:
        self.send_text(self._auth)

    def on_message(self, payload: bytes, binary: bool) -> None:
        if self.ready.done():
            return
        if b'"type":"hello"' in payload:
            self.ready.set_result(None)
        elif b'"type":"error"' in payload:
            self.ready.set_exception(RuntimeError(payload[:300].decode(errors="replace")))

    def on_close(self, code: int | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"closed before hello (code {code})"))
        elif self.ready.exception() is None:
            IdleClient.lost += 1


async def child_main() -> None:
    chan, cfg = await child_channel()
    raise_nofile()
    host, port, tokens, source = cfg["host"], cfg["port"], cfg["tokens"], cfg["source"]

    async def open_one(i: int) -> IdleClient:
        auth = b'{"op":"auth","token":"%s"}' % tokens[i % len(tokens)].encode()
        return await connect(lambda: IdleClient(host, port, auth), host, port, source=source,
                             timeout=cfg["connect_timeout"])

    conns, failures = await open_all(cfg["connections"], open_one, concurrency=cfg["connect_concurrency"],
                                     timeout=cfg["connect_timeout"], chan=chan)
    chan.emit("ready", connected=len(conns), failed=len(failures), failure=failures[0] if failures else "")
    while (cmd := await chan.command()) is not None:
        if cmd.get("cmd") == "status":
            chan.emit("status", open=sum(1 for c in conns if not c.closed.done()), lost=IdleClient.lost)
        elif cmd.get("cmd") == "stop":
            break
    for c in conns:
        if c.transport is not None:
            c.transport.abort()


# ---- parent -------------------------------------------------------------------------------------------
async def settle(server: ServerProcess, seconds: float, timeout: float) -> tuple[int, bool, float]:
    """Sample RSS every 0.5 s until the last ``seconds`` of samples are within SETTLE_TOLERANCE."""
    window = max(2, int(seconds / 0.5) + 1)
    samples: list[int] = []
    start = time.monotonic()
    while True:
        samples.append(server.rss_bytes())
        recent = samples[-window:]
        if len(recent) == window and max(recent) - min(recent) <= SETTLE_TOLERANCE:
            return recent[-1], True, time.monotonic() - start
        if time.monotonic() - start > timeout:
            return recent[-1], False, time.monotonic() - start
        await asyncio.sleep(0.5)


async def _gateway_connections(port: int) -> int | None:
    """The gateway's own count of open sockets, from /healthz."""
    import json

    with contextlib.suppress(OSError, ValueError, TimeoutError):
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5)
        writer.write(f"GET /healthz HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode())
        raw = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        body = json.loads(raw.split(b"\r\n\r\n", 1)[1])
        return int(body["connections"])
    return None


async def run(args: Any) -> dict[str, Any]:
    progress = Progress()
    n = args.connections
    procs = math.ceil(n / args.per_process)
    port = free_port(HOST)
    with tempfile.TemporaryDirectory(prefix="storm-bench-") as tmpdir:
        tmp = Path(tmpdir)
        env = storm_env(tmp, messages=0)
        tokens = storm_tokens(env)
        argv = python_module("storm_cli", "dev", "--host", HOST, "--port", str(port))
        server = ServerProcess("storm", argv, env=env, log_path=log_dir(args, tmp) / "storm-idle.log")
        clients: list[ClientProcess] = []
        status: dict[str, dict[str, Any]] = {}

        def on_progress(client: ClientProcess, event: dict[str, Any]) -> None:
            status[client.name] = event
            done = sum(s.get("connected", 0) for s in status.values())
            failed = sum(s.get("failed", 0) for s in status.values())
            progress.update(f"[idle] connected {done}/{n}" + (f" ({failed} failed)" if failed else ""),
                            force=False)

        try:
            progress.update("[idle] starting server")
            server.start()
            await server.wait_ready(HOST, port, http_path="/healthz", timeout=args.start_timeout)
            progress.update("[idle] waiting for a stable RSS")
            rss_before, settled_before, _ = await settle(server, args.settle_s, args.settle_timeout)
            for i, size in enumerate(split(n, procs)):
                cfg = {"host": HOST, "port": port, "tokens": tokens, "connections": size,
                       "source": source_address(i), "connect_timeout": 60.0, "connect_concurrency": 64}
                client = ClientProcess(f"idle-{i}", "storm_tools.bench.idle", cfg)
                clients.append(client)
                await client.start()
            t0 = time.monotonic()
            ready = await asyncio.gather(*(c.wait_for("ready", 120 + n / 20, on_progress) for c in clients))
            connect_s = time.monotonic() - t0
            connected = sum(r["connected"] for r in ready)
            progress.update(f"[idle] {connected}/{n} connected; waiting for a stable RSS")
            rss_after, settled_after, settle_s = await settle(server, args.settle_s, args.settle_timeout)
            for c in clients:
                c.send({"cmd": "status"})
            statuses = await asyncio.gather(*(c.wait_for("status", 30) for c in clients))
            gateway_conns = await _gateway_connections(port)
            for c in clients:
                c.send({"cmd": "stop"})
        finally:
            for c in clients:
                await c.stop()
            server.stop()
        errors = server.log_errors()
    still_open = sum(s["open"] for s in statuses)
    per_conn = (rss_after - rss_before) / connected if connected else float("nan")
    progress.done(f"[idle] {connected} connections, {per_conn:.0f} bytes/connection")
    if errors:
        print(f"[idle] server log errors ({len(errors)}), first ones:", file=sys.stderr)
        for line in errors[:5]:
            print("   ", line[:300], file=sys.stderr)
    out: dict[str, Any] = {
        "connections": connected,
        "rss_bytes_per_connection": round(per_conn) if connected else None,
        "rss_before": rss_before,
        "rss_after": rss_after,
        "requested": n,
        "still_open": still_open,
        "gateway_connections": gateway_conns,
        "connect_s": round(connect_s, 2),
        "settle_s": round(settle_s, 2),
        "settled": settled_before and settled_after,
        "client_procs": procs,
    }
    if connected < n:
        out["missing"] = n - connected
        out["connect_failure"] = next((r["failure"] for r in ready if r["failure"]), "")
    if still_open < connected:
        out["lost"] = connected - still_open
    if errors:
        out["server_log_errors"] = len(errors)
    return out


def failed(result: dict[str, Any]) -> bool:
    return bool(result.get("missing") or result.get("lost"))


def main() -> None:
    if sys.argv[1:] != ["--child"]:
        sys.exit("usage: python -m storm_tools.bench.idle --child   (run `storm bench idle` instead)")
    import uvloop

    uvloop.run(child_main())


if __name__ == "__main__":
    main()
