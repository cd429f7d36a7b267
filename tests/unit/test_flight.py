"""storm/adapters/flight.py: one open per key however many ask at once, shared resources closed by their last user."""

from __future__ import annotations

import asyncio

import pytest

from storm.adapters.flight import Shared, single_flight


async def test_callers_that_ask_while_an_open_is_in_flight_share_its_outcome() -> None:
    opened: list[str] = []
    gate = asyncio.Event()

    async def open_() -> str:
        opened.append("x")
        await gate.wait()
        return f"reader-{len(opened)}"

    pending: dict[str, asyncio.Future[str]] = {}
    tasks = [asyncio.create_task(single_flight(pending, "ws", open_)) for _ in range(5)]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(*tasks) == ["reader-1"] * 5
    assert opened == ["x"] and pending == {}
    assert await single_flight(pending, "ws", open_) == "reader-2"  # done: the next caller opens again


async def test_a_failed_open_fails_every_waiter_and_the_next_caller_tries_again() -> None:
    calls = 0

    async def open_() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        if calls == 1:
            raise ConnectionError("broker down")
        return "ok"

    pending: dict[str, asyncio.Future[str]] = {}
    results = await asyncio.gather(*(single_flight(pending, "k", open_) for _ in range(3)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results) and calls == 1
    assert await single_flight(pending, "k", open_) == "ok"


async def test_a_shared_resource_is_opened_by_its_first_user_and_closed_by_its_last() -> None:
    events: list[str] = []

    async def open_(key: str) -> str:
        await asyncio.sleep(0.01)
        events.append(f"open {key}")
        return f"reader {key}"

    async def close(value: str) -> None:
        events.append(f"close {value}")

    shared: Shared[str, str] = Shared(open_, close)
    await asyncio.gather(*(shared.acquire("a") for _ in range(3)))
    await shared.acquire("b")
    assert events == ["open a", "open b"] and len(shared) == 2 and shared.users("a") == 3
    await shared.release("a")
    await shared.release("a")
    assert events == ["open a", "open b"] and len(shared) == 2
    await shared.release("a")
    assert events[-1] == "close reader a" and len(shared) == 1 and shared.users("a") == 0


async def test_a_user_whose_open_failed_is_not_counted() -> None:
    async def open_(key: str) -> str:
        raise ConnectionError("no broker")

    closed: list[str] = []

    async def close(value: str) -> None:
        closed.append(value)

    shared: Shared[str, str] = Shared(open_, close)
    with pytest.raises(ConnectionError):
        await shared.acquire("a")
    assert shared.users("a") == 0 and len(shared) == 0 and closed == []
