"""The pure parts of `storm cluster` (storm_cli/cluster.py): port lists, the cluster database URL, the plan of
child processes.  The processes themselves are exercised in tests/e2e/test_cluster.py."""

from __future__ import annotations

import argparse

import pytest

from db.admin import cluster_database_url
from storm_cli.cluster import plan_children, port_list
from storm_cli.main import build_parser


def test_port_list_parses_distinct_ports() -> None:
    assert port_list("8001,8002") == [8001, 8002]
    assert port_list(" 9001 ") == [9001]


@pytest.mark.parametrize("text", ["", "80a1", "8001,8001", "0", "70000", ","])
def test_port_list_refuses_bad_input(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        port_list(text)


def test_cluster_database_url_keeps_credentials_and_replaces_the_database() -> None:
    url = cluster_database_url("postgresql+asyncpg://storm:storm@127.0.0.1:55432/storm_test")

    assert url == "postgresql+asyncpg://storm:storm@127.0.0.1:55432/storm_cluster"


def test_plan_two_gateways_api_and_consumers_only_the_first_gateway_seeds() -> None:
    args = build_parser().parse_args(["cluster", "--gateway-ports", "9001,9002", "--api-port", "9003",
                                                "--consumers-port", "9004"])

    children = plan_children(args, {"STORM_BROKER": "pulsar"})

    assert [(c.name, c.role, c.port) for c in children] == [
        ("gateway-1", "gateway", 9001), ("gateway-2", "gateway", 9002), ("api", "api", 9003),
        ("consumers", "consumers", 9004)]
    assert [c.env["STORM_SEED_DEMO"] for c in children] == ["true", "false", "false", "false"]
    assert {c.env["STORM_GATEWAY_ID"] for c in children if c.role == "gateway"} == {"gateway-1", "gateway-2"}
    assert all(c.env["STORM_BROKER"] == "pulsar" for c in children)


def test_no_seed_means_no_process_seeds() -> None:
    args = build_parser().parse_args(["cluster", "--no-seed"])

    assert {c.env["STORM_SEED_DEMO"] for c in plan_children(args, {})} == {"false"}


def test_cli_rejects_a_bad_port_list_with_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["cluster", "--gateway-ports", "x"])

    assert exc.value.code == 2
    assert "comma-separated port numbers" in capsys.readouterr().err
