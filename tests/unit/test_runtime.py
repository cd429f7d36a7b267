"""The gateway component's stop (gateway/runtime.py), without sockets: it cancels its background tasks and waits
for them, but a caller that is itself cancelled while stop waits stays cancelled."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.runtime import Gateway, cancel_and_wait
from storm.bootstrap import build_services
from storm.config import Config


async def _stubborn(released: asyncio.Event) -> None:
    """A background task that takes its time to end once cancelled (a close still flushing, say)."""
    while not released.is_set():
        try:
            await released.wait()
        except asyncio.CancelledError:
            continue


async def test_stop_does_not_swallow_its_callers_cancellation(tmp_path: Any) -> None:
    cfg = Config.from_env({}, database_url=f"sqlite+aiosqlite:///{tmp_path}/r.db", drain_timeout_s=0.05)
    gateway = Gateway(build_services(cfg))  # never started: stop still drains, stops the hub, ends its tasks
    released = asyncio.Event()
    gateway.spawn(_stubborn(released))
    stopping = asyncio.get_running_loop().create_task(gateway.stop())
    await asyncio.sleep(0.2)  # past the drain: stop now waits for the cancelled task
    assert not stopping.done()
    stopping.cancel()  # whoever called stop gives up (a shutdown timeout, Ctrl-C twice)
    await asyncio.sleep(0.01)
    released.set()
    await asyncio.wait([stopping])
    assert stopping.cancelled()


async def test_cancel_and_wait_ends_the_tasks_whatever_they_raise() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    async def sleeps() -> None:
        await asyncio.sleep(60)

    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(fails()), loop.create_task(sleeps())]
    await asyncio.sleep(0)
    await cancel_and_wait(tasks)
    assert all(t.done() for t in tasks) and tasks[1].cancelled()
    assert isinstance(tasks[0].exception(), RuntimeError)
