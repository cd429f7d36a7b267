"""A `storm dev` child process that tests can SIGKILL and start again on the same port and SQLite file.

Used by the SDK tests and by tests/e2e/test_browser_resilience.py.  Same pattern as the
``storm_dev_server`` fixture of tests/e2e/conftest.py, plus :meth:`StormProcess.kill` and ``start`` again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthy(url: str) -> bool:
    """True when ``url`` answers 200 within 2 s."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


class StormProcess:
    """`python -m storm_cli.main dev` on a fixed port and database; ``base`` is its http URL."""

    def __init__(self, tmp: Path, env: dict[str, str] | None = None) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.ws = f"ws://127.0.0.1:{self.port}/ws"
        self.env = {**os.environ, "STORM_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/storm.db",
                    "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        stdout, stderr = self.tmp / f"stdout.{self.starts}.log", self.tmp / f"stderr.{self.starts}.log"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "storm_cli", "dev", "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=ROOT, env=self.env, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not healthy(f"{self.base}/healthz"):
            if self.proc.poll() is not None:
                pytest.fail(f"storm dev exited with {self.proc.returncode}:\n"
                            f"{stderr.read_text(errors='replace')[-4000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"storm dev not healthy in {STARTUP_TIMEOUT_S:.0f} s:\n"
                            f"{stderr.read_text(errors='replace')[-4000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no drain, no close frames, no flush of anything in memory."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=STOP_TIMEOUT_S)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
