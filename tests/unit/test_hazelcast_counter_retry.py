"""A PN counter whose replica restarted (storm/adapters/hazelcast_cache.py ``_add_and_get``): the call that
failed changed nothing and is retried once, on a new session and, when the proxy still targeted the old
member, on a target chosen again."""

from __future__ import annotations

from typing import Any

import pytest

from storm.adapters import hazelcast_cache as hz
from storm.adapters.hazelcast_cache import HazelcastCache


class FlakyCounter:
    """Fails its first ``add_and_get`` with ``error``, then counts."""

    name = "quota:connections"

    def __init__(self, error: Exception) -> None:
        self.error: Exception | None = error
        self.value = 0
        self.resets = 0
        self._current_target_replica_address: Any = "old member"
        self.targets: list[Any] = []

    def reset(self) -> None:
        self.resets += 1

    async def add_and_get(self, delta: int) -> int:
        self.targets.append(self._current_target_replica_address)
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        self.value += delta
        return self.value


@pytest.mark.parametrize("error", [hz.ConsistencyLostError("lost"), hz.TargetNotMemberError("not a member")])
async def test_a_counter_that_lost_its_replica_is_retried_once_on_a_new_session(error: Exception,
                                                                                monkeypatch: Any) -> None:
    monkeypatch.setattr(hz, "TARGET_RETRY_S", 0.0)
    counter = FlakyCounter(error)
    assert await HazelcastCache._add_and_get(counter, 1) == 1  # counted once, not lost, not twice
    assert counter.resets == 1
    if isinstance(error, hz.TargetNotMemberError):  # the old member is no longer the target
        assert counter.targets == ["old member", None]
    else:
        assert counter.targets == ["old member", "old member"]


async def test_a_second_failure_is_the_callers_to_see() -> None:
    counter = FlakyCounter(hz.ConsistencyLostError("lost"))
    real = counter.add_and_get

    async def always(delta: int) -> int:
        counter.error = hz.ConsistencyLostError("still lost")
        return await real(delta)

    counter.add_and_get = always  # type: ignore[method-assign]
    with pytest.raises(hz.ConsistencyLostError):
        await HazelcastCache._add_and_get(counter, 1)
    assert counter.value == 0
