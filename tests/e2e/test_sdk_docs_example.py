"""The complete program of docs/sdk.md, extracted from the doc and run against a real `storm dev`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.dev_server import ROOT, StormProcess

pytestmark = [pytest.mark.e2e, pytest.mark.sdk]

MARKER = "<!-- example:chat_example.py -->"


def example_source() -> str:
    doc = (ROOT / "docs" / "sdk.md").read_text()
    assert MARKER in doc, "docs/sdk.md lost its example marker"
    match = re.search(r"```python\n(.*?)```", doc[doc.index(MARKER):], re.S)
    assert match, "no python block after the example marker"
    return match.group(1)


def test_the_documented_program_runs_and_chats(storm_server: StormProcess, tmp_path: Path) -> None:
    script = tmp_path / "chat_example.py"
    script.write_text(example_source())
    out = subprocess.run([sys.executable, str(script), storm_server.base], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert lines[0] == "alice shows: hello bob (queued)"
    assert re.fullmatch(r"alice's message is acknowledged at offset \d+", lines[1])
    assert any(re.fullmatch(r"bob got #\d+: Alice: hello bob", line) for line in lines)
    assert lines[-1] == "alice got: Bob: hi alice"
