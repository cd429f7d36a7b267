"""Opening things once, however many callers ask at the same time (the adapters' shared idiom).

* :func:`single_flight`: one ``open()`` in flight per key; callers that ask meanwhile wait for its outcome
  (value or exception) instead of opening a second producer, log or reader.
* :class:`Shared`: a resource per key shared by its users, ref-counted: the first :meth:`Shared.acquire`
  opens it (through :func:`single_flight`), the last :meth:`Shared.release` closes it.  The Pulsar
  subscriptions' per-workspace readers (ephemeral feed, relay broadcast topic) are this.

No I/O of its own: the open and close functions are the caller's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


async def single_flight(pending: dict[K, asyncio.Future[V]], key: K, open_: Callable[[], Awaitable[V]]) -> V:
    """``await open_()``, unless an open of ``key`` is already in flight in ``pending``: then its outcome."""
    fut = pending.get(key)
    if fut is not None:
        return await asyncio.shield(fut)
    fut = asyncio.get_running_loop().create_future()
    pending[key] = fut
    try:
        value = await open_()
        fut.set_result(value)
        return value
    except BaseException as exc:
        fut.set_exception(exc)
        fut.exception()  # retrieved: the waiters re-raise it themselves
        raise
    finally:
        del pending[key]


class Shared(Generic[K, V]):
    """A resource per key, opened by its first user and closed by its last (module docstring)."""

    __slots__ = ("_close", "_open", "_opening", "_refs", "_values")

    def __init__(self, open_: Callable[[K], Awaitable[V]], close: Callable[[V], Awaitable[None]]) -> None:
        self._open = open_
        self._close = close
        self._values: dict[K, V] = {}
        self._refs: dict[K, int] = {}  # users, including those whose acquire is still opening it
        self._opening: dict[K, asyncio.Future[V]] = {}

    def __len__(self) -> int:
        """Resources open now."""
        return len(self._values)

    def users(self, key: K) -> int:
        return self._refs.get(key, 0)

    async def acquire(self, key: K) -> None:
        """One more user of ``key``'s resource; opens it when none is open.  On failure nothing is counted."""
        self._refs[key] = self._refs.get(key, 0) + 1
        try:
            if key not in self._values:
                value = await single_flight(self._opening, key, lambda: self._open(key))
                self._values.setdefault(key, value)
        except BaseException:
            await self.release(key)
            raise

    async def release(self, key: K) -> None:
        """One user of ``key`` fewer; the last one closes the resource."""
        left = self._refs.get(key, 0) - 1
        if left > 0:
            self._refs[key] = left
            return
        self._refs.pop(key, None)
        value = self._values.pop(key, None)
        if value is not None:
            await self._close(value)
