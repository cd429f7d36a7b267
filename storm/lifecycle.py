"""One lifecycle for every adapter and worker (aiokafka's habit; docs/architecture.md, "Ports and adapters").

No I/O in ``__init__``; ``start()`` connects and refuses a second call; ``stop()`` is idempotent (and also
ends a start that is still connecting); ``async with`` starts and stops.  Each resource holds a
:class:`Lifecycle` and asks it, instead of copying the state strings and their transitions::

    async def start(self) -> None:
        self._life.begin_start()            # RuntimeError on a second call
        try:
            client = await connect()
        except BaseException:
            self._life.start_failed()       # STOPPED (or NEW again with retry=True)
            raise
        if not self._life.started():        # stop() ran while we were connecting
            await client.close()

    async def stop(self) -> None:
        if not self._life.begin_stop():     # never started, or already stopped: nothing to close
            return
        ...
"""

from __future__ import annotations

import enum
from typing import Protocol

from storm.errors import Unavailable


class State(enum.Enum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPED = "stopped"


class Lifecycle:
    """The state of one resource and the guards of its transitions.  ``what`` names it in errors
    ("broker", "cache", "store", …)."""

    __slots__ = ("_state", "what")

    def __init__(self, what: str) -> None:
        self.what = what
        self._state = State.NEW

    def __repr__(self) -> str:
        return f"Lifecycle({self.what!r}, {self._state.value})"

    @property
    def state(self) -> State:
        return self._state

    @property
    def running(self) -> bool:
        return self._state is State.RUNNING

    def begin_start(self) -> None:
        """NEW -> STARTING; anything else is a second ``start()``: RuntimeError."""
        if self._state is not State.NEW:
            raise RuntimeError(f"{self.what}: start() called twice (state {self._state.value}); "
                               "build a new one to start again")
        self._state = State.STARTING

    def started(self) -> bool:
        """STARTING -> RUNNING.  False when ``stop()`` ran meanwhile: the caller closes what it opened."""
        if self._state is not State.STARTING:
            return False
        self._state = State.RUNNING
        return True

    def start_failed(self, *, retry: bool = False) -> None:
        """A start that raised: STOPPED, or NEW again when the resource may be started once more."""
        self._state = State.NEW if retry and self._state is State.STARTING else State.STOPPED

    def begin_stop(self) -> bool:
        """Any state -> STOPPED.  True when there was something to stop (STARTING or RUNNING), False when
        the resource was never started or is stopped already: ``stop()`` is idempotent."""
        was, self._state = self._state, State.STOPPED
        return was in (State.STARTING, State.RUNNING)

    def check(self) -> None:
        """Raise :class:`~storm.errors.Unavailable` (retriable) unless RUNNING."""
        if self._state is not State.RUNNING:
            raise Unavailable(f"{self.what} is not running")


class Resource(Protocol):
    """What has a lifecycle: adapters, workers, :class:`storm.bootstrap.Services`."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...
