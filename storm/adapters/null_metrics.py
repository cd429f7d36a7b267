"""The metrics sink when no DogStatsD agent is configured: it drops everything (storm/ports/metrics.py)."""

from __future__ import annotations

from collections.abc import Sequence


class NullMetrics:
    enabled = False

    def count(self, name: str, value: int, tags: Sequence[str]) -> None:
        pass

    def gauge(self, name: str, value: float, tags: Sequence[str]) -> None:
        pass

    def distribution(self, name: str, value: float, tags: Sequence[str]) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
