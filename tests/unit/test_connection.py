"""One connection's life in the gateway (gateway/connection.py), driven in memory: a fake socket in place of the
front door's, a real (never started) Gateway with its hub and session core.  Open, messages, overflow, close and
end each happen in one place; these tests pin what each does."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from gateway.connection import INBOX_HIGH, Connection
from gateway.runtime import Gateway
from storm.bootstrap import build_services
from storm.config import Config
from storm.protocol.codes import CloseCode
from storm.protocol.session import State


class FakeSocket:
    """Records what the connection asks of its socket, in order; ``full`` makes direct writes refuse and
    waiting sends wait, like a socket whose buffer is at the high-water mark."""

    def __init__(self) -> None:
        self.log: list[tuple[str, Any]] = []
        self.full = False
        self.reading = True

    def write_frame(self, frame: bytes) -> bool:
        if self.full:
            return False
        self.log.append(("frame", frame))
        return True

    async def send_frame(self, frame: bytes) -> None:
        while self.full:
            await asyncio.sleep(0.001)
        self.log.append(("frame", frame))

    def close_socket(self, code: int, reason: str) -> None:
        self.log.append(("close", code))

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    @property
    def closes(self) -> list[int]:
        return [code for kind, code in self.log if kind == "close"]

    @property
    def frames(self) -> list[bytes]:
        return [frame for kind, frame in self.log if kind == "frame"]


@pytest.fixture
def gateway(tmp_path: Any) -> Gateway:
    cfg = Config.from_env({}, database_url=f"sqlite+aiosqlite:///{tmp_path}/c.db", outbox_max_events=3)
    gateway = Gateway(build_services(cfg))
    gateway.accepting = True  # what start() sets once the hub runs; nothing here needs the hub's subscription
    return gateway


async def _settle(gateway: Gateway) -> None:
    for _ in range(20):
        await asyncio.sleep(0)
    if gateway._tasks:
        await asyncio.wait(list(gateway._tasks), timeout=2)


async def test_a_draining_gateway_closes_the_socket_1012_and_opens_no_session(gateway: Gateway) -> None:
    gateway.accepting = False
    sock = FakeSocket()
    assert Connection.open(gateway, sock) is None
    assert sock.closes == [CloseCode.SERVICE_RESTART]
    assert gateway.connections == 0 and not gateway.hub.sessions


async def test_open_registers_the_session_and_the_end_undoes_it_once(gateway: Gateway) -> None:
    sock = FakeSocket()
    conn = Connection.open(gateway, sock)
    assert conn is not None
    assert gateway.connections == 1 and gateway.hub.sessions == {conn.session}
    conn.ended()
    conn.ended()  # connection_lost after an abort, say: still counted once
    await _settle(gateway)
    assert gateway.connections == 0 and not gateway.hub.sessions
    assert conn.session.state is State.CLOSED and conn.outbox.closed
    assert not conn.send(b'{"late":1}')  # nothing is queued for a socket that is gone


async def test_overflow_closes_4008_and_drops_what_was_queued(gateway: Gateway) -> None:
    sock = FakeSocket()
    conn = Connection.open(gateway, sock)
    assert conn is not None
    sock.full = True  # the client stopped reading: nothing can be written at once, the outbox fills
    for i in range(3):
        assert conn.send(b'{"n":%d}' % i)
    assert not conn.send(b'{"n":3}')  # the fourth passes STORM_OUTBOX_MAX_EVENTS=3
    await _settle(gateway)
    assert sock.log == [("close", CloseCode.SLOW_CONSUMER)]  # nothing flushed first: the client resumes
    assert conn.session.close_code == CloseCode.SLOW_CONSUMER


async def test_a_close_lets_the_queued_events_leave_first(gateway: Gateway) -> None:
    sock = FakeSocket()
    conn = Connection.open(gateway, sock)
    assert conn is not None
    conn.send(b'{"type":"error","code":"revoked"}')
    conn.session.close(CloseCode.REVOKED, "access revoked")
    await _settle(gateway)
    assert sock.log == [("frame", b'{"type":"error","code":"revoked"}'), ("close", CloseCode.REVOKED)]
    assert not conn.receiving


class Recorder:
    """Stands in for the session: records messages, each taking a few loop turns."""

    def __init__(self) -> None:
        self.got: list[str | bytes] = []
        self.arrivals = 0

    def arrived(self) -> None:  # the connection stamps each frame's arrival (deadlines count from it)
        self.arrivals += 1

    def answer_ping(self, data: str | bytes) -> bool:  # nothing is a ping here: every message is queued
        return False

    async def receive(self, data: str | bytes) -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        self.got.append(data)


async def test_messages_are_handled_in_order_and_a_full_inbox_pauses_reading(gateway: Gateway) -> None:
    sock = FakeSocket()
    conn = Connection.open(gateway, sock)
    assert conn is not None
    conn.session = recorder = Recorder()  # type: ignore[assignment]
    messages = [f"m{i}" for i in range(INBOX_HIGH + 6)]
    for message in messages:
        conn.receive(message)
    assert not sock.reading  # more than INBOX_HIGH waiting: the socket is not read meanwhile
    for _ in range(2000):
        if len(recorder.got) == len(messages):
            break
        await asyncio.sleep(0)
    assert recorder.got == messages and sock.reading


async def test_after_the_peers_close_nothing_more_is_handled_or_sent(gateway: Gateway) -> None:
    sock = FakeSocket()
    conn = Connection.open(gateway, sock)
    assert conn is not None
    conn.session = recorder = Recorder()  # type: ignore[assignment]
    sock.full = True  # queued, not yet written, when the peer's close frame is read
    conn.send(b'{"n":1}')
    conn.halt()  # the driver read the peer's close frame
    sock.full = False
    conn.send(b'{"n":2}')
    conn.receive("after the close")
    await _settle(gateway)
    assert recorder.got == [] and sock.frames == []


async def test_a_ping_with_nothing_ahead_is_answered_in_the_call_and_one_behind_a_frame_waits_its_turn() -> None:
    """A heartbeat costs no task: with nothing queued or running, the pong is written before ``receive``
    returns.  Behind a frame still being handled it is queued, so replies keep the order of the frames."""
    import json

    from storm.adapters.dev_identity import DevIdentity
    from storm_tools.seed import DEMO_WORKSPACE
    from tests.support.services import demo_services

    services = await demo_services(Config.from_env({}, store="memory"))
    gateway = Gateway(services)
    await gateway.start()
    sock = FakeSocket()
    conn = Connection.open(gateway, sock)
    assert conn is not None
    conn.receive(json.dumps({"op": "auth", "token": DevIdentity(gateway.config.dev_secret).issue(
        "dev|alice", DEMO_WORKSPACE, "Alice")}))
    await _settle(gateway)
    assert json.loads(sock.frames[-1])["type"] == "hello"
    sock.log.clear()
    conn.receive(b'{"op":"ping","id":7}')
    assert [json.loads(f)["id"] for f in sock.frames] == [7]  # answered before any await
    assert conn._worker is None
    conn.receive(b'{"op":"history","id":8,"channel":"not-a-channel"}')  # handled by the inbox's task
    conn.receive(b'{"op":"ping","id":9}')  # behind it: queued, not answered first
    assert [json.loads(f)["id"] for f in sock.frames] == [7]
    await _settle(gateway)
    assert [json.loads(f).get("id") for f in sock.frames] == [7, 8, 9]
    conn.ended()
    await _settle(gateway)
    await gateway.stop()
    await services.stop()
