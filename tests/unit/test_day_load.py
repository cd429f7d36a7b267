"""What one `storm day` load client counts (storm_tools/day/load.py), fed decoded server events without a socket,
and the live view drawn both ways (storm_tools/day/live.py)."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from storm_tools.day.live import LiveView
from storm_tools.day.load import DayClient, Load, failure_code, poisson


@pytest.fixture
def load(tmp_path: Path) -> Iterator[Load]:
    cfg = {"index": 0, "t0": time.time(), "run_s": 60, "seed": 1, "sources": ["127.0.0.2"], "gateways": [1],
           "secret": "s", "connect": {}, "connect_rate_per_s": 10, "acked_path": str(tmp_path / "acked.jsonl"),
           "traffic": {"history_on_connect": 20},
           "users": [[0, "ws", "d1u0", 0.0, None, ["a", "b"], True, None, ["a", "b"]]]}
    load = Load(cfg, io.StringIO())
    yield load
    load.close()


def _message(channel: str, mid: str, offset: int, text: str = "x") -> dict[str, Any]:
    return {"type": "message", "channel": channel, "id": mid, "offset": offset, "text": text}


async def test_a_client_subscribes_everything_then_is_ready_and_fetches_history(
        load: Load, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = load.users[0]
    user.last_offset["b"] = 7  # seen before a reconnect: resume from there
    client = DayClient("127.0.0.1", 1, user, load)
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(client, "send_op", sent.append)
    client.event({"type": "hello"})
    assert [(f["op"], f["channel"], f.get("since")) for f in sent] == [("subscribe", "a", None), ("subscribe", "b", 7)]
    client.event({"type": "subscribed", "id": sent[0]["id"], "channel": "a", "offset": 3})
    assert not client.ready.done()
    client.event({"type": "subscribed", "id": sent[1]["id"], "channel": "b", "offset": 9, "replayed": 2})
    assert client.ready.done() and sent[-1] == {"op": "history", "id": sent[-1]["id"], "channel": "a", "limit": 20}
    assert client.replay_upto == {"b": 9}


async def test_a_receiver_counts_duplicates_inversions_and_replays_apart(
        load: Load, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = DayClient("127.0.0.1", 1, load.users[0], load)
    client.replay_upto["b"] = 5
    stamp = f"day:{time.monotonic_ns()} d1u1"
    for event in (_message("a", "m1", 1, stamp), _message("a", "m2", 2, stamp), _message("a", "m1", 1),
                  _message("a", "m0", 0), _message("b", "r1", 4, stamp), _message("b", "n1", 6, stamp)):
        client.event(event)
    totals = load.stats.totals
    assert totals["deliveries"] == 5 and totals["delivery_duplicates"] == 1  # m1 twice
    assert totals["delivery_inversions"] == 1  # offset 0 after 2
    assert totals["replayed"] == 1 and load.stats.cur.seen["deliver_ms"] == 3  # r1's latency is the outage's
    assert load.users[0].last_offset == {"a": 2, "b": 6} and load.users[0].last_message["b"] == "n1"


async def test_an_ack_is_recorded_for_the_checks_and_an_error_is_counted_by_code(
        load: Load, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = DayClient("127.0.0.1", 1, load.users[0], load)
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(client, "send_op", sent.append)
    client.ready.set_result(None)
    client.publish("a")
    client.publish("a")
    first, second = sent
    assert first["cmid"] == "d1u0-000000" and second["cmid"] == "d1u0-000001"
    client.event({"type": "ack", "id": first["id"], "message_id": "m9", "offset": 12})
    client.event({"type": "error", "id": second["id"], "code": "rate_limited"})
    load.acked_file.flush()
    assert load.stats.totals == {"publishes": 2, "acks": 1, "rejected": 1}
    assert load.stats.cur.codes["errors"] == {"rate_limited": 1}
    records = [json.loads(line) for line in (tmp_path / "acked.jsonl").read_text().splitlines()]
    assert records == [["d1u0-000000", "m9", "a", 12, "ws"]]


async def test_an_error_during_the_setup_fails_the_connect_with_its_code(
        load: Load, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client = DayClient("127.0.0.1", 1, load.users[0], load)
    client.event({"type": "error", "code": "quota_exceeded"})
    with pytest.raises(RuntimeError) as caught:
        await client.ready
    assert failure_code(caught.value) == "quota_exceeded"
    assert failure_code(RuntimeError("handshake refused: b'HTTP/1.1 429 Too Many Requests'")) == "429"
    assert failure_code(ConnectionError("closed:4001")) == "4001"
    assert failure_code(TimeoutError()) == "timeout" and failure_code(ConnectionRefusedError()) == "refused"


async def test_a_subscribe_refused_unavailable_is_asked_again_on_the_same_connection_as_the_sdk_does(
        load: Load, monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker restarting answers subscribes ``unavailable``: the SDK asks again 0.5-1.5 s later on the same
    connection, so a day client does too instead of failing the connect and opening a new one (which turned a
    Pulsar restart into a reconnect storm); a refusal that is not transient still fails the connect."""
    user = load.users[0]
    user.last_offset["b"] = 7
    client = DayClient("127.0.0.1", 1, user, load)
    sent: list[dict[str, Any]] = []
    monkeypatch.setattr(client, "send_op", sent.append)
    client.event({"type": "hello"})
    first_a, first_b = sent[0], sent[1]
    client.event({"type": "subscribed", "id": first_a["id"], "channel": "a", "offset": 3})
    began = time.monotonic()
    client.event({"type": "error", "code": "unavailable", "id": first_b["id"]})
    assert not client.ready.done() and load.stats.totals["subscribe_retries"] == 1
    while len(sent) == 2:
        await asyncio.sleep(0.05)
    waited = time.monotonic() - began
    again = sent[2]
    assert 0.45 <= waited <= 2.0
    assert again["op"] == "subscribe" and again["channel"] == "b" and again["since"] == 7
    assert again["id"] != first_b["id"]
    client.event({"type": "subscribed", "id": again["id"], "channel": "b", "offset": 9})
    assert client.ready.done() and client.ready.exception() is None
    other = DayClient("127.0.0.1", 1, user, load)
    monkeypatch.setattr(other, "send_op", [].append)
    other.event({"type": "hello"})
    refused = min(other.pending)
    other.event({"type": "error", "code": "forbidden", "id": refused})
    with pytest.raises(RuntimeError) as caught:
        await other.ready
    assert failure_code(caught.value) == "forbidden"


