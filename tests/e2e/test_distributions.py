"""The two distributions install and work apart (issue 9, docs/architecture.md "Layers", docs/sdk.md "Install").

* ``pip install .`` with no extra gives a ``storm`` command that starts (``--help``, ``serve --help``,
  ``storm dev`` serving its page), and a command whose optional dependency is missing says in one line what to
  install instead of a traceback.
* ``pip install ./sdk`` alone gives the SDK without any server dependency, and the complete program of
  docs/sdk.md runs with it against the ``storm dev`` of the plain install.

Each venv is made from scratch (pip's cache makes the second run fast); nothing is imported from the
checkout: the commands run from a temporary directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import venv
from pathlib import Path

import pytest

from tests.e2e.test_sdk_docs_example import example_source
from tests.support.dev_server import ROOT, free_port, healthy

pytestmark = [pytest.mark.e2e, pytest.mark.sdk]

PIP_TIMEOUT_S = 600
SERVER_ONLY = ("quart", "sqlalchemy", "alembic", "psutil", "pulsar", "hypercorn", "storm", "gateway")


def _clean_env() -> dict[str, str]:
    """The environment without anything that would make a child import from the checkout or the dev venv."""
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    return {k: v for k, v in os.environ.items()
            if k not in drop and not k.startswith(("COVERAGE_", "COV_CORE_", "STORM_"))}


def _make_venv(where: Path, *requirements: str) -> Path:
    venv.EnvBuilder(with_pip=True, clear=True).create(where)
    python = where / "bin" / "python"
    out = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *requirements],
                         cwd=where, env=_clean_env(), capture_output=True, text=True, timeout=PIP_TIMEOUT_S,
                         check=False)
    assert out.returncode == 0, f"pip install {' '.join(requirements)} failed:\n{out.stderr[-4000:]}"
    return python


@pytest.fixture(scope="module")
def server_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_venv(tmp_path_factory.mktemp("server-venv"), str(ROOT))


@pytest.fixture(scope="module")
def sdk_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _make_venv(tmp_path_factory.mktemp("sdk-venv"), str(ROOT / "sdk"))


def _run(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python), *args], cwd=cwd, env=_clean_env(), capture_output=True, text=True,
                          timeout=120, check=False)


def _storm(python: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(python.parent / "storm"), *args], cwd=cwd, env=_clean_env(), capture_output=True,
                          text=True, timeout=120, check=False)


def test_a_plain_install_gives_a_working_storm_command(server_python: Path, tmp_path: Path) -> None:
    help_ = _storm(server_python, "--help", cwd=tmp_path)
    assert help_.returncode == 0, help_.stderr
    for command in ("dev", "serve", "cluster", "bench", "fuzz", "verify", "migrate", "token"):
        assert command in help_.stdout
    serve = _storm(server_python, "serve", "--help", cwd=tmp_path)
    assert serve.returncode == 0, serve.stderr
    assert "gateway" in serve.stdout
    # the dev extra is not installed: hypothesis is missing, and the answer is one line naming the extra
    assert _run(server_python, "-c", "import hypothesis", cwd=tmp_path).returncode != 0
    fuzz = _storm(server_python, "fuzz", "--cases", "1", cwd=tmp_path)
    assert fuzz.returncode == 2
    assert fuzz.stderr.strip() == ("storm fuzz: needs hypothesis, which is not installed; "
                                   "install it with: pip install 'storm-chat[dev]'")
    assert "Traceback" not in fuzz.stderr


def test_the_sdk_installs_without_any_server_dependency(sdk_python: Path, tmp_path: Path) -> None:
    assert _run(sdk_python, "-c", "import storm_sdk, websockets, msgspec", cwd=tmp_path).returncode == 0
    for module in SERVER_ONLY:
        probe = _run(sdk_python, "-c", f"import {module}", cwd=tmp_path)
        assert probe.returncode != 0, f"{module} is importable in a venv that installed only the SDK"
        assert "ModuleNotFoundError" in probe.stderr


def test_the_docs_example_runs_with_only_the_sdk_against_a_plain_storm_dev(
        server_python: Path, sdk_python: Path, tmp_path: Path) -> None:
    port = free_port()
    log = (tmp_path / "storm-dev.log").open("wb")
    proc = subprocess.Popen([str(server_python.parent / "storm"), "dev", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=tmp_path, env=_clean_env(), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not healthy(f"http://127.0.0.1:{port}/healthz"):
            assert proc.poll() is None, (tmp_path / "storm-dev.log").read_text(errors="replace")[-4000:]
            assert time.monotonic() < deadline, "the plain install's storm dev did not become healthy"
            time.sleep(0.2)
        script = tmp_path / "chat_example.py"
        script.write_text(example_source())
        out = _run(sdk_python, str(script), f"http://127.0.0.1:{port}", cwd=tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        assert out.stdout.splitlines()[-1] == "alice got: Bob: hi alice"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
    assert proc.returncode == 0, (tmp_path / "storm-dev.log").read_text(errors="replace")[-4000:]

