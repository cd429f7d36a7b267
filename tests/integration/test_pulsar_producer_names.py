"""A publish goes through while the broker still holds a producer from an earlier, abandoned creation.

Found in the 100 000-user storm day (docs/storm-day.md, "Last measured run"): producer creations timed out
on the client (10 s operation timeout) while the stalled broker went on building them; the adapter's next
publish created the producer again under the same name, ``{gateway_id}-{channel}``, and the broker refused
it ``ProducerBusy`` ("Producer with name ... is already connected", 670 times for 1 009 producers created)
until it had finished and closed the abandoned one.  Each creation attempt now has a name of its own
(storm/adapters/pulsar_broker.py, ``_Producers``).

The abandoned creation is played by a second client connecting a producer under the adapter's old name.
"""

from __future__ import annotations

import uuid

import pulsar.asyncio as pulsar_async
import pytest

from storm.adapters.pulsar_names import channel_topic
from tests.support.pulsar import started_workspace

pytestmark = pytest.mark.integration


async def test_a_publish_is_not_refused_producer_busy_by_a_producer_left_from_an_abandoned_creation(
        pulsar_urls: tuple[str, str]) -> None:
    service_url, _ = pulsar_urls
    channel = str(uuid.uuid4())
    other = pulsar_async.Client(service_url)
    try:
        async with started_workspace(pulsar_urls) as (broker, workspace):
            leftover = await other.create_producer(channel_topic(workspace, channel),
                                                   producer_name=f"{broker.gateway_id}-{channel}",
                                                   batching_enabled=False)
            try:
                offset = await broker.publish(workspace, channel, b'{"n":1}')
            finally:
                await leftover.close()
            assert [r.offset for r in await broker.read(workspace, channel, 1, 10)] == [offset]
    finally:
        await other.close()
