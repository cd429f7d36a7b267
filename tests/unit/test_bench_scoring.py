"""The scoring of `storm bench` (storm_tools/bench), on which the published figures rest
(docs/benchmarks.md): percentiles, the ratio to the floor, the delivery accounting and the summaries.
Pure functions fed with hand-made results whose right answers are worked out in the comments."""

from __future__ import annotations

import argparse
import math
from typing import Any

import pytest

from storm_tools.bench import e2e, fanout

# ---- fanout: percentiles of sorted samples, the split of connections, the STORM/floor summary ----------


def test_nearest_rank_percentile_of_sorted_samples() -> None:
    values = list(range(10, 101, 10))  # 10 samples: rank = ceil(q/100 * 10)
    assert fanout.percentile(values, 50) == 50.0  # rank 5
    assert fanout.percentile(values, 99) == 100.0  # rank 10
    assert fanout.percentile(values, 91) == 100.0  # ceil(9.1) = rank 10, not 9
    assert fanout.percentile(values, 0) == 10.0  # clamped to the first
    assert fanout.percentile([7], 50) == 7.0
    assert math.isnan(fanout.percentile([], 50))


def test_split_spreads_the_remainder_over_the_first_parts() -> None:
    assert fanout.split(10, 3) == [4, 3, 3]
    assert fanout.split(2, 4) == [1, 1, 0, 0]
    assert sum(fanout.split(10_001, 7)) == 10_001


def _run(**over: Any) -> dict[str, Any]:
    run: dict[str, Any] = {
        "deliveries": 1000, "expected": 1000, "wall_s": 2.0, "cpu_us_per_delivery": 6.0, "p50_ms": 1.234,
        "p99_ms": 4.567, "frames": 500, "max_ms": 9.0, "server_cpu_s": 0.5, "server_cpu_s_ticks": 0.5,
        "client_cpu_s": 1.0, "acks": 10, "connect_failures": 0, "errors": 0, "closed": 0, "misordered": 0,
        "short_connections": 0, "excess_connections": 0, "late": 0, "server_log_errors": 0, "first_error": "",
        "connect_failure": "",
    }
    run.update(over)
    return run


ARGS = argparse.Namespace(subscribers=100, messages=10, rate=100, warmup=1)


def test_fanout_summary_divides_storms_cpu_per_delivery_by_the_floors() -> None:
    out = fanout.summarize(ARGS, {"storm": _run(cpu_us_per_delivery=6.0),
                                  "floor": _run(cpu_us_per_delivery=2.5, p99_ms=1.0, wall_s=1.0)})
    assert out["ratio_to_floor"] == 2.4  # 6.0 / 2.5
    assert (out["server_cpu_us_per_delivery"], out["floor_us_per_delivery"]) == (6.0, 2.5)
    assert (out["p50_ms"], out["p99_ms"], out["floor_p99_ms"]) == (1.23, 4.57, 1.0)  # STORM's, rounded
    assert out["server_busy"] == 0.25 and out["floor_busy"] == 0.5  # cpu_s / wall_s
    assert out["events_per_frame"] == 2.0  # 1000 deliveries in 500 frames
    assert not fanout.failed(out)
    assert not {k for k in out if k.endswith(("missing", "errors", "acks"))}  # nothing to report


def test_fanout_summary_without_the_floor_has_no_ratio_and_reports_losses() -> None:
    out = fanout.summarize(ARGS, {"storm": _run(deliveries=990, acks=9, errors=2, first_error="boom",
                                                p99_ms=float("nan"))})
    assert out["ratio_to_floor"] is None and out["floor_us_per_delivery"] is None
    assert "floor_deliveries" not in out
    assert (out["missing"], out["acks"], out["errors"], out["first_error"]) == (10, 9, 2, "boom")
    assert out["p99_ms"] is None  # no latency sample: NaN is reported as null, not as a number
    assert fanout.failed(out)
    assert fanout.failed({"floor_missing": 3}) and not fanout.failed({"missing": 0})


def test_fanout_summary_states_the_write_delay_storm_ran_with() -> None:
    rule = {"write_delay_s": 0.0, "write_delay_max_s": 0.025}
    out = fanout.summarize(ARGS, {"storm": _run(write_delay=rule), "floor": _run()})
    assert out["write_delay"] == rule
    assert "write_delay" not in fanout.summarize(ARGS, {"floor": _run()})


# ---- e2e: histogram percentiles, the delivery accounting, the summary ----------------------------------


def test_histogram_percentile_is_the_upper_edge_of_the_nearest_rank_bucket() -> None:
    hist = {0: 50, 9: 49, 99: 1}  # 100 samples in 0.1 ms buckets: [0, 0.1), [0.9, 1.0), [9.9, 10.0)
    assert e2e.percentile_ms(hist, 50) == 0.1  # rank 50: the first bucket
    assert e2e.percentile_ms(hist, 51) == 1.0  # rank 51: the second
    assert e2e.percentile_ms(hist, 99) == 1.0  # rank 99: still the second
    assert e2e.percentile_ms(hist, 100) == 10.0  # rank 100: the slowest sample
    assert e2e.percentile_ms({}, 50) is None


def test_histograms_from_json_children_merge_by_bucket() -> None:
    assert e2e.merge([{"3": 2, "5": 1}, {3: 4}, {}]) == {3: 6, 5: 1}  # keys arrive as strings from JSON


