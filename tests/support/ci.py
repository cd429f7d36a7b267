"""The one rule for a test whose prerequisite is missing (a service that does not answer, a browser, an
optional package): skipped on a developer's machine, **failed under ``CI=true``**, because CI must never pass
by skipping.  Every such test goes through :func:`unavailable` (docs/operations.md)."""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NoReturn

import pytest


def under_ci() -> bool:
    return os.environ.get("CI") == "true"


def unavailable(reason: str, *, needed_by: str) -> NoReturn:
    """Skip the calling test (or fixture) for ``reason``; under ``CI=true``, fail it with the same reason.
    ``needed_by`` names what the prerequisite is for, as the failure says: "PostgreSQL", "browser"."""
    if under_ci():
        pytest.fail(f"{reason} (CI=true: {needed_by} tests may not be skipped)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)  # also from a module's top level, as importorskip could


def require_module(name: str, *, needed_by: str) -> ModuleType:
    """``importlib.import_module(name)``, or :func:`unavailable` when it is not installed: what
    ``pytest.importorskip`` does, minus the silent skip under CI."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        unavailable(f"{name} is not installed ({exc})", needed_by=needed_by)
