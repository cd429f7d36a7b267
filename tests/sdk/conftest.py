"""Fixtures of the SDK tests: a real `storm dev` process that a test may kill and restart."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.sdk.server import StormProcess


@pytest.fixture(scope="module")
def storm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StormProcess]:
    """One `storm dev` per test module (SQLite in a temp dir).  Tests that kill it start it again."""
    server = StormProcess(tmp_path_factory.mktemp("storm-sdk"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
