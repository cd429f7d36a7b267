"""Observability without I/O: the catalogue, local instruments and flush, the SLO evaluator, the Terraform
generator and its checked-in output, the JSON log format, and `storm top`'s figures (docs/observability.md)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from storm.config import ConfigError
from storm.logs import JsonFormatter, configure
from storm.metrics import SAMPLE_CAP, GatewayMeters, Metrics, Sample
from storm.metrics_catalogue import BY_NAME, CATALOGUE, ROLES, UnknownMetric, check, markdown_table
from storm_tools import datadog_tf
from storm_tools.slo import SloError, Term, evaluate, load, parse
from storm_tools.statsd import Collector, Point, percentile
from storm_tools.statsd import parse as parse_datagram
from storm_tools.top import figures, render
from tests.support.ci import unavailable

ROOT = Path(__file__).resolve().parents[2]
TF = ROOT / "terraform" / "datadog"
METRIC_NAME = re.compile(r"\bstorm(?:\.[a-z_]+)+")


class ListSink:
    enabled = True

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float, tuple[str, ...]]] = []
        self.flushes = 0
        self.closed = 0

    def count(self, name: str, value: int, tags: Sequence[str]) -> None:
        self.calls.append(("count", name, value, tuple(tags)))

    def gauge(self, name: str, value: float, tags: Sequence[str]) -> None:
        self.calls.append(("gauge", name, value, tuple(tags)))

    def distribution(self, name: str, value: float, tags: Sequence[str]) -> None:
        self.calls.append(("distribution", name, value, tuple(tags)))

    def flush(self) -> None:
        self.flushes += 1

    def close(self) -> None:
        self.closed += 1


# -- the catalogue ---------------------------------------------------------------------------------------
def test_catalogue_names_are_unique_and_well_formed() -> None:
    assert len(BY_NAME) == len(CATALOGUE)
    for m in CATALOGUE:
        assert METRIC_NAME.fullmatch(m.name), m.name
        assert m.kind in ("count", "gauge", "distribution")
        assert m.meaning and m.unit and m.roles and set(m.roles) <= set(ROLES)
        if m.kind == "distribution" and m.unit not in ("records",):
            assert m.unit == "ms", f"{m.name}: latencies are in milliseconds"
        for tag, values in m.tags:
            assert tag not in ("user", "channel", "message", "session", "token", "workspace")
            assert values and len(set(values)) == len(values)


def test_the_issue_metrics_are_all_in_the_catalogue() -> None:
    wanted = """storm.gateway.connections storm.gateway.connects storm.gateway.connect_time storm.gateway.disconnects
        storm.gateway.resumes storm.publish.ack_latency storm.delivery.latency storm.fanout.deliveries
        storm.outbox.overflows storm.commands storm.ratelimit.refused storm.auth.failures
        storm.broker.publish_latency storm.cache.op_latency storm.store.tx_latency storm.store.serialization_retries
        storm.consumer.batch_size storm.consumer.batch_latency storm.consumer.backlog storm.consumer.redelivered
        storm.consumer.dead_lettered storm.process.loop_lag storm.process.gc_pause storm.process.rss
        storm.process.cpu storm.process.open_fds""".split()
    assert set(wanted) <= set(BY_NAME)


@pytest.mark.parametrize(("name", "kind", "tags", "error"), [
    ("storm.nope", "count", {}, "not in storm/metrics_catalogue.py"),
    ("storm.gateway.connects", "gauge", {"result": "ok"}, "is a count"),
    ("storm.gateway.connects", "count", {}, "takes the tags"),
    ("storm.gateway.connects", "count", {"result": "ok", "user": "alice"}, "takes the tags"),
    ("storm.gateway.connects", "count", {"result": "maybe"}, "is not one of"),
])
def test_check_refuses_what_the_catalogue_does_not_list(name: str, kind: str, tags: dict[str, str],
                                                        error: str) -> None:
    with pytest.raises(UnknownMetric, match=error):
        check(name, kind, tags)  # type: ignore[arg-type]
    metrics = Metrics(ListSink())
    with pytest.raises(UnknownMetric):
        if kind == "count":
            metrics.counter(name, **tags)
        elif kind == "gauge":
            metrics.gauge_of(name, lambda: 1.0, **tags)


# -- instruments and flush --------------------------------------------------------------------------------
def test_flush_sends_count_deltas_gauges_and_the_sampled_values_once() -> None:
    sink = ListSink()
    metrics = Metrics(sink)
    ok = metrics.counter("storm.gateway.connects", result="ok")
    assert metrics.counter("storm.gateway.connects", result="ok") is ok  # one counter per name and tags
    kept = {"n": 0}
    metrics.count_of("storm.fanout.deliveries", lambda: kept["n"])
    metrics.gauge_of("storm.gateway.connections", lambda: 7)
    lag = metrics.sample("storm.process.loop_lag")
    ok.value += 3
    kept["n"] = 40
    lag.add(1.5)
    lag.add(2.5)
    metrics.flush()
    assert sorted(sink.calls) == sorted([
        ("count", "storm.gateway.connects", 3, ("result:ok",)),
        ("count", "storm.fanout.deliveries", 40, ()),
        ("gauge", "storm.gateway.connections", 7.0, ()),
        ("distribution", "storm.process.loop_lag", 1.5, ()),
        ("distribution", "storm.process.loop_lag", 2.5, ()),
    ])
    sink.calls.clear()
    ok.inc()
    metrics.flush()  # deltas since the last flush (zero too: monitors on rare events have data), no old samples
    assert sorted(sink.calls) == [("count", "storm.fanout.deliveries", 0, ()),
                                  ("count", "storm.gateway.connects", 1, ("result:ok",)),
                                  ("gauge", "storm.gateway.connections", 7.0, ())]
    assert sink.flushes == 2


def test_a_sample_keeps_at_most_its_cap_as_a_uniform_reservoir() -> None:
    sample = Sample()
    for i in range(10 * SAMPLE_CAP):
        sample.add(float(i))
    assert len(sample.values) == SAMPLE_CAP and sample.seen == 10 * SAMPLE_CAP
    assert max(sample.values) > SAMPLE_CAP  # later values replaced early ones
    assert len(sample.drain()) == SAMPLE_CAP and sample.values == [] and sample.seen == 0


async def test_without_an_agent_nothing_runs_and_stop_sends_nothing() -> None:
    metrics = Metrics()
    counter = metrics.counter("storm.gateway.connects", result="ok")
    await metrics.start()
    counter.value += 1
    assert metrics._tasks == []  # no timer, no probes
    await metrics.stop()
    await metrics.stop()  # idempotent


async def test_stop_flushes_what_is_left_and_closes_the_sink() -> None:
    sink = ListSink()
    metrics = Metrics(sink, interval_s=60)
    await metrics.start()
    with pytest.raises(RuntimeError):
        await metrics.start()
    metrics.counter("storm.outbox.overflows").inc()
    await metrics.stop()
    assert ("count", "storm.outbox.overflows", 1, ()) in sink.calls
    assert sink.closed == 1


async def test_polled_gauges_are_awaited_before_the_flush() -> None:
    sink = ListSink()
    metrics = Metrics(sink)

    async def backlog() -> float:
        return 12.0

    metrics.gauge_polled("storm.consumer.backlog", backlog)
    await metrics.poll()
    assert ("gauge", "storm.consumer.backlog", 12.0, ()) in sink.calls


async def test_a_gauge_polled_every_so_often_repeats_its_last_value_in_between(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Pulsar's broker-stats document (the backlog gauge's source) is megabytes, costs both sides tens of
    milliseconds and changes once a minute: it is fetched every ``every_s``, not at every flush; a failed
    fetch sends nothing and waits as long before the next."""
    import storm.metrics as metrics_module

    now = [1000.0]
    monkeypatch.setattr(metrics_module.time, "monotonic", lambda: now[0])
    answers: list[float | Exception] = [7.0, RuntimeError("admin down"), 9.0]
    fetched = 0

    async def backlog() -> float:
        nonlocal fetched
        fetched += 1
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    sink = ListSink()
    metrics = Metrics(sink)
    metrics.gauge_polled("storm.consumer.backlog", backlog, every_s=30.0)

    def sent() -> list[float]:
        return [v for kind, name, v, _ in sink.calls if name == "storm.consumer.backlog"]

    for _ in range(3):  # flushes at 0, 10 and 20 s: one fetch
        await metrics.poll()
        now[0] += 10.0
    assert fetched == 1 and sent() == [7.0, 7.0, 7.0]
    await metrics.poll()  # 30 s: fetched again, and it fails
    now[0] += 10.0
    await metrics.poll()  # 40 s: not asked again yet, and nothing stale is sent
    assert fetched == 2 and sent() == [7.0, 7.0, 7.0]
    now[0] += 20.0
    await metrics.poll()  # 60 s
    assert fetched == 3 and sent()[-1] == 9.0


