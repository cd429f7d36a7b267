"""Process helpers for the benches: server children, client children, progress (docs/benchmarks.md).

* :class:`ServerProcess` starts a server child (``storm dev`` or the floor) with a raised file limit,
  waits until it answers, reads its CPU time and RSS with psutil (process + children), and stops it by
  PID: SIGTERM, then SIGKILL after a timeout.  Use it as a context manager so it is always stopped.
* :class:`ClientProcess` starts a client child (``python -m storm_tools.bench.<bench> --child``), hands it its
  configuration as one JSON line on stdin and exchanges JSON lines with it: the child reports
  ``{"event": ...}`` lines on stdout, the parent sends commands (``{"cmd": "go"}``) on stdin.
* :func:`child_channel` is the child's side of that exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import psutil


def raise_nofile() -> int:
    """Raise RLIMIT_NOFILE to the hard limit (in this process); return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def child_setup() -> None:
    """``preexec_fn`` of every child: raise the file limit, and on Linux ask for SIGTERM when the bench
    process dies (PR_SET_PDEATHSIG), so a killed bench leaves no server behind."""
    raise_nofile()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def source_address(index: int) -> str:
    """127.0.0.2, 127.0.0.3, ...: client children bind distinct source addresses so each has its own
    ephemeral port range (Linux routes all of 127.0.0.0/8 over loopback)."""
    if not 0 <= index < 250:
        raise ValueError("at most 250 source addresses")
    return f"127.0.0.{2 + index}"


def _schedstat_ns(pid: int) -> int | None:
    """CPU time (ns) of the live threads of ``pid`` from /proc/<pid>/task/*/schedstat, or None."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                total += int(f.read().split(None, 1)[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread just ended
    return total


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of ``pid`` and its children, at nanosecond resolution where Linux's
    schedstat is available (psutil's ``cpu_times`` counts 10 ms clock ticks, too coarse for short runs).
    Threads that ended are only in :func:`cpu_ticks_seconds`."""
    proc = psutil.Process(pid)
    total = 0.0
    for p in (proc, *proc.children(recursive=True)):
        ns = _schedstat_ns(p.pid)
        if ns is None:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
        else:
            total += ns / 1e9
    return total


def cpu_ticks_seconds(pid: int) -> float:
    """psutil's user + system CPU seconds of ``pid``, its live children and its reaped children."""
    proc = psutil.Process(pid)
    t = proc.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            ct = child.cpu_times()
            total += ct.user + ct.system
    return float(total)  # psutil is untyped


def rss_bytes(pid: int) -> int:
    proc = psutil.Process(pid)
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += child.memory_info().rss
    return int(total)


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


