"""Send receipts reach the loop in bursts (storm/adapters/pulsar_broker.py, _SendCompletions): the Pulsar
client's threads call back once per send; the loop is woken once per burst, not once per receipt."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import _pulsar
import pulsar.asyncio as pulsar_async
import pytest

from storm.adapters.pulsar_broker import _SendCompletions


class _Id:
    def __init__(self, ledger: int, entry: int) -> None:
        self._ledger, self._entry = ledger, entry

    def ledger_id(self) -> int:
        return self._ledger

    def entry_id(self) -> int:
        return self._entry


class _CountingLoop:
    """The running loop, counting call_soon_threadsafe (each is a self-pipe write and a wake-up)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.wakeups = 0

    def call_soon_threadsafe(self, callback: Any, *args: Any) -> Any:
        self.wakeups += 1
        return self.loop.call_soon_threadsafe(callback, *args)


async def test_a_burst_of_receipts_wakes_the_loop_once_and_completes_in_order() -> None:
    loop = _CountingLoop(asyncio.get_running_loop())
    completions = _SendCompletions(loop)  # type: ignore[arg-type]
    futures: list[asyncio.Future[tuple[int, int]]] = [loop.loop.create_future() for _ in range(100)]
    callbacks = [completions.callback(f) for f in futures]

    def client_thread() -> None:  # the receipts of 100 sends arrive while the loop is busy elsewhere
        for i, cb in enumerate(callbacks):
            cb(_pulsar.Result.Ok, _Id(7, i))

    t = threading.Thread(target=client_thread)
    t.start()
    t.join()
    assert await asyncio.gather(*futures) == [(7, i) for i in range(100)]
    assert loop.wakeups == 1


async def test_a_failed_send_raises_the_clients_error_and_a_cancelled_sender_is_skipped() -> None:
    loop = asyncio.get_running_loop()
    completions = _SendCompletions(loop)
    failed, cancelled, ok = loop.create_future(), loop.create_future(), loop.create_future()
    cancelled.cancel()
    completions.callback(failed)(_pulsar.Result.Timeout, _Id(-1, -1))
    completions.callback(cancelled)(_pulsar.Result.Ok, _Id(3, 4))
    completions.callback(ok)(_pulsar.Result.Ok, _Id(3, 5))
    assert await ok == (3, 5)
    with pytest.raises(pulsar_async.PulsarException):
        await failed
