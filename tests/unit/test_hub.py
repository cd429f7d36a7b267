"""The hub's per-channel serialisation of the broker's add/remove (gateway/hub.py), without sockets or services:
it uses only asyncio.Lock's public API, a join racing a leave ends subscribed, and nothing is kept per channel
once no coroutine holds or waits for it (a failed add included)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway import hub as hub_module
from gateway.hub import Hub, KeyedLocks
from storm.ports.clock import ManualClock

ORIGINAL_LOCK = asyncio.Lock


class PublicLock:
    """asyncio.Lock's public API and nothing else (what a later Python may leave of its internals)."""

    def __init__(self) -> None:
        self._inner = ORIGINAL_LOCK()

    async def acquire(self) -> bool:
        return await self._inner.acquire()

    def release(self) -> None:
        self._inner.release()

    def locked(self) -> bool:
        return self._inner.locked()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class Subscription:
    """The broadcast subscription: records add/remove; ``remove`` can be held open to race a join against it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.channels: set[tuple[str, str]] = set()
        self.hold_remove: asyncio.Event | None = None
        self.fail_add = False

    async def add(self, workspace: str, channel: str) -> None:
        await asyncio.sleep(0)
        if self.fail_add:
            raise ConnectionError("broker unavailable")
        self.calls.append(("add", workspace, channel))
        self.channels.add((workspace, channel))

    async def remove(self, workspace: str, channel: str) -> None:
        if self.hold_remove is not None:
            await self.hold_remove.wait()
        self.calls.append(("remove", workspace, channel))
        self.channels.discard((workspace, channel))

    async def close(self) -> None:
        pass


class Broker:
    def __init__(self) -> None:
        self.sub = Subscription()

    async def subscribe_broadcast(self, handler: Any) -> Subscription:
        return self.sub


@pytest.fixture
async def hub() -> Any:
    broker = Broker()
    hub = Hub(broker, ManualClock(), sweep_interval_s=60)  # type: ignore[arg-type]
    await hub.start()
    yield hub, broker.sub
    await hub.stop()


async def test_a_join_racing_the_last_leave_ends_subscribed_using_only_the_locks_public_api(hub, monkeypatch):
    monkeypatch.setattr(hub_module.asyncio, "Lock", PublicLock)
    hub, sub = hub
    a, b = object(), object()
    await hub.join(a, "ws", "c")
    sub.hold_remove = asyncio.Event()
    leaving = asyncio.get_running_loop().create_task(hub.leave(a, "ws", "c"))  # the last one: removes at the broker
    await asyncio.sleep(0.01)
    joining = asyncio.get_running_loop().create_task(hub.join(b, "ws", "c"))  # must wait for the remove
    await asyncio.sleep(0.01)
    assert not joining.done()
    sub.hold_remove.set()
    await asyncio.gather(leaving, joining)
    assert sub.calls == [("add", "ws", "c"), ("remove", "ws", "c"), ("add", "ws", "c")]
    assert sub.channels == {("ws", "c")} and hub.wants("ws", "c")
    assert len(hub._locks) == 0


async def test_a_failed_broker_add_leaves_no_lock_behind(hub):
    hub, sub = hub
    sub.fail_add = True
    for channel in ("c1", "c2", "c3"):
        with pytest.raises(ConnectionError):
            await hub.join(object(), "ws", channel)
    assert len(hub._locks) == 0 and not hub.wants("ws", "c1")
    sub.fail_add = False
    await hub.join(object(), "ws", "c1")  # and the channel can be joined once the broker is back
    assert hub.wants("ws", "c1")


async def test_keyed_locks_serialise_one_key_and_forget_it_after_the_last_user():
    locks, order = KeyedLocks(), []

    async def user(name: str, key: tuple[str, str]) -> None:
        async with locks.hold(key):
            order.append(f"{name}+")
            await asyncio.sleep(0.001)
            order.append(f"{name}-")

    await asyncio.gather(user("a", ("w", "x")), user("b", ("w", "x")), user("c", ("w", "y")))
    assert order.index("a-") < order.index("b+")  # same key: one at a time
    assert order.index("c+") < order.index("a-")  # another key: not held up
    assert len(locks) == 0
