"""The pure parts of the chaos experiments (storm_tools/chaos/): the judge's counts, the SLO verdicts over
metric points, the links plan and the summary's reading of a journal.  The experiments themselves run in
tests/e2e/test_chaos.py."""

from __future__ import annotations

from typing import Any

import pytest

from storm_tools.chaos.judge import Fault, cmid_seq, integrity_ok, score, time_to_recover
from storm_tools.chaos.runner import _host_port, _with_host_port, journal_held, markdown, plan_links
from storm_tools.chaos.slo_seam import evaluate


def _sent(cmid: str, channel: str, sent_at: float, acked_at: float | None, message_id: str | None,
          **extra: Any) -> dict[str, Any]:
    return {"cmid": cmid, "sender": cmid.split("-")[0], "channel": channel, "sent_at": sent_at,
            "acked_at": acked_at, "message_id": message_id, **extra}


def _delivery(receiver: str, message_id: str, cmid: str, offset: int, at: float) -> dict[str, Any]:
    return {"receiver": receiver, "channel": "c1", "message_id": message_id, "cmid": cmid, "offset": offset, "at": at}


def _records(deliveries: list[dict[str, Any]], sent: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    sent = sent if sent is not None else [_sent("m.a-000000", "c1", 10.0, 10.05, "id0"),
                                          _sent("m.a-000001", "c1", 11.0, 11.05, "id1")]
    return {"sent": sent, "deliveries": deliveries, "members": {"r1": "c1", "r2": "c1"}}


def test_a_clean_run_counts_nothing() -> None:
    deliveries = [_delivery(r, f"id{i}", f"m.a-00000{i}", 100 + i, 12.0 + i) for r in ("r1", "r2") for i in (0, 1)]

    result = score(_records(deliveries), stored={"m.a-000000": ["id0"], "m.a-000001": ["id1"]})

    assert (result["lost"], result["duplicates"], result["inversions"], result["not_stored"]) == (0, 0, 0, 0)
    assert result["acked"] == 2 and result["deliveries"] == 4 and integrity_ok(result)
    assert result["ack_p99_ms"] == pytest.approx(50.0, abs=0.1)


def test_a_member_that_misses_an_acked_message_is_a_loss() -> None:
    deliveries = [_delivery("r1", "id0", "m.a-000000", 100, 12.0), _delivery("r1", "id1", "m.a-000001", 101, 12.1),
                  _delivery("r2", "id0", "m.a-000000", 100, 12.0)]

    result = score(_records(deliveries), stored={"m.a-000000": ["id0"], "m.a-000001": ["id1"]})

    assert result["lost"] == 1 and result["lost_messages"] == 1 and not integrity_ok(result)


def test_duplicates_inversions_and_the_database_are_counted() -> None:
    deliveries = [_delivery("r1", "id1", "m.a-000001", 101, 12.0),  # the sender's #1 before its #0: inversion
                  _delivery("r1", "id0", "m.a-000000", 100, 12.1),  # and a lower offset: a second inversion
                  _delivery("r1", "id0", "m.a-000000", 100, 12.2),  # the same id again: a duplicate
                  _delivery("r2", "id0", "m.a-000000", 100, 12.0), _delivery("r2", "id1", "m.a-000001", 101, 12.1)]

    result = score(_records(deliveries), stored={"m.a-000000": ["id0", "idX"]})

    assert result["inversions"] == 2 and result["examples"]["inverted"] == ["m.a-000000"]
    assert result["stored_twice"] == 1 and result["duplicates"] == 2  # one delivered twice, one stored twice
    assert result["not_stored"] == 1 and result["examples"]["not_stored"] == ["m.a-000001"]
    assert not integrity_ok(result)


def test_without_the_database_the_run_is_not_clean() -> None:
    deliveries = [_delivery(r, f"id{i}", f"m.a-00000{i}", 100 + i, 12.0 + i) for r in ("r1", "r2") for i in (0, 1)]

    assert not integrity_ok(score(_records(deliveries), stored=None))


def test_time_to_recover_is_the_last_bad_publish_after_the_fault() -> None:
    sent = [_sent("m.a-000000", "c1", 99.0, 99.05, "id0"),
            _sent("m.a-000001", "c1", 101.0, 104.0, "id1"),  # 3 s to its ack: bad
            _sent("m.a-000002", "c1", 105.0, None, None, error="refused"),  # refused: bad
            _sent("m.a-000003", "c1", 107.0, 107.1, "id3")]

    assert time_to_recover(sent, 100.0) == 5.0
    assert time_to_recover(sent[:1] + sent[3:], 100.0) == 0.0
    assert time_to_recover(sent, None) is None


def test_the_publishes_in_flight_at_the_fault_are_reported_apart() -> None:
    sent = [_sent("m.a-000000", "c1", 99.5, 102.5, "id0"), _sent("m.a-000001", "c1", 101.0, 101.05, "id1")]

    result = score(_records([], sent), faults=[Fault("SIGKILL gateway-1", 100.0)])

    assert result["in_flight_at_fault"] == 1 and result["ack_p99_ms_at_fault"] == pytest.approx(3000.0)


def test_cmid_seq_reads_the_drivers_cmids_only() -> None:
    assert cmid_seq("m.u0007-000042") == ("m.u0007", 42)
    assert cmid_seq("not-a-number") is None and cmid_seq("plain") is None


def _point(name: str, value: float, at: float, kind: str = "distribution",
           tags: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"name": name, "kind": kind, "value": value, "tags": list(tags), "at": at}


def test_slo_verdicts_come_from_the_shared_definitions_over_the_points() -> None:
    points = [_point("storm.publish.ack_latency", 20.0, 1.0), _point("storm.publish.ack_latency", 30.0, 2.0),
              _point("storm.delivery.latency", 900.0, 1.0),  # over delivery_p99's 250 ms threshold
              _point("storm.commands", 100.0, 1.0, "count", ("op:publish", "result:ok"))]

    verdicts = {v.slo: v for v in evaluate({"lost_messages": 0, "not_stored": 0}, points)}

    assert verdicts["publish_ack_p99"].ok is True
    assert verdicts["delivery_p99"].ok is False
    assert verdicts["acked_delivered"].ok is True and verdicts["acked_delivered"].value == 100.0
    assert verdicts["reconnect_steady"].ok is None  # no reconnect, no data: not judged


def test_lost_and_unstored_messages_are_bad_acked_delivered_events_and_missing_data_fails() -> None:
    points = [_point("storm.commands", 100.0, 1.0, "count", ("op:publish", "result:ok"))]

    verdicts = {v.slo: v for v in evaluate({"lost_messages": 1, "not_stored": 2}, points)}

    assert verdicts["acked_delivered"].value == pytest.approx(97.0) and verdicts["acked_delivered"].ok is False
    assert verdicts["publish_ack_p99"].ok is False  # the driver published, so no ack latency at all is a failure


def test_links_plan_one_proxy_per_process_and_service_and_points_each_child_at_its_own() -> None:
    upstreams = {"pg": "postgresql+asyncpg://u:p@127.0.0.1:55432/storm_chaos_x", "pulsar": "pulsar://127.0.0.1:6650",
                 "hazelcast": "127.0.0.1:5701"}

    proxies, links, env = plan_links(["gateway-1", "api"], upstreams, list(range(9001, 9007)), direct=("pulsar",))

    assert proxies == [("storm-gateway-1.pg", "127.0.0.1:9001", "127.0.0.1:55432"),
                       ("storm-gateway-1.hazelcast", "127.0.0.1:9002", "127.0.0.1:5701"),
                       ("storm-api.pg", "127.0.0.1:9003", "127.0.0.1:55432"),
                       ("storm-api.hazelcast", "127.0.0.1:9004", "127.0.0.1:5701")]
    assert links["gateway-1"] == {"pg": "storm-gateway-1.pg", "hazelcast": "storm-gateway-1.hazelcast"}
    assert env["gateway-1"] == {"STORM_DATABASE_URL": "postgresql+asyncpg://u:p@127.0.0.1:9001/storm_chaos_x",
                                "STORM_HAZELCAST_MEMBERS": "127.0.0.1:9002"}


def test_host_port_reads_urls_and_member_lists() -> None:
    assert _host_port("postgresql+asyncpg://u:p@127.0.0.1:55432/db") == ("127.0.0.1", 55432)
    assert _host_port("pulsar://127.0.0.1:6650") == ("127.0.0.1", 6650)
    assert _with_host_port("pulsar://127.0.0.1:6650", 7000) == "pulsar://127.0.0.1:7000"


def _journal(status: str, deviated: bool, before: bool | None, after: bool | None) -> dict[str, Any]:
    return {"status": status, "deviated": deviated,
            "steady_states": {"before": {"steady_state_met": before}, "after": {"steady_state_met": after}}}


@pytest.mark.parametrize(("journal", "held"), [
    (_journal("completed", False, True, True), True),
    (_journal("completed", True, True, False), False),
    # Chaos Toolkit 1.19 says completed/not deviated when the steady state *before* failed and nothing ran
    (_journal("completed", False, False, None), False),
    (_journal("interrupted", False, True, None), False),
])
def test_an_experiment_held_only_when_both_steady_states_were_met(journal: dict[str, Any], held: bool) -> None:
    assert journal_held(journal) is held


def test_the_summary_table_puts_the_verdict_first() -> None:
    row = {"experiment": "gateway-sigkill", "ok": False, "status": "completed", "deviated": True, "before_met": True,
           "after_met": False, "slos": {"publish_ack_p99": {"value": 0.0, "target": 99.5, "ok": False}},
           "gated": [], "lost": 0, "duplicates": 0, "inversions": 0, "not_stored": 0, "ack_p99_ms": 5000.0,
           "ack_p99_ms_at_fault": 2700.0, "time_to_recover_s": 6.0, "took_s": 80.0}

    text = markdown([row], __import__("pathlib").Path("/tmp/report"))

    assert text.startswith("# STORM chaos matrix: 0 of 1 experiments held")
    assert "| gateway-sigkill | completed, deviated=True" in text and "publish_ack_p99 0.00 / 99.5 % (reported)" in text


def test_slow_readers_must_all_be_closed_4008_when_the_experiment_overflows_their_outbox() -> None:
    from storm_tools.chaos.probes import _flag, slow_readers_ok

    assert slow_readers_ok({"u1": 4008, "u2": None}, must_close=False)
    assert not slow_readers_ok({"u1": 4008, "u2": None}, must_close=True)  # one never overflowed
    assert slow_readers_ok({"u1": 4008, "u2": 4008}, must_close=True)
    assert not slow_readers_ok({"u1": 4002}, must_close=False)  # any other close fails
    assert _flag(True) and _flag("true") and not _flag(False) and not _flag("0")


def test_a_stopped_reader_cut_by_the_gateway_counts_only_when_the_gateways_counted_as_many_4008s() -> None:
    """A reader that stopped reading never sees the 4008 frame (it is behind what the reader did not read): its
    socket is cut.  The cut is a 4008 close only when the gateways' own count of 4008 closes matches."""
    from storm_tools.chaos.judge import score, server_closes
    from storm_tools.chaos.probes import slow_readers_ok

    def point(code: str, value: float, instance: str = "gateway-1") -> dict[str, object]:
        return {"name": "storm.gateway.disconnects", "kind": "count", "value": value,
                "tags": [f"code:{code}", "service:gateway", f"instance:{instance}"], "at": 0.0}

    metrics = [point("4008", 1, "gateway-1"), point("4008", 1, "gateway-2"), point("client", 7),
               point("4008", 0), {"name": "storm.outbox.overflows", "kind": "count", "value": 2, "tags": [], "at": 0}]
    assert server_closes(metrics, 4008) == 2 and server_closes(metrics, 4002) == 0

    assert slow_readers_ok({"u1": "reset", "u2": 4008}, must_close=True, closed_4008=2)
    assert not slow_readers_ok({"u1": "reset", "u2": "reset"}, must_close=True, closed_4008=1)  # one cut unexplained
    assert not slow_readers_ok({"u1": "reset"}, must_close=True, closed_4008=2)  # a reading client was closed 4008
    assert not slow_readers_ok({"u1": "reset"}, must_close=True, closed_4008=None)  # no metrics: no proof
    assert not slow_readers_ok({"u1": "reset", "u2": "open"}, must_close=True, closed_4008=1)  # one never overflowed
    assert slow_readers_ok({"u1": "reset", "u2": "open"}, must_close=False, closed_4008=1)

    records = {"sent": [], "deliveries": [], "members": {}, "slow_readers": {"u1": "reset", "u2": "reset"},
               "metrics": metrics}
    result = score(records)
    assert result["closed_4008_by_gateways"] == 2 and result["slow_closed"] == {"u1": "reset", "u2": "reset"}
    assert slow_readers_ok(result["slow_closed"], True, result["closed_4008_by_gateways"])


def test_the_driver_pads_texts_within_the_protocol_limit() -> None:
    from storm_tools.chaos.driver import DriverConfig

    assert DriverConfig(body_chars=3000).body_chars == 3000
    with pytest.raises(ValueError, match="body_chars"):
        DriverConfig(body_chars=4001)


def test_after_a_method_whose_driver_failed_the_steady_state_is_not_met(tmp_path, monkeypatch) -> None:
    """The connect-spike run of 2026-12-06 19:00: the driver failed during the storm, and the probe after the
    method judged a fresh baseline instead, so the experiment 'held' without its method being judged."""
    import json

    from storm_tools.chaos.probes import slo_steady_state

    monkeypatch.setenv("STORM_CHAOS_RUN_DIR", str(tmp_path))
    ws = {"slug": "chaos-x", "channels": ["c"], "users": ["u0000", "u0001"], "secret": "s"}
    (tmp_path / "state.json").write_text(json.dumps({"phase": "baseline", "workspace": ws}))
    verdict = slo_steady_state()
    assert verdict["phase"] == "after" and verdict["ok"] is False and "driver did not finish" in verdict["error"]
    assert json.loads((tmp_path / "state.json").read_text())["phase"] == "judged"


async def test_the_driver_settles_while_acks_still_arrive_and_gives_up_once_they_stop() -> None:
    """The 19:18 hazelcast-loss and pulsar-restart runs: the service came back after the load had ended, and a
    fixed settle cut off the acks and deliveries still arriving (counted never acked, or lost)."""
    import asyncio

    from storm_tools.chaos.driver import DriverConfig, _wait_while_moving

    arrived = {"n": 0}

    async def trickle() -> None:  # one more every 20 ms: 30 of them take 0.6 s, longer than the quiet window
        for _ in range(30):
            await asyncio.sleep(0.02)
            arrived["n"] += 1

    task = asyncio.create_task(trickle())
    assert await _wait_while_moving(lambda: arrived["n"] == 30, lambda: arrived["n"], quiet_s=0.2, max_s=30,
                                    step_s=0.01)
    await task
    assert not await _wait_while_moving(lambda: False, lambda: 0, quiet_s=0.05, max_s=30, step_s=0.01)
    assert not await _wait_while_moving(lambda: False, lambda: arrived.__setitem__("n", arrived["n"] + 1) or
                                        arrived["n"], quiet_s=30, max_s=0.1, step_s=0.01)  # moving, but capped
    with pytest.raises(ValueError):
        DriverConfig(settle_s=45, settle_max_s=10)


async def test_the_driver_asks_again_when_a_subscribe_is_refused_retriably() -> None:
    """The 22:11 pulsar-restart run: one subscribe answered `internal` while Pulsar went down, and the driver
    gave up its whole load."""
    from storm_sdk.errors import StormError

    from storm_tools.chaos.driver import _subscribe

    class Client:
        def __init__(self, errors: list[StormError]) -> None:
            self.errors, self.calls = errors, 0

        async def subscribe(self, channel: str) -> None:
            self.calls += 1
            if self.errors:
                raise self.errors.pop(0)

    flaky = Client([StormError("internal"), StormError("unavailable")])
    await _subscribe(flaky, "c")
    assert flaky.calls == 3
    refused = Client([StormError("forbidden")])
    with pytest.raises(StormError):
        await _subscribe(refused, "c")
    assert refused.calls == 1


async def test_the_send_buffer_probe_reports_what_a_stopped_reader_absorbs() -> None:
    from storm_tools.chaos.sndbuf import CHUNK, measure

    result = await measure(limit_s=10.0)
    assert result["blocked"] is True  # a reader that never reads blocks the writer at some point
    assert result["bytes_accepted_before_drain_blocked"] >= len(CHUNK)
    assert result["sender_so_sndbuf"] > 0 and result["reader_so_rcvbuf"] > 0
