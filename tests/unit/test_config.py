"""Configuration: parsing, validation with errors that name the variable, and the docs table."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from storm.config import Config, ConfigError, settings_table

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_defaults_are_valid_and_embedded():
    cfg = Config.from_env({})
    assert cfg.mode == "embedded" and cfg.broker == "memory" and cfg.identity == "dev"


def test_values_are_parsed_by_type():
    cfg = Config.from_env({"STORM_PORT": "9001", "STORM_IDLE_TIMEOUT_S": "90.5", "STORM_SEED_DEMO": "yes"})
    assert cfg.port == 9001 and cfg.idle_timeout_s == 90.5 and cfg.seed_demo is True


@pytest.mark.parametrize(("env", "needle"), [
    ({"STORM_PORT": "eighty"}, "STORM_PORT"),
    ({"STORM_SEED_DEMO": "maybe"}, "STORM_SEED_DEMO"),
    ({"STORM_BROKER": "kafka"}, "STORM_BROKER"),
    ({"STORM_MODE": "production"}, "STORM_IDENTITY=dev is refused"),
    ({"STORM_DEV_SECRET": "short"}, "STORM_DEV_SECRET"),
    ({"STORM_MAX_FRAME_BYTES": "0"}, "STORM_MAX_FRAME_BYTES"),
    ({"STORM_HEARTBEAT_S": "70"}, "STORM_HEARTBEAT_S"),
])
def test_bad_settings_fail_with_the_variable_named(env, needle):
    with pytest.raises(ConfigError, match=needle):
        Config.from_env(env)


def test_docs_table_lists_every_setting_with_its_default():
    text = DOC.read_text()
    for env, default, _ in settings_table():
        assert f"| `{env}` | `{default}` |" in text, f"{env} missing or stale in docs/configuration.md"


# -- per-adapter settings: the bootstrap builds each adapter's own settings from the Config -------------------
def test_pulsar_settings_come_from_the_pulsar_and_consumer_variables():
    from storm.bootstrap import pulsar_settings

    cfg = Config.from_env({"STORM_PULSAR_URL": "pulsar://p:6651", "STORM_PULSAR_ADMIN_URL": "http://p:8081",
                           "STORM_PULSAR_CLUSTER": "eu", "STORM_GATEWAY_ID": "gw-1",
                           "STORM_MAX_CHANNEL_READERS": "7", "STORM_ACK_TIMEOUT_S": "3",
                           "STORM_CONSUMER_MAX_REDELIVERIES": "4", "STORM_PUBLISH_TIMEOUT_S": "2.5"})
    s = pulsar_settings(cfg)
    assert (s.service_url, s.admin_url, s.cluster, s.gateway_id) == ("pulsar://p:6651", "http://p:8081", "eu", "gw-1")
    assert (s.max_channel_readers, s.ack_timeout_s, s.max_redeliveries, s.send_timeout_s) == (7, 3.0, 4, 2.5)


def test_hazelcast_settings_split_the_member_list():
    from storm.bootstrap import hazelcast_settings

    s = hazelcast_settings(Config.from_env({"STORM_HAZELCAST_MEMBERS": " a:5701, b:5702 ,,",
                                            "STORM_HAZELCAST_CLUSTER": "c1"}))
    assert s.members == ("a:5701", "b:5702") and s.cluster == "c1"
    with pytest.raises(ConfigError, match="STORM_HAZELCAST_MEMBERS must name at least one"):
        hazelcast_settings(Config.from_env({"STORM_HAZELCAST_MEMBERS": " , "}))


def test_auth0_settings_derive_issuer_and_jwks_from_the_domain_unless_given():
    from storm.bootstrap import auth0_settings

    base = {"STORM_IDENTITY": "auth0", "STORM_AUTH0_AUDIENCE": "api", "STORM_AUTH0_DOMAIN": "t.eu.auth0.com/",
            "STORM_AUTH0_REQUIRED_SCOPES": "chat  admin", "STORM_AUTH0_LEEWAY_S": "5"}
    s = auth0_settings(Config.from_env(base))
    assert s.issuer == "https://t.eu.auth0.com/" and s.jwks_url == "https://t.eu.auth0.com/.well-known/jwks.json"
    assert s.audience == "api" and s.required_scopes == frozenset({"chat", "admin"}) and s.leeway_s == 5.0
    s = auth0_settings(Config.from_env({**base, "STORM_AUTH0_ISSUER": "https://id.example/",
                                        "STORM_AUTH0_JWKS_URL": "https://id.example/keys"}))
    assert (s.issuer, s.jwks_url) == ("https://id.example/", "https://id.example/keys")


def test_adapters_take_their_settings_not_the_config():
    """Nothing under storm/adapters imports storm.config: the bootstrap is the one reader of the Config."""
    adapters = Path(__file__).resolve().parents[2] / "storm" / "adapters"
    imports = re.compile(r"^\s*(from storm\.config import|import storm\.config)", re.MULTILINE)
    readers = [p.name for p in adapters.glob("*.py") if imports.search(p.read_text())]
    assert readers == []
