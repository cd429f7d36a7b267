"""The DogStatsD adapter against a real UDP socket: what `Metrics.flush` hands it arrives as DogStatsD lines
with the process tags, and nothing of the client's own telemetry (docs/observability.md)."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from storm.adapters.dogstatsd_metrics import DogStatsdMetrics, DroppedPacketLog, Target
from storm.bootstrap import build_services
from storm.config import Config, ConfigError
from storm.metrics import Metrics
from storm_tools.statsd import Collector, listen


async def _received(collector: Collector, name: str) -> None:
    for _ in range(100):
        if collector.select(name):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{name} never arrived; got {sorted(collector.names())}")


async def test_flushed_metrics_arrive_with_the_process_tags_and_no_client_telemetry() -> None:
    collector = Collector()
    transport, port = await listen(collector, "127.0.0.1", 0)
    sink = DogStatsdMetrics(Target("127.0.0.1", port), ["service:gateway", "instance:gw-1", "env:test"])
    metrics = Metrics(sink)
    try:
        metrics.counter("storm.gateway.connects", result="ok").value += 2
        metrics.gauge_of("storm.gateway.connections", lambda: 3)
        metrics.sample("storm.delivery.latency").add(12.5)
        metrics.flush()
        await _received(collector, "storm.delivery.latency")
        await _received(collector, "storm.gateway.connects")
    finally:
        sink.close()
        sink.close()  # idempotent
        transport.close()
    assert collector.total("storm.gateway.connects", result="ok", service="gateway", instance="gw-1") == 2
    assert collector.latest_gauge("storm.gateway.connections", env="test") == 3
    assert collector.values("storm.delivery.latency") == [12.5]
    assert all(not name.startswith("datadog.") for name in collector.names())  # telemetry off


@pytest.mark.parametrize(("url", "host", "port", "expected"), [
    ("", "", 8125, None),
    ("", "agent.local", 9125, Target("agent.local", 9125)),
    ("udp://10.0.0.5:8200", "ignored", 8125, Target("10.0.0.5", 8200)),
    ("udp://10.0.0.5", "", 8125, Target("10.0.0.5", 8125)),
    ("unix:///var/run/datadog/dsd.socket", "", 8125, Target(socket_path="/var/run/datadog/dsd.socket")),
])
def test_the_agent_address_comes_from_the_standard_variables(url: str, host: str, port: int,
                                                             expected: Target | None) -> None:
    assert Target.parse(url, host, port) == expected


def test_a_malformed_dogstatsd_url_is_a_configuration_error() -> None:
    cfg = Config.from_env({"DD_DOGSTATSD_URL": "http://agent:8125"})
    with pytest.raises(ConfigError, match="DD_DOGSTATSD_URL"):
        build_services(cfg)


def test_metrics_are_off_without_an_agent_and_on_with_one() -> None:
    assert not build_services(Config.from_env({})).metrics.enabled
    services = build_services(Config.from_env({"DD_AGENT_HOST": "127.0.0.1", "DD_DOGSTATSD_PORT": "9",
                                               "STORM_GATEWAY_ID": "gw-7", "DD_ENV": "prod"}), role="gateway")
    try:
        assert services.metrics.enabled
        tags = list(services.metrics.sink._client.constant_tags)  # type: ignore[attr-defined]
        assert {"service:gateway", "instance:gw-7", "env:prod"} <= set(tags)
    finally:
        services.metrics.sink.close()


def _unused_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_an_agent_that_does_not_listen_costs_one_warning_not_one_per_flush(caplog) -> None:
    """Nobody on the port: every send is refused (ICMP port unreachable on loopback).  The client warns once
    per failed send; the adapter lets one through (the chaos cluster's log had 524 of them in one run)."""
    sink = DogStatsdMetrics(Target("127.0.0.1", _unused_udp_port()), ["service:gateway"])
    metrics = Metrics(sink)
    caplog.set_level(logging.WARNING, logger="datadog.dogstatsd")
    try:
        for i in range(20):
            metrics.counter("storm.gateway.connects", result="ok").value += i + 1
            metrics.flush()
            await asyncio.sleep(0.02)
    finally:
        sink.close()
    refused = [r for r in caplog.records if r.name == "datadog.dogstatsd" and "submitting packet" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in refused]


def test_the_dropped_packet_warning_comes_once_a_minute_with_the_count_held_back() -> None:
    now = [0.0]
    limiter = DroppedPacketLog(every_s=60, clock=lambda: now[0])

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("datadog.dogstatsd", logging.WARNING, __file__, 1, msg, None, None)

    dropped = "Error submitting packet: %s, dropping the packet and closing the socket"
    assert limiter.filter(record(dropped))
    assert [limiter.filter(record(dropped)) for _ in range(5)] == [False] * 5
    assert limiter.filter(record("something else"))  # other warnings of the client pass
    now[0] = 61.0
    late = record(dropped)
    assert limiter.filter(late)
    assert "5 more such packets dropped" in late.msg


async def test_the_metrics_port_is_held_from_the_topology_start_until_storm_day_listens_on_it(
        tmp_path: object) -> None:
    """storm day picked the port when it started the topology and bound it only after provisioning (minutes
    at 100 000 users): meanwhile a process's DogStatsD client took it as its ephemeral source port, and the
    run died on EADDRINUSE (2026-12-08).  The session now binds it at once and hands that socket over,
    emptied of what the processes sent before the run."""
    import argparse
    from pathlib import Path

    from storm_tools.chaos.runner import Session, _reserve_udp_port

    session = Session(argparse.Namespace(), Path(str(tmp_path)))
    session.metrics_socket = _reserve_udp_port()  # what open() does before starting the processes
    port = session.metrics_socket.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        with pytest.raises(OSError):
            other.bind(("127.0.0.1", port))  # nobody else gets it meanwhile
        other.sendto(b"storm.gateway.connects:5|c|#result:ok", ("127.0.0.1", port))  # before the run
        await asyncio.sleep(0.05)
        held = session.take_metrics_socket()
        assert held is not None and session.take_metrics_socket() is None
        collector = Collector()
        transport, bound = await listen(collector, sock=held)
        try:
            assert bound == port
            other.sendto(b"storm.gateway.connects:2|c|#result:ok", ("127.0.0.1", port))
            await _received(collector, "storm.gateway.connects")
        finally:
            transport.close()
    assert collector.total("storm.gateway.connects", result="ok") == 2  # the earlier datagram was dropped
    session.release_metrics_port()  # nothing held any more: a no-op