def test_poisson_has_the_mean_it_is_asked_for() -> None:
    import random

    rng = random.Random(3)
    for lam in (0.2, 5.0, 80.0):
        draws = [poisson(rng, lam) for _ in range(4000)]
        assert sum(draws) / len(draws) == pytest.approx(lam, rel=0.1)
    assert poisson(rng, 0) == 0


SNAPSHOT = {"t": 12.0, "duration": 60.0, "phase": "ramp", "target": 150.0, "connections": 140, "connects_ok": 9,
            "connects_failed": 1, "publishes": 5, "acks": 5, "deliveries": 40, "ack_p50": 4.0, "ack_p99": 12.0,
            "deliver_p50": None, "deliver_p99": None, "errors": {}, "incidents": "gateway-sigkill"}


def test_the_live_view_prints_plain_lines_off_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    with LiveView("storm day: ci", fancy=False) as view:
        view.say("incident gateway-sigkill begins")
        view.update(SNAPSHOT)
    err = capsys.readouterr().err
    assert "storm day: incident gateway-sigkill begins" in err
    assert "t=12/60s ramp conns 140/150" in err and "ack p99 12 ms deliv p99 - ms" in err


def test_the_live_view_draws_a_table_on_a_terminal() -> None:
    from rich.console import Console

    view = LiveView("storm day: ci", fancy=True)
    view.say("incident gateway-sigkill begins")
    console = Console(file=io.StringIO(), width=120)
    console.print(view._table(SNAPSHOT))
    drawn = console.file.getvalue()  # type: ignore[attr-defined]
    assert "ramp 12/60 s" in drawn and "140 (curve 150)" in drawn and "gateway-sigkill" in drawn


