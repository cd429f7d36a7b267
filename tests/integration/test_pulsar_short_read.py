"""A read that the broker does not carry up to the head it was given fails ``unavailable``; it never returns
a short list as if it were the whole gap.

Found reading the cluster log of a 20 000-user storm day after its Pulsar restart incident (2026-12-08):
resumes logged "read … nothing more within 5.0s (head …)" hundreds of times, and the adapter then returned
what it had read so far.  A resume's replay (storm/protocol/subscriptions.py, ``_missed``) took that for the
whole gap and told the client ``recovered: true`` over a hole; the cmid settlement (storm/protocol/claims.py)
took an empty page for "not in the log" and would have published the message a second time.  The log holds
every record up to a head the broker answered, so a reader that stops short was held up, and the caller
is now told so: the client asks again (the SDK retries a subscribe refused ``unavailable``).

The stalled broker is played by a head above the log's last record, which no reader can reach.
"""

from __future__ import annotations

import uuid

import pytest

from storm.errors import Unavailable
from tests.support.pulsar import started_workspace

pytestmark = pytest.mark.integration


async def test_a_read_held_up_before_the_head_is_unavailable_not_a_short_answer(
        pulsar_urls: tuple[str, str]) -> None:
    channel = str(uuid.uuid4())
    async with started_workspace(pulsar_urls, read_timeout_s=1.0) as (broker, workspace):
        offsets = [await broker.publish(workspace, channel, b'{"n":%d}' % n) for n in range(3)]
        head = await broker.head(workspace, channel)
        assert head == offsets[-1]
        whole = await broker.read(workspace, channel, offsets[0], 10, head=head)  # the log reaches the head
        assert [r.offset for r in whole] == offsets
        with pytest.raises(Unavailable, match=r"sent 2 records .* of those up to"):
            await broker.read(workspace, channel, offsets[1], 10, head=head + 1)  # it never comes
        assert [r.offset for r in await broker.read(workspace, channel, offsets[1], 1, head=head + 1)] == \
            offsets[1:2]  # a page that fills its limit is whole, whatever the head
