"""The services `scripts/services.sh` runs for the tests and `make run-cluster` (docs/operations.md).

* the script is idempotent: a second `up` reuses the running Pulsar and Hazelcast (same PIDs) and `status`
  says they run;
* they listen on 127.0.0.1 only and never on port 8000 (STORM's dev server);
* Pulsar: the admin API answers, a message makes the produce/consume round trip, and the broker rolls
  ledgers before entry ids reach 2^20 (the Pulsar adapter packs (ledgerId, entryId) into one offset);
* Hazelcast: a map put/get round trip in cluster `storm`.

The service fixtures (tests/conftest.py) skip these tests locally when nothing answers and fail them under
CI=true.  Topic and map names are unique per test run.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
import uuid
import warnings
from pathlib import Path

import psutil
import pytest

from tests.support.ci import unavailable

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "services.sh"
DEV_SERVER_PORT = 8000
ENTRY_ID_LIMIT = 1 << 20


def _services_dir() -> Path:
    return Path(os.environ.get("STORM_SERVICES_DIR", ROOT / ".services"))


def _script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False)


def _managed_pid(name: str) -> int:
    """The PID services.sh recorded for `name`; skip (fail under CI) when the script does not manage it."""
    pid_file = _services_dir() / f"{name}.pid"
    if not pid_file.is_file():
        reason = f"{name} is not managed by scripts/services.sh here (no {pid_file})"
        unavailable(reason, needed_by="service")
    return int(pid_file.read_text().strip())


def _get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.mark.parametrize("service", ["pulsar", "hazelcast"])
def test_second_up_reuses_the_running_service(service: str, pulsar_urls: tuple[str, str],
                                              hazelcast_members: str) -> None:
    pid = _managed_pid(service)

    again = _script("up", service)

    assert again.returncode == 0, again.stderr
    assert f"{service} already running (pid {pid})" in again.stdout
    assert _managed_pid(service) == pid
    status = _script("status", service)
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"{service} running (pid {pid}" in status.stdout


def test_env_prints_what_the_tests_connect_to(pulsar_urls: tuple[str, str], hazelcast_members: str) -> None:
    _managed_pid("pulsar")
    lines = dict(line.split("=", 1) for line in _script("env", "all").stdout.splitlines())

    assert set(lines) == {"STORM_TEST_PG_URL", "STORM_TEST_PULSAR_URL", "STORM_TEST_PULSAR_ADMIN_URL",
                          "STORM_TEST_HAZELCAST_MEMBERS", "STORM_TEST_TOXIPROXY_URL"}
    assert (lines["STORM_TEST_PULSAR_URL"], lines["STORM_TEST_PULSAR_ADMIN_URL"]) == pulsar_urls
    assert lines["STORM_TEST_HAZELCAST_MEMBERS"] == hazelcast_members
    assert lines["STORM_TEST_TOXIPROXY_URL"].startswith("http://127.0.0.1:")  # loopback only (chaos proxies)


@pytest.mark.parametrize("service", ["pulsar", "hazelcast"])
def test_service_listens_on_loopback_only_and_not_on_the_dev_port(service: str, pulsar_urls: tuple[str, str],
                                                                    hazelcast_members: str) -> None:
    process = psutil.Process(_managed_pid(service))
    listening = [c.laddr for c in process.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]

    assert listening, f"{service} listens on nothing"
    assert {address.ip for address in listening} == {"127.0.0.1"}
    assert DEV_SERVER_PORT not in {address.port for address in listening}


def test_pulsar_admin_answers(pulsar_urls: tuple[str, str]) -> None:
    _, admin_url = pulsar_urls

    tenants = _get_json(f"{admin_url}/admin/v2/tenants")

    assert isinstance(tenants, list) and "public" in tenants


def test_pulsar_rolls_ledgers_before_entry_ids_reach_2_pow_20(pulsar_urls: tuple[str, str]) -> None:
    _, admin_url = pulsar_urls

    config = _get_json(f"{admin_url}/admin/v2/brokers/configuration/runtime")

    assert isinstance(config, dict)
    assert 0 < int(config["managedLedgerMaxEntriesPerLedger"]) < ENTRY_ID_LIMIT
    # The entry limit only rolls a ledger once it is older than this (default 10 minutes).
    assert int(config["managedLedgerMinLedgerRolloverTimeMinutes"]) == 0


def test_pulsar_produce_consume_round_trip(pulsar_urls: tuple[str, str]) -> None:
    import pulsar

    service_url, _ = pulsar_urls
    topic = f"persistent://public/default/storm-services-test-{uuid.uuid4().hex[:12]}"
    client = pulsar.Client(service_url, operation_timeout_seconds=30,
                           logger=pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn))
    try:
        consumer = client.subscribe(topic, "round-trip", initial_position=pulsar.InitialPosition.Earliest)
        producer = client.create_producer(topic)
        sent = producer.send(b"hello storm", properties={"workspace": "w-test"})

        received = consumer.receive(timeout_millis=20_000)
        consumer.acknowledge(received)

        assert received.data() == b"hello storm"
        assert received.properties() == {"workspace": "w-test"}
        assert received.message_id().ledger_id() == sent.ledger_id()
        assert received.message_id().entry_id() == sent.entry_id()
    finally:
        client.close()


async def test_hazelcast_map_round_trip(hazelcast_members: str) -> None:
    with warnings.catch_warnings():
        # `import hazelcast` also loads the threaded client, which imports the deprecated stdlib asyncore.
        warnings.filterwarnings("ignore", message="The asyncore module is deprecated", category=DeprecationWarning)
        from hazelcast.asyncio import HazelcastClient
        from hazelcast.config import Config

    config = Config()
    config.cluster_name = "storm"
    config.cluster_members = [member.strip() for member in hazelcast_members.split(",")]
    config.cluster_connect_timeout = 20
    client = await HazelcastClient.create_and_start(config)
    try:
        values = await client.get_map(f"storm-services-test-{uuid.uuid4().hex[:12]}")
        await values.put("w-test:alice", "online")

        assert await values.get("w-test:alice") == "online"
        assert await values.get("w-test:bob") is None
        await values.destroy()
    finally:
        await client.shutdown()