async def test_a_refused_upgrade_carries_its_retry_after_for_the_day_clients_backoff() -> None:
    """storm day's clients wait a 503's Retry-After (plus a random share), as the SDK does."""
    from storm_tools.bench.wsclient import WebSocketError, WSClient

    class Sink:
        def write(self, data: bytes) -> None: ...

        def abort(self) -> None: ...

        def is_closing(self) -> bool:
            return False

    for head, expected in ((b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 4\r\n\r\n", 4.0),
                           (b"HTTP/1.1 403 Forbidden\r\n\r\n", None)):
        client = WSClient("127.0.0.1", 1)
        client.connection_made(Sink())  # type: ignore[arg-type]
        client.data_received(head)
        with pytest.raises(WebSocketError) as info:
            await client.opened
        assert info.value.retry_after == expected


async def _run_traffic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, users: list[list[Any]],
                       tick_s: float) -> list[dict[str, Any]]:
    """The frames the traffic loop sends for 20 s of the run's clock, each tick taking ``tick_s``."""
    import asyncio

    from storm_tools.day import load as load_mod

    real_sleep = asyncio.sleep

    clock = {"now": 1000.0}

    class FakeTime:
        @staticmethod
        def monotonic() -> float:
            return clock["now"]

        @staticmethod
        def time() -> float:
            return clock["now"]

        @staticmethod
        def monotonic_ns() -> int:
            return int(clock["now"] * 1e9)

    cfg = {"index": 0, "t0": 1000.0, "run_s": 60, "seed": 1, "sources": ["127.0.0.2"], "gateways": [1],
           "secret": "s", "connect": {}, "connect_rate_per_s": 10, "acked_path": str(tmp_path / "acked.jsonl"),
           "traffic": {"history_on_connect": 0, "messages_per_active_user_per_min": 60, "typing_per_message": 0,
                       "announcements_per_min": 0, "reactions_per_message": 0, "read_markers_per_user_per_min": 0,
                       "heartbeat_s": 25, "reconnects_per_min": 0, "reconnect_pause_s": 1},
           "users": users}
    load = Load(cfg, io.StringIO())
    sent: list[dict[str, Any]] = []
    for user in load.users:
        client = DayClient("127.0.0.1", 1, user, load)
        monkeypatch.setattr(client, "send_op", sent.append)
        client.ready.set_result(None)
        user.client = client
        load.online[user.rank] = user
    ticks = {"n": 0}

    async def slow_tick(_s: float) -> None:
        clock["now"] += tick_s
        ticks["n"] += 1
        if ticks["n"] > round(20 / tick_s):
            load.stopping = True
        await real_sleep(0)

    monkeypatch.setattr(load_mod, "time", FakeTime)
    monkeypatch.setattr(asyncio, "sleep", slow_tick)
    try:
        await load._traffic()
    finally:
        monkeypatch.undo()
        load.close()
    return sent


