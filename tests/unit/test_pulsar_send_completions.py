"""Pulsar client threads reach the loop in bursts (storm/adapters/pulsar_broker.py, _LoopHandoff): the
client's threads call back once per send receipt and once per received message; the loop is woken once per
burst, not once per call, and runs the calls in arrival order."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import _pulsar
import pulsar.asyncio as pulsar_async
import pytest

from storm.adapters.pulsar_broker import _LoopHandoff, _SendCompletions


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
    completions = _SendCompletions(_LoopHandoff(loop))  # type: ignore[arg-type]
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
    completions = _SendCompletions(_LoopHandoff(loop))
    failed, cancelled, ok = loop.create_future(), loop.create_future(), loop.create_future()
    cancelled.cancel()
    completions.callback(failed)(_pulsar.Result.Timeout, _Id(-1, -1))
    completions.callback(cancelled)(_pulsar.Result.Ok, _Id(3, 4))
    completions.callback(ok)(_pulsar.Result.Ok, _Id(3, 5))
    assert await ok == (3, 5)
    with pytest.raises(pulsar_async.PulsarException):
        await failed


async def test_messages_and_receipts_of_two_threads_share_one_wakeup_and_keep_each_threads_order() -> None:
    """Two listener threads (two readers) and a receipt: one wake-up; each reader's messages in order."""
    loop = _CountingLoop(asyncio.get_running_loop())
    handoff = _LoopHandoff(loop)  # type: ignore[arg-type]
    seen: list[tuple[str, int]] = []
    receipt: asyncio.Future[tuple[int, int]] = loop.loop.create_future()

    def reader(name: str) -> None:
        for i in range(200):
            handoff.put(seen.append, (name, i))

    threads = [threading.Thread(target=reader, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    _SendCompletions(handoff).callback(receipt)(_pulsar.Result.Ok, _Id(1, 2))
    for t in threads:
        t.join()
    assert await receipt == (1, 2)
    assert loop.wakeups == 1
    for name in ("a", "b"):
        assert [i for n, i in seen if n == name] == list(range(200))


async def test_a_failing_call_is_logged_and_the_rest_of_the_burst_still_runs(caplog: pytest.LogCaptureFixture) -> None:
    handoff = _LoopHandoff(asyncio.get_running_loop())
    seen: list[int] = []

    def boom(_arg: Any) -> None:
        raise RuntimeError("handler bug")

    handoff.put(seen.append, 1)
    handoff.put(boom, None)
    handoff.put(seen.append, 2)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert seen == [1, 2]
    assert "a Pulsar callback failed on the loop" in caplog.text


async def test_a_handoff_after_the_loop_closed_is_dropped_quietly() -> None:
    other = asyncio.new_event_loop()
    other.close()
    _LoopHandoff(other).put(print, "never")  # no RuntimeError from a listener thread


async def test_a_readers_listener_hands_a_burst_of_messages_to_the_loop_with_one_wakeup() -> None:
    from storm.adapters.pulsar_broker import PulsarBroadcastSubscription

    loop = _CountingLoop(asyncio.get_running_loop())
    handoff = _LoopHandoff(loop)  # type: ignore[arg-type]

    class _Broker:
        def _handoff_for(self, _loop: asyncio.AbstractEventLoop) -> _LoopHandoff:
            return handoff

    sub = PulsarBroadcastSubscription(_Broker(), lambda record: None)  # type: ignore[arg-type]
    got: list[int] = []
    on_message = sub._listener(got.append)
    t = threading.Thread(target=lambda: [on_message(None, i) for i in range(100)])
    t.start()
    t.join()
    await asyncio.sleep(0)
    assert got == list(range(100))
    assert loop.wakeups == 1