class Progress:
    """One status line on stderr, rewritten in place with ``\\r`` (never on stdout: that is the JSON)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream or sys.stderr
        self._width = 0
        self._last = 0.0

    def update(self, text: str, *, force: bool = True) -> None:
        now = time.monotonic()
        if not force and now - self._last < 0.2:
            return
        self._last = now
        pad = max(0, self._width - len(text))
        self._width = len(text)
        self._stream.write("\r" + text + " " * pad)
        self._stream.flush()

    def done(self, text: str | None = None) -> None:
        if text is not None:
            self.update(text)
        if self._width:
            self._stream.write("\n")
            self._stream.flush()
        self._width = 0


class ServerProcess:
    """A server child; ``with ServerProcess(...) as srv:`` guarantees it is stopped."""

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self) -> None:
        if self.proc is not None:
            raise RuntimeError("ServerProcess.start() called twice")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            preexec_fn=child_setup, start_new_session=True,
        )

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def wait_ready(self, host: str, port: int, *, http_path: str | None = None,
                         timeout: float = 60.0) -> None:
        """Poll until the port accepts (and ``GET http_path`` answers 200, when given)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}")
            with contextlib.suppress(OSError, asyncio.TimeoutError):
                if await asyncio.wait_for(_probe(host, port, http_path), 2.0):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready after {timeout}s: {self.log_tail()}")
            await asyncio.sleep(0.1)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return rss_bytes(self.pid)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait, SIGKILL.  Idempotent."""
        proc = self.proc
        if proc is None:
            return None
        try:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(5.0)
        finally:
            if self._log is not None:
                self._log.close()
                self._log = None
        return proc.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_errors(self) -> list[str]:
        """Lines of the server log that look like errors (ERROR/CRITICAL/Traceback)."""
        return [ln for ln in self.log_text().splitlines()
                if " ERROR " in ln or " CRITICAL " in ln or ln.startswith("Traceback")]


async def _probe(host: str, port: int, http_path: str | None) -> bool:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        if http_path is None:
            return True
        writer.write(f"GET {http_path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        status = await reader.readline()
        return status.split(b" ", 2)[1:2] == [b"200"]
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


class ClientProcess:
    """A client child exchanging JSON lines with the parent.  Always :meth:`stop` it (``finally``)."""

    def __init__(self, name: str, module: str, config: dict[str, Any]) -> None:
        self.name = name
        self.module = module
        self.config = config
        self.proc: asyncio.subprocess.Process | None = None
        self.last: dict[str, Any] = {}

    async def start(self) -> None:
        if self.proc is not None:
            raise RuntimeError("ClientProcess.start() called twice")
        self.proc = await asyncio.create_subprocess_exec(
            *python_module(self.module, "--child"), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, start_new_session=True, limit=1 << 26, preexec_fn=child_setup,
        )
        self.send(self.config)

    def send(self, message: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")

    async def next_event(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            code = await self.proc.wait()
            raise RuntimeError(f"client {self.name} exited with {code} without reporting")
        event: dict[str, Any] = json.loads(line)
        self.last = event
        return event

    async def wait_for(self, kind: str, timeout: float, on_progress: Any = None) -> dict[str, Any]:
        """Read events until one with ``event == kind``; others go to ``on_progress(self, event)``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"client {self.name}: no {kind!r} within {timeout}s")
            event = await self.next_event(left)
            if event.get("event") == kind:
                return event
            if event.get("event") == "error":
                raise RuntimeError(f"client {self.name}: {event.get('message')}")
            if on_progress is not None:
                on_progress(self, event)

    async def stop(self, timeout: float = 10.0) -> None:
        """Close stdin (the child exits on EOF), then SIGTERM, then SIGKILL, by PID.  Idempotent."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(Exception):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), timeout)
            return
        except TimeoutError:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 5.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()


class ChildChannel:
    """The client child's side: config in, events out (stdout), commands in (stdin)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    @staticmethod
    def emit(event: str, **fields: Any) -> None:
        sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
        sys.stdout.flush()

    async def command(self) -> dict[str, Any] | None:
        """The next command line from the parent; None on EOF (the parent is gone or wants us to stop)."""
        line = await self._reader.readline()
        if not line:
            return None
        msg: dict[str, Any] = json.loads(line)
        return msg


async def child_channel() -> tuple[ChildChannel, dict[str, Any]]:
    """Connect stdin as a stream; return the channel and the configuration (the first line)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    chan = ChildChannel(reader)
    config = await chan.command()
    if config is None:
        raise SystemExit(0)
    return chan, config


async def open_all(count: int, open_one: Any, *, concurrency: int, timeout: float, chan: ChildChannel,
                   name: Any = None) -> tuple[list[Any], list[str]]:
    """Open ``count`` connections in a client child, ``concurrency`` at a time: ``await open_one(i)`` gives a
    protocol whose ``ready`` must resolve within ``timeout``.  A failure is recorded (``name(i): error``)
    and never fatal; the parent gets ``progress`` every 0.5 s.  (The connected ones, the failures.)"""
    gate = asyncio.Semaphore(concurrency)
    conns: list[Any] = []
    failures: list[str] = []

    async def one(i: int) -> None:
        async with gate:
            try:
                proto = await open_one(i)
                await asyncio.wait_for(proto.ready, timeout)
            except Exception as exc:  # counted and reported, never fatal
                failures.append(f"{name(i)}: {exc!r}" if name else repr(exc))
                return
            conns.append(proto)

    async def report() -> None:
        while True:
            await asyncio.sleep(0.5)
            chan.emit("progress", connected=len(conns), failed=len(failures))

    reporter = asyncio.get_running_loop().create_task(report())
    try:
        await asyncio.gather(*(one(i) for i in range(count)))
    finally:
        reporter.cancel()
    return conns, failures
