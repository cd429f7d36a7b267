"""Configuration: parsing, validation with errors that name the variable, and the docs table."""

from __future__ import annotations

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