def test_gateway_meters_count_commands_and_closes_within_the_catalogue(caplog: pytest.LogCaptureFixture) -> None:
    sink = ListSink()
    metrics = Metrics(sink)
    meters = GatewayMeters(metrics)
    meters.command("publish", "ok")
    meters.command("publish", "rate_limited")
    meters.command("teleport", "ok")  # not in the catalogue: logged, never emitted
    meters.disconnect(4008)
    meters.disconnect(None)
    meters.disconnect(1234)  # unknown code: counted as the client's
    meters.auth_failed("invalid_token", "unauthenticated")
    meters.resumed(False, 0.0, 100.0)
    meters.resumed(True, 90.0, 100.0)
    metrics.flush()
    counts = {(name, tags): value for kind, name, value, tags in sink.calls if kind == "count"}
    assert counts[("storm.commands", ("op:publish", "result:ok"))] == 1
    assert counts[("storm.commands", ("op:publish", "result:rate_limited"))] == 1
    assert counts[("storm.gateway.disconnects", ("code:4008",))] == 1
    assert counts[("storm.gateway.disconnects", ("code:client",))] == 2
    assert counts[("storm.auth.failures", ("reason:invalid_token",))] == 1
    assert counts[("storm.gateway.connects", ("result:unauthenticated",))] == 1
    assert counts[("storm.gateway.resumes", ("recovered:false",))] == 1
    assert ("distribution", "storm.gateway.resume_gap", 10000.0, ()) in sink.calls
    assert not any("teleport" in str(c) for c in sink.calls)
    assert "teleport" in caplog.text


