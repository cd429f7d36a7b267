"""A gateway's channel reader misses nothing published after a Pulsar broker restart.

Found by the `pulsar-restart` chaos experiment (chaos-experiments/pulsar-restart.json, run of 19:18 UTC): the
members of a channel never got the channel's first messages published once the broker was back (104
deliveries of acked, stored messages missing), while they got every later one.  A broadcast reader was
created at ``MessageId.latest``; one that had received nothing yet when the broker went away subscribed again
at *latest* when its client reconnected, so what was published between the broker's return and the reader's
reconnect (the client's backoff: seconds) was skipped.  Readers now start at the channel's last position
read when they are added (storm/adapters/pulsar_broker.py, ``PulsarBroadcastSubscription._reader``), which a
reconnect resumes from.

This test stops and starts the shared Pulsar with scripts/services.sh, as the chaos experiment does (run it
on a services instance of your own: chaos-experiments/README.md).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from storm.domain import PLANS
from storm.ports.broker import Record
from tests.support.ci import unavailable
from tests.support.pulsar import workspace_broker

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "services.sh"
DELIVERY_S = 120.0  # the reader's client reconnects with a backoff of up to a minute


def _services(action: str) -> None:
    out = subprocess.run(["bash", str(SCRIPT), action, "pulsar"], cwd=ROOT, capture_output=True, text=True,
                         timeout=400, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


async def test_a_followed_channel_with_no_message_yet_misses_nothing_published_after_a_broker_restart(
        pulsar_urls: tuple[str, str]) -> None:
    services_dir = Path(os.environ.get("STORM_SERVICES_DIR", ROOT / ".services"))
    if not (services_dir / "pulsar.pid").is_file():
        unavailable("Pulsar is not managed by scripts/services.sh here", needed_by="service")
    workspace, channel, followed_empty = f"t-{uuid.uuid4().hex[:12]}", str(uuid.uuid4()), str(uuid.uuid4())
    gateway = workspace_broker(pulsar_urls, workspace)
    await gateway.start()
    got: dict[str, list[int]] = {channel: [], followed_empty: []}

    def handler(record: Record) -> None:
        if record.offset:  # ephemeral records have none
            got[record.channel].append(record.offset)

    try:
        await gateway.ensure_workspace(workspace, PLANS["free"])
        await gateway.ensure_channel(workspace, channel)
        await gateway.ensure_channel(workspace, followed_empty)
        before = await gateway.publish(workspace, channel, b'{"n":0}')
        sub = await gateway.subscribe_broadcast(handler)
        await sub.add(workspace, channel)
        await sub.add(workspace, followed_empty)  # never received anything before the restart
        await gateway.publish(workspace, channel, b'{"n":1}')  # this one's reader has received one
        deadline = time.monotonic() + 30
        while len(got[channel]) < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert got[channel] and got[channel][0] > before

        await asyncio.to_thread(_services, "down")
        await asyncio.to_thread(_services, "up")
        publisher = workspace_broker(pulsar_urls, workspace)  # a fresh client: connected long before the reader's
        await publisher.start()
        try:
            sent = {channel: [], followed_empty: []}  # type: dict[str, list[int]]
            for i in range(10):
                for ch in sent:
                    sent[ch].append(await publisher.publish(workspace, ch, b'{"n":%d}' % (i + 2)))
        finally:
            await publisher.stop()
        deadline = time.monotonic() + DELIVERY_S
        while any(not set(sent[ch]) <= set(got[ch]) for ch in sent) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        for ch in sent:
            missing = sorted(set(sent[ch]) - set(got[ch]))
            assert not missing, f"{len(missing)} of {len(sent[ch])} published after the restart never delivered"
            assert got[ch] == sorted(set(got[ch])), "offsets delivered twice or out of order"
        await sub.close()
    finally:
        await gateway.delete_workspace(workspace)
        await gateway.stop()