async def test_a_load_process_that_ticks_late_still_offers_the_profiles_rates(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """50 active users posting once a second, heartbeats every 25 s; each tick of the traffic loop takes 0.5 s
    instead of 0.1 (a busy process): 20 s of the run still carry ~1 000 publishes and ~40 pings."""
    users = [[i, "ws", f"u{i}", 0.0, None, ["a"], True, None, ["a"]] for i in range(50)]
    sent = await _run_traffic(tmp_path, monkeypatch, users, tick_s=0.5)
    publishes = sum(1 for f in sent if f["op"] == "publish")
    pings = sum(1 for f in sent if f["op"] == "ping")
    assert 850 <= publishes <= 1150, publishes  # 50/s over 20.5 s; counting ticks as 0.1 s gave ~200
    assert 35 <= pings <= 45, pings  # each user once per 25 s over 20 s of the run's clock


async def test_members_post_in_their_channels_never_in_the_announcements_and_the_rate_holds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """50 active users in the announcements channel and a topic, 50 more in the announcements only: the
    messages go to the topic alone, and the 50 who can post carry the whole rate (~1 000 in 20 s).  Before,
    members posted in the workspace-wide announcements channel (each such message reached every member), and
    a user drawn with no channel but the announcements either posted there or sent nothing."""
    users = ([[i, "ws", f"u{i}", 0.0, None, ["ann", "t"], True, None, ["t"]] for i in range(50)]
             + [[i, "ws", f"u{i}", 0.0, None, ["ann"], True, None, []] for i in range(50, 100)])
    sent = await _run_traffic(tmp_path, monkeypatch, users, tick_s=0.1)
    channels = {f["channel"] for f in sent if f["op"] == "publish"}
    publishes = sum(1 for f in sent if f["op"] == "publish")
    assert channels == {"t"}
    assert 850 <= publishes <= 1150, publishes


def test_the_online_index_draws_posters_announcers_and_heartbeats_without_scanning_everyone() -> None:
    """A tick of the traffic loop used to list and filter every online user and draw an announcement for each,
    ten times a second (43 % of a load process at 40 000 users): the index answers those from what it keeps,
    and stays consistent as users come and go."""
    import random

    from storm_tools.day.load import Online, User

    def user(rank: int, *, active: bool, announce: str | None = None) -> User:
        return User([rank, "ws", f"u{rank}", 0.0, None, ["a"], active, announce, ["a"]])

    online = Online(beat=25)
    everyone = {r: user(r, active=r % 5 == 0, announce="ann" if r == 7 else None) for r in range(1000)}
    rng = random.Random(3)
    expected: dict[int, User] = {}
    for _ in range(5000):  # users come and go in any order
        rank = rng.randrange(1000)
        if rank in expected and rng.random() < 0.5:
            assert online.pop(rank) is expected.pop(rank)
        elif rank not in expected:
            online[rank] = expected[rank] = everyone[rank]
    assert len(online) == len(expected) and {u.rank for u in online.values()} == set(expected)
    assert {u.rank for u in online.posters.items} == {r for r in expected if r % 5 == 0}
    assert set(online.announcers) == ({7} & set(expected))
    seen: list[int] = []
    for second in range(100, 125):  # one heartbeat period: everyone once, in the second (rank + s) % 25 == 0
        pinging = online.pinging(second)
        assert all((u.rank + second) % 25 == 0 for u in pinging)
        seen += [u.rank for u in pinging]
    assert sorted(seen) == sorted(expected)
    assert online.pop(10_000) is None


async def test_a_tick_with_thousands_online_draws_no_announcement_for_those_who_own_none(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """5 000 users online, one of them the owner of an announcements channel: the ticks draw a Poisson number
    per announcer, not per user online."""
    from storm_tools.day import load as load_mod

    draws = {"n": 0}
    real = load_mod.poisson

    def counting(rng: Any, lam: float) -> int:
        draws["n"] += 1
        return real(rng, lam)

    monkeypatch.setattr(load_mod, "poisson", counting)
    users = [[i, "ws", f"u{i}", 0.0, None, ["a"], False, "ann" if i == 0 else None, []] for i in range(5000)]
    sent = await _run_traffic(tmp_path, monkeypatch, users, tick_s=0.1)
    ticks = round(20 / 0.1)
    assert draws["n"] <= 5 * ticks, draws  # a handful per tick, where it was 5 000
    assert sum(1 for f in sent if f["op"] == "ping") >= 5000 * 19 // 25  # heartbeats still go to everyone