def test_score_counts_what_each_member_missed_of_what_the_others_had_acked() -> None:
    # members=2: connections 0 and 1 share channel 0, connections 2 and 3 channel 1.
    # Sender 0 had seqs 0, 1, 2 acked (0b111), sender 1 seqs 0, 1 (0b11); sender 2 nothing acked.
    # Receiver 1 got seqs 0 and 2 of sender 0 plus seq 3, never acked (0b1101 = 0xd): seq 1 is missing.
    # Receiver 0 got both of sender 1's.  Receiver 3 got seq 0 of sender 2, which was never acked.
    results = [{"acked_bits": {"0": "7", "1": "3"}, "received": {"1": {"0": "d"}, "0": {"1": "3"}}},
               {"acked_bits": {}, "received": {"3": {"2": "1"}}}]
    assert e2e.score(results, members=2) == {
        "expected_deliveries": 5,  # 3 for receiver 1 + 2 for receiver 0
        "missing": 1,
        "delivered_acked": 4,
        "delivered_unacked": 2,  # seq 3 to receiver 1, sender 2's seq 0 to receiver 3
    }


def test_slow_deliveries_are_counted_from_the_first_slow_second() -> None:
    results = [{"slow_by_second": {"12": 3}}, {"slow_by_second": {"10": 1, "12": 1}}, {}]
    assert e2e._slow_by_second(results) == {"0": 1, "2": 4}
    assert e2e._slow_by_second([{}]) == {}


class _Proc:
    def __init__(self, log: str) -> None:
        self.log = log

    def log_tail(self, lines: int) -> str:
        return self.log


def _child(**over: Any) -> dict[str, Any]:
    child: dict[str, Any] = {
        "acked_bits": {"0": "3", "1": "3"}, "received": {"0": {"1": "3"}, "1": {"0": "3"}},
        "deliver_hist": {"4": 3, "19": 1}, "ack_hist": {"9": 4}, "lag_hist": {"0": 4}, "published": 4,
        "acked": 4, "rejected": 0, "duplicates": 0, "misordered": 0, "errors": 0, "first_error": "", "closed": 0,
    }
    child.update(over)
    return child


E2E_ARGS = argparse.Namespace(members=2, rate=2.0, duration=2.0, connections=2, gateways=1, no_consumers=False)
CPU = {"cpu_s": {"gateway": 1.0}, "machine_busy": 0.5, "cores": 2}


def test_e2e_summary_of_a_clean_run() -> None:
    out = e2e.summarize(E2E_ARGS, [_child()], connected=2, failure="", settled=0.123, cpu=CPU,
                        load_before=(0.5,), load_after=(0.75,), procs=[_Proc("INFO fine\n")])
    assert (out["published"], out["acked"], out["delivered"], out["expected_deliveries"], out["missing"]) == (
        4, 4, 4, 4, 0)
    assert out["deliver_p50_ms"] == 0.5 and out["deliver_p99_ms"] == 2.0  # buckets 4 and 19, upper edges
    assert out["deliver_max_ms"] == 2.0 and out["ack_max_ms"] == 1.0
    assert out["achieved_rate"] == 2.0 and out["channels"] == 1 and out["settle_s"] == 0.12
    assert not {"connect_failures", "rejected", "unanswered", "server_log_errors"} & set(out)  # zeros left out
    assert not e2e.failed(out)


def test_e2e_summary_reports_losses_rejections_and_server_errors() -> None:
    lossy = _child(received={"0": {"1": "1"}, "1": {"0": "3"}}, acked=3, rejected=1, errors=1,
                   first_error="refused")
    log = "INFO ok\n2026 ERROR storm.gateway boom\nTraceback (most recent call last):\n"
    out = e2e.summarize(E2E_ARGS, [lossy], connected=1, failure="timeout", settled=1.0, cpu=CPU,
                        load_before=(0.5,), load_after=(0.75,), procs=[_Proc(log)])
    assert out["missing"] == 1 and out["connect_failures"] == 1 and out["connect_failure"] == "timeout"
    assert "unanswered" not in out  # 4 published = 3 acked + 1 rejected: every publish was answered
    assert (out["rejected"], out["errors"], out["first_error"], out["server_log_errors"]) == (1, 1, "refused", 2)
    assert e2e.failed(out)


@pytest.mark.parametrize("result", [{"error": "x", "acked": 1}, {"missing": 1, "acked": 1},
                                    {"connect_failures": 1, "acked": 1}, {"acked": 0}])
def test_e2e_run_fails_on_errors_losses_refused_connections_or_no_acks(result: dict[str, Any]) -> None:
    assert e2e.failed(result)


def test_e2e_cpu_per_message_divides_each_role_by_the_acked_and_sums_the_server() -> None:
    cpu_s = {"gateways": 2.0, "pulsar": 1.0, "hazelcast": 0.25, "consumers": 0.5, "postgres": 0.25, "clients": 0.5}
    out = e2e.cpu_per_message(cpu_s, acked=1000)
    assert out == {"gateways": 2000.0, "pulsar": 1000.0, "hazelcast": 250.0, "consumers": 500.0, "postgres": 250.0,
                   "clients": 500.0, "server_total": 4000.0}  # the clients are not the server's
    missing = e2e.cpu_per_message({"gateways": 1.0, "clients": 1.0}, acked=100)  # services not found
    assert missing["pulsar"] is None and missing["server_total"] == 10000.0
    assert e2e.cpu_per_message(cpu_s, acked=0)["server_total"] is None
