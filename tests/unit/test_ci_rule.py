"""The CI no-skip rule lives in one helper (tests/support/ci.py): a missing prerequisite skips a test on a
developer's machine and fails it under ``CI=true``.  And no test goes around it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.ci import require_module, unavailable

TESTS = Path(__file__).resolve().parents[1]


def test_a_missing_prerequisite_skips_locally(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="nothing answers"):
        unavailable("nothing answers", needed_by="PostgreSQL")


def test_a_missing_prerequisite_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"nothing answers \(CI=true: PostgreSQL tests may not be skipped"):
        unavailable("nothing answers", needed_by="PostgreSQL")


def test_a_missing_module_is_a_missing_prerequisite(monkeypatch: pytest.MonkeyPatch) -> None:
    assert require_module("json", needed_by="x").dumps([]) == "[]"
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no_such_module_storm"):
        require_module("no_such_module_storm", needed_by="browser")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true: browser tests"):
        require_module("no_such_module_storm", needed_by="browser")


def test_no_test_skips_around_the_rule() -> None:
    """``pytest.skip``, ``importorskip`` and skip marks pass silently under CI: only the helper may skip."""
    bypass = re.compile(r"pytest\.(skip\(|importorskip\(|mark\.skip)")
    found = [f"{path.relative_to(TESTS)}:{n}" for path in sorted(TESTS.rglob("*.py")) if path.name != "ci.py"
             for n, line in enumerate(path.read_text().splitlines(), 1)
             if bypass.search(line) and path != Path(__file__).resolve()]
    assert not found, f"skips that bypass tests/support/ci.py: {found}"