def test_no_code_emits_a_name_outside_the_catalogue() -> None:
    """Every literal name handed to an instrument anywhere in the server and tools is catalogued (the runtime
    check in Metrics catches the rest at start-up), and only the adapter talks to the datadog package."""
    call = re.compile(r"\.(?:counter|sample|count_of|gauge_of|gauge_polled)\(\s*\"([^\"]+)\"")
    found: set[str] = set()
    for folder in ("storm", "gateway", "consumers", "tenants", "db", "storm_cli", "storm_tools"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            found |= set(call.findall(text))
            if "datadog" in text and path.name != "dogstatsd_metrics.py":
                assert "import datadog" not in text and "from datadog" not in text, path
    assert found, "the scan found no instrument at all: the pattern is wrong"
    assert found <= set(BY_NAME), sorted(found - set(BY_NAME))


# -- DogStatsD parsing and storm top ---------------------------------------------------------------------
def test_datagrams_parse_as_the_datadog_client_writes_them() -> None:
    points = parse_datagram(b"storm.commands:3|c|#op:publish,result:ok,service:gateway\n"
                            b"storm.process.rss:1048576|g|#service:api\n"
                            b"storm.delivery.latency:1.5:2.5|d|@0.5|#service:gateway\n"
                            b"storm.gateway.connects:1|c|@0.25\n_e{1,1}:a|b\ngarbage\n", at=10.0)
    assert [(p.name, p.kind, p.value) for p in points] == [
        ("storm.commands", "count", 3.0), ("storm.process.rss", "gauge", 1048576.0),
        ("storm.delivery.latency", "distribution", 1.5), ("storm.delivery.latency", "distribution", 2.5),
        ("storm.gateway.connects", "count", 4.0),  # a sampled count is scaled back up
    ]
    assert points[0].tag("op") == "publish" and points[0].matches({"service": "gateway"})
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0 and percentile([], 99) is None


def test_storm_top_shows_one_row_per_process() -> None:
    collector = Collector()
    collector.started -= 10  # ten seconds of data
    for line in ("storm.gateway.connections:5|g|#service:gateway,instance:gw-1",
                 "storm.commands:20|c|#op:publish,result:ok,service:gateway,instance:gw-1",
                 "storm.publish.ack_latency:4:6|d|#service:gateway,instance:gw-1",
                 "storm.process.rss:50000000|g|#service:consumers,instance:c-1"):
        collector.feed(line)
    rows = {r["instance"]: r for r in figures(collector, window_s=10.0)}
    assert rows["gw-1"]["connections"] == 5.0
    assert rows["gw-1"]["publishes_per_s"] == pytest.approx(2.0, rel=0.05)
    assert rows["gw-1"]["ack_p99_ms"] == 6.0 and rows["gw-1"]["ack_p50_ms"] == 4.0
    assert rows["c-1"]["rss_mb"] == 50.0 and rows["c-1"]["connections"] is None
    text = render(list(rows.values()), port=8125, packets=4)
    assert "gw-1" in text and "consumers" in text


# -- SLOs ----------------------------------------------------------------------------------------------
def _points(*lines: tuple[str, float]) -> Collector:
    collector = Collector()
    for text, at in lines:
        collector.add(parse_datagram(text, at=at))
    return collector


def test_ratio_slis_count_good_over_total_events() -> None:
    defs = load()
    collector = _points(("storm.gateway.connects:998|c|#result:ok", 0),
                        ("storm.gateway.connects:2|c|#result:internal", 0),
                        ("storm.gateway.connects:500|c|#result:unauthenticated", 0),  # the client's fault: not counted
                        ("storm.commands:10000|c|#op:publish,result:ok", 0),
                        ("storm.consumer.dead_lettered:1|c", 0))
    results = {r.id: r for r in evaluate(defs, collector)}
    assert results["connect_success"].value == pytest.approx(99.8) and results["connect_success"].met is False
    assert results["acked_delivered"].value == pytest.approx(99.99) and results["acked_delivered"].met is True
    missing = {r.id: r for r in evaluate(defs, collector, extra_bad={"acked_delivered": 5})}
    assert missing["acked_delivered"].met is False
    assert results["reconnect_steady"].value is None and results["reconnect_steady"].met is None  # no data
    with pytest.raises(SloError):
        evaluate(defs, collector, extra_bad={"nope": 1})


def test_threshold_slis_are_the_share_of_good_slices() -> None:
    defs = load()
    slow = ":".join(["500"] * 5)
    collector = _points(("storm.publish.ack_latency:" + ":".join(["10"] * 100) + "|d", 0),   # slice 0: good
                        ("storm.publish.ack_latency:" + ":".join(["20"] * 100) + "|d", 301),  # slice 1: good
                        ("storm.publish.ack_latency:" + ":".join(["10"] * 95) + ":" + slow + "|d", 601))  # bad
    result = {r.id: r for r in evaluate(defs, collector)}["publish_ack_p99"]
    assert result.total == 3 and result.good == 2
    assert result.value == pytest.approx(200 / 3) and result.met is False


@pytest.mark.parametrize(("doc", "error"), [
    ({"window": "1d", "slos": []}, "window"),
    ({"window": "30d", "slos": []}, "no SLO"),
    ({"window": "30d", "slos": [{"id": "A", "name": "a", "target": 99, "sli": {"kind": "ratio"}}]}, "unique"),
    ({"window": "30d", "slos": [{"id": "a", "name": "a", "target": 100, "sli": {"kind": "ratio"}}]}, "target"),
    ({"window": "30d", "slos": [{"id": "a", "name": "a", "target": 99, "sli": {"kind": "ratio", "good": ["x{y}"],
                                                                            "total": ["x"]}}]}, "bad tag filter"),
    ({"window": "30d", "slos": [{"id": "a", "name": "a", "target": 99, "sli": {"kind": "threshold", "metric": "m",
                                                                            "threshold_ms": 1, "slice_s": 10}}]},
     "slice_s"),
])
def test_a_malformed_slo_file_is_refused_with_the_reason(doc: dict[str, object], error: str) -> None:
    with pytest.raises(SloError, match=error):
        parse(doc)


def test_terms_parse_signs_and_alternatives() -> None:
    term = Term.parse("-storm.gateway.connects{result:ok|internal,code:1}")
    assert term.sign == -1 and term.metric == "storm.gateway.connects"
    assert term.tags == (("result", ("ok", "internal")), ("code", ("1",)))
    assert term.matches(Point("storm.gateway.connects", "count", 1, ("result:internal", "code:1")))
    assert not term.matches(Point("storm.gateway.connects", "count", 1, ("result:origin", "code:1")))


# -- the generated Terraform and docs -------------------------------------------------------------------
def test_checked_in_terraform_and_docs_are_what_the_generator_writes() -> None:
    for name, text in datadog_tf.files().items():
        assert (TF / name).read_text() == text, f"terraform/datadog/{name} is stale: python -m storm_tools.datadog_tf"
    assert {p.name for p in TF.glob("*.tf.json")} == set(datadog_tf.files())
    doc = datadog_tf.DOC.read_text()
    assert datadog_tf.render_doc(doc) == doc, "docs/observability.md is stale: python -m storm_tools.datadog_tf"
    assert markdown_table() in doc


def test_every_metric_named_in_an_slo_monitor_or_dashboard_is_in_the_catalogue() -> None:
    named: set[str] = set(load().metrics())
    for path in TF.glob("*.tf.json"):
        named |= set(METRIC_NAME.findall(path.read_text()))
    assert len(named) > 15  # the scan really saw the queries
    assert named <= set(BY_NAME), sorted(named - set(BY_NAME))


def test_the_terraform_parses_and_holds_the_objects_the_issue_asks_for() -> None:
    docs = {p.name: json.loads(p.read_text()) for p in TF.glob("*.tf.json")}
    slos = docs["slos.tf.json"]["resource"]["datadog_service_level_objective"]
    defs = load()
    assert set(slos) == {s.id for s in defs.slos}
    for slo in defs.slos:
        body = slos[slo.id]
        assert body["thresholds"] == [{"timeframe": "30d", "target": slo.target}]
        if slo.kind == "ratio":
            assert body["type"] == "metric" and body["query"]["numerator"] and body["query"]["denominator"]
        else:
            spec = body["sli_specification"]["time_slice"]
            assert body["type"] == "time_slice" and spec["threshold"] == slo.threshold_ms
            assert spec["query"]["query"][0]["metric_query"]["query"].startswith(f"p99:{slo.metric}")
    monitors = docs["monitors.tf.json"]["resource"]["datadog_monitor"]
    for slo in defs.slos:
        fast, slow = monitors[f"{slo.id}_burn_fast"], monitors[f"{slo.id}_burn_slow"]
        assert fast["type"] == slow["type"] == "slo alert"
        assert 'long_window("1h").short_window("5m") > 14.4' in fast["query"]
        assert 'long_window("6h").short_window("30m") > 6.0' in slow["query"]
        assert f"datadog_service_level_objective.{slo.id}.id" in fast["query"]
    for key in ("connections_drop", "loop_lag", "consumer_backlog", "dead_letters", "auth_failures",
                "reconnect_storm", "outbox_overflows"):
        assert monitors[key]["type"] == "query alert" and "Runbook:" in monitors[key]["message"]
    assert "< -20" in monitors["connections_drop"]["query"] and "> 100" in monitors["loop_lag"]["query"]
    board = json.loads(docs["dashboard.tf.json"]["resource"]["datadog_dashboard_json"]["storm"]["dashboard"])
    kinds = [w["definition"]["type"] for w in board["widgets"]]
    assert kinds.count("slo") == len(defs.slos) and kinds.count("timeseries") >= 12
    queries = " ".join(r["q"] for w in board["widgets"] for r in w["definition"].get("requests", ()))
    for needle in ("p50:storm.delivery.latency", "p99:storm.publish.ack_latency", "storm.gateway.resumes",
                   "storm.consumer.backlog", "storm.process.loop_lag", "storm.process.rss", "storm.process.cpu"):
        assert needle in queries


def test_terraform_parses_the_configuration_and_fmt_check_passes() -> None:
    """Where a terraform or tofu binary exists (issue 10; tests/support/ci.py's rule: not skipped under CI).
    ``fmt -check`` covers only ``.tf`` files (it skips ``.tf.json``), so ``terraform providers`` is run too: it
    parses every file of the configuration, expressions and references included, offline and writing nothing."""
    binary = shutil.which("terraform") or shutil.which("tofu")
    if binary is None:
        unavailable("no terraform or tofu binary on this machine", needed_by="Terraform")
    parsed = subprocess.run([binary, f"-chdir={TF}", "providers", "-no-color"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert parsed.returncode == 0 and "datadog/datadog" in parsed.stdout, parsed.stdout + parsed.stderr
    done = subprocess.run([binary, "fmt", "-check", "-recursive", str(TF)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


# -- structured logs -----------------------------------------------------------------------------------
def _json_line(record_args: dict[str, object], **fmt: str) -> dict[str, object]:
    formatter = JsonFormatter(service=fmt.get("service", "gateway"), env=fmt.get("env", "prod"),
                              version=fmt.get("version", "abc123"))
    record = logging.LogRecord(name="storm.session", level=logging.WARNING, pathname=__file__, lineno=1,
                               msg=record_args["msg"], args=record_args.get("args", ()), exc_info=None)  # type: ignore[arg-type]
    for key, value in record_args.get("extra", {}).items():  # type: ignore[attr-defined]
        setattr(record, key, value)
    line = formatter.format(record)
    assert "\n" not in line
    return json.loads(line)  # type: ignore[no-any-return]


def test_json_logs_carry_datadogs_attributes_and_the_session() -> None:
    doc = _json_line({"msg": "presence refresh failed ws=%s session=%s: %s",
                      "args": ("acme", "0123456789abcdef0123456789abcdef", "timeout")})
    assert doc["status"] == "warning" and doc["logger"] == {"name": "storm.session", "thread_name": "MainThread"}
    assert doc["service"] == "gateway" and doc["env"] == "prod" and doc["version"] == "abc123"
    assert doc["ddtags"] == "env:prod,version:abc123"
    assert doc["session_id"] == "0123456789abcdef0123456789abcdef" and doc["workspace"] == "acme"
    assert str(doc["message"]).endswith("timeout") and str(doc["timestamp"]).endswith("+00:00")
    assert _json_line({"msg": "x", "extra": {"request_id": "r-1"}})["request_id"] == "r-1"


def test_json_logs_keep_secrets_redacted() -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
    logger = logging.getLogger("storm.test.jsonlogs")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    logger.propagate = False
    try:
        assert configure({"STORM_LOG_FORMAT": "json", "DD_ENV": "staging"}, service="api", logger=logger) == "json"
        try:
            raise ValueError(f"bad token {token}")
        except ValueError:
            logger.exception("auth failed with Authorization: Bearer %s", token)
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    out = stream.getvalue()
    assert token not in out
    doc = json.loads(out)
    assert doc["service"] == "api" and doc["env"] == "staging" and doc["status"] == "error"
    assert doc["error"]["kind"] == "ValueError" and "[redacted]" in doc["error"]["stack"]


def test_an_unknown_log_format_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="STORM_LOG_FORMAT"):
        configure({"STORM_LOG_FORMAT": "xml"}, service="api", logger=logging.getLogger("storm.test.nofmt"))


# -- the gateway's hooks: write latencies end at the writer's pass; delivery latency is sampled -----------
async def test_after_pass_runs_once_the_pass_wrote_what_was_queued() -> None:
    from gateway.outbox import Flusher, Outbox

    written: list[bytes] = []
    order: list[str] = []

    async def send(frame: bytes) -> None:
        written.append(frame)
        order.append("write")

    flusher = Flusher(0.01)
    box = Outbox(send, lambda: None, max_events=10, max_bytes=1000, coalesce_max_bytes=1000, flusher=flusher)
    box.push(b"ack")
    flusher.after_pass(lambda: order.append("after"))
    assert order == []  # nothing before the pass
    await asyncio.sleep(0.05)
    assert order == ["write", "after"] and written == [b"ack"]
    flusher.after_pass(lambda: order.append("alone"))  # nothing queued: a pass is scheduled anyway
    await asyncio.sleep(0.05)
    assert order[-1] == "alone"
    flusher.close()


async def test_an_overflow_is_counted_on_the_flusher() -> None:
    from gateway.outbox import Flusher, Outbox

    async def send(frame: bytes) -> None:  # never called: the pass is a minute away
        raise AssertionError

    flusher = Flusher(60)
    overflowed: list[int] = []
    box = Outbox(send, lambda: overflowed.append(1), max_events=1, max_bytes=1000, coalesce_max_bytes=1000,
                 flusher=flusher)
    assert box.push(b"one") and not box.push(b"two")
    assert flusher.overflows == 1 and overflowed == [1]
    flusher.close()


def test_the_hub_samples_at_most_twenty_records_a_second_for_delivery_latency() -> None:
    from gateway.hub import Hub
    from storm.ports.broker import Record
    from storm.ports.clock import ManualClock

    hub = Hub(None, ManualClock())  # type: ignore[arg-type]  # fan-out only: no broker call
    sampled: list[float] = []
    hub.on_delivered = sampled.append
    hub._groups[("acme", "c1")] = {type("S", (), {"on_channel_event": lambda *a: None})()}
    for i in range(100):  # 100 records appended over one second
        hub._on_record(Record("acme", "c1", i + 1, b"{}", 1_700_000_000.0 + i / 100))
    hub._on_record(Record("acme", "c1", 101, b"{}", 0.0))  # no broker time: never sampled
    assert 15 <= len(sampled) <= 20 and sampled[0] == 1_700_000_000.0
    assert hub.deliveries == 101


class _CountingProcess:
    """psutil.Process's three readings, counting the descriptor listings."""

    def __init__(self, fds: int | None) -> None:
        self.fds, self.listings = fds, 0

    def cpu_percent(self, interval: None) -> float:
        return 12.5

    def memory_info(self) -> object:
        return type("Mem", (), {"rss": 4096})()

    def num_fds(self) -> int:
        self.listings += 1
        if self.fds is None:
            raise AttributeError("num_fds")  # psutil on a platform without it
        return self.fds


def test_open_descriptors_are_listed_at_most_every_fifteen_seconds_and_repeated_between(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Listing /proc/self/fd costs ~1 µs per descriptor (7 % of a gateway at 6 000 sockets when read every
    second): the gauge lists them again only when its last listing is 15 s old."""
    import storm.metrics as metrics_module
    from storm.adapters import process_metrics

    now = [100.0]
    monkeypatch.setattr(metrics_module.time, "monotonic", lambda: now[0])
    proc = _CountingProcess(6000)
    sink = ListSink()
    metrics = Metrics(sink)
    process_metrics.install(metrics, process=proc)  # type: ignore[arg-type]

    def fds() -> list[float]:
        return [v for kind, name, v, _ in sink.calls if name == "storm.process.open_fds"]

    for _ in range(10):  # ten one-second flushes: one listing
        metrics.flush()
        proc.fds += 1
        now[0] += 1.0
    assert proc.listings == 1 and fds() == [6000.0] * 10
    now[0] += 5.0  # 15 s after the listing
    metrics.flush()
    assert proc.listings == 2 and fds()[-1] == 6010.0
    assert [v for kind, name, v, _ in sink.calls if name == "storm.process.rss"][-1] == 4096.0


def test_open_descriptors_on_a_platform_without_them_are_not_sent_nor_asked_again_before_their_time() -> None:
    from storm.adapters import process_metrics

    proc = _CountingProcess(None)
    sink = ListSink()
    metrics = Metrics(sink)
    process_metrics.install(metrics, process=proc)  # type: ignore[arg-type]
    metrics.flush()
    metrics.flush()
    assert proc.listings == 1
    assert not [c for c in sink.calls if c[1] == "storm.process.open_fds"]
    assert [c[2] for c in sink.calls if c[1] == "storm.process.cpu"] == [12.5, 12.5]
