"""Every test a document cites exists: docs point at the tests that guard their claims, and a renamed or
deleted test must not leave a doc pointing at nothing.

A citation is `` `tests/<path>.py::<name>` `` or `` `<path under tests>.py::<name>` ``; `` `::<name>` ``
continues the file cited last in the same document.  Parametrized ids (``[sqlite]``) are ignored.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]
CITATION = re.compile(r"`((?:tests/)?[a-z0-9_/]+\.py)?::([A-Za-z0-9_]+)(?:\[[^\]`]*\])?`")


def _citations(doc: Path) -> list[tuple[str, str]]:
    found, current = [], None
    for m in CITATION.finditer(doc.read_text()):
        if m.group(1):
            current = m.group(1).removeprefix("tests/")
        if current is None:
            raise AssertionError(f"{doc.name}: {m.group(0)} continues no earlier file")
        found.append((current, m.group(2)))
    return found


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_cited_test_exists(doc: Path) -> None:
    missing = []
    for path, name in _citations(doc):
        source = ROOT / "tests" / path
        if not source.is_file() or not re.search(rf"def {re.escape(name)}\(", source.read_text()):
            missing.append(f"{path}::{name}")
    assert not missing, f"{doc.relative_to(ROOT)} cites tests that do not exist: {missing}"


def test_the_threat_model_and_the_delivery_guarantees_cite_their_tests() -> None:
    assert len(_citations(ROOT / "docs" / "security.md")) >= 20
    assert len(_citations(ROOT / "docs" / "delivery.md")) >= 10
