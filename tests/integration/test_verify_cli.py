"""`storm verify delivery --json` as a user runs it (docs/delivery.md, "storm verify delivery"): a child
process against the real services, killing a gateway of its own midway; and its refusal of bad arguments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from db.admin import create_database, drop_database
from storm_cli.main import main

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.parametrize(("argv", "complaint"), [
    (["--messages", "1"], "--messages must be at least 2"),
    (["--rate", "0"], "--rate must be a positive number"),
    (["--rate", "nan"], "--rate must be a positive number"),
    (["--listeners", "-1"], "--listeners must not be negative"),
    (["--timeout", "-5"], "--timeout must be a positive number"),
])
def test_bad_arguments_exit_2_with_the_flag_named(argv: list[str], complaint: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", "delivery", "--json", *argv]) == 2
    assert complaint in capsys.readouterr().err


@pytest.mark.integration
async def test_verify_delivery_prints_zeros_where_zeros_are_promised(
        pg_url: str, pulsar_urls: tuple[str, str], hazelcast_members: str) -> None:
    database_url = await create_database(pg_url, f"storm_verify_{uuid.uuid4().hex[:10]}")
    env = {**os.environ, "STORM_DATABASE_URL": database_url, "STORM_PULSAR_URL": pulsar_urls[0],
           "STORM_PULSAR_ADMIN_URL": pulsar_urls[1], "STORM_HAZELCAST_MEMBERS": hazelcast_members}
    try:
        proc = subprocess.run([sys.executable, "-m", "storm_cli", "verify", "delivery", "--json", "--messages",
                               "150", "--rate", "300"], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=300, check=False)
    finally:
        await drop_database(database_url)
    assert proc.returncode == 0, f"stdout: {proc.stdout}\nstderr: {proc.stderr[-3000:]}"
    result = json.loads(proc.stdout)
    assert {"acked", "delivered", "lost", "duplicates", "inversions", "reconnect_s_p99"} <= set(result)
    assert result["acked"] == 300 and result["delivered"] == result["members"] * 300
    assert (result["lost"], result["duplicates"], result["inversions"]) == (0, 0, 0)
    assert result["log_checked"] is True and result["same_order"] is True
