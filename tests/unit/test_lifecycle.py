"""storm/lifecycle.py: the one lifecycle of adapters and workers (aiokafka's rules)."""

from __future__ import annotations

import pytest

from storm.errors import Unavailable
from storm.lifecycle import Lifecycle, State


def test_start_once_then_stop_any_number_of_times() -> None:
    life = Lifecycle("broker")
    with pytest.raises(Unavailable, match="broker is not running"):
        life.check()
    life.begin_start()
    assert life.state is State.STARTING and not life.running
    assert life.started() is True
    life.check()
    with pytest.raises(RuntimeError, match=r"broker: start\(\) called twice \(state running\)"):
        life.begin_start()
    assert life.begin_stop() is True  # something to close
    assert life.begin_stop() is False  # idempotent: nothing left
    assert life.state is State.STOPPED
    with pytest.raises(RuntimeError, match="called twice"):
        life.begin_start()


def test_stop_before_start_leaves_nothing_to_close_and_no_second_life() -> None:
    life = Lifecycle("cache")
    assert life.begin_stop() is False
    with pytest.raises(RuntimeError):
        life.begin_start()


def test_a_stop_during_start_wins() -> None:
    """stop() while start() awaits its connection: start must close what it opened, not become running."""
    life = Lifecycle("cache")
    life.begin_start()
    assert life.begin_stop() is True
    assert life.started() is False
    assert life.state is State.STOPPED


@pytest.mark.parametrize(("retry", "after"), [(False, State.STOPPED), (True, State.NEW)])
def test_a_failed_start(retry: bool, after: State) -> None:
    life = Lifecycle("store")
    life.begin_start()
    life.start_failed(retry=retry)
    assert life.state is after
    if retry:
        life.begin_start()  # the store may be started again (the database was not up yet)
        assert life.started()


def test_a_failed_start_after_a_stop_stays_stopped() -> None:
    life = Lifecycle("store")
    life.begin_start()
    life.begin_stop()
    life.start_failed(retry=True)
    assert life.state is State.STOPPED
