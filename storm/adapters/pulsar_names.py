"""Topic names and offsets of the Pulsar broker adapter (docs/adr/0005-pulsar-broker.md).

An offset is a Pulsar position packed into one integer: ``(ledger_id << 20) | entry_id``.  Producers
never batch (every message is its own entry, batch index -1) and topics are never partitioned, so the
position alone identifies a record.  Offsets of a channel are strictly increasing (ledger ids grow, entry
ids grow inside a ledger) but not dense: the jump at each ledger boundary is the gap.  They stay below
2**53 (exact in JavaScript numbers) while ledger ids are below 2**33.
"""

from __future__ import annotations

import re

from storm.adapters.pulsar_admin import CHANNELS_NS, EPHEMERAL_NS
from storm.errors import BadRequest, StormError

ENTRY_BITS = 20
ENTRY_MASK = (1 << ENTRY_BITS) - 1
MAX_LEDGER = (1 << 33) - 1
FIRST_REAL_OFFSET = 1 << ENTRY_BITS  # offsets below it (ledger 0) are never handed out; they mean "from the start"
# Channel ids are hex UUIDs; a topic's local name may not contain '/' and dead-letter topics use '.'
CHANNEL_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class OffsetOverflow(StormError):
    """A Pulsar position that does not fit the offset encoding (entry id ≥ 2**20 or ledger id ≥ 2**33)."""

    code = "internal"


def encode_offset(ledger_id: int, entry_id: int) -> int:
    if not 0 <= entry_id <= ENTRY_MASK:
        raise OffsetOverflow(
            f"entry id {entry_id} does not fit in {ENTRY_BITS} bits: the broker must roll ledgers before "
            f"{ENTRY_MASK + 1} entries (managedLedgerMaxEntriesPerLedger)"
        )
    if not 0 <= ledger_id <= MAX_LEDGER:
        raise OffsetOverflow(f"ledger id {ledger_id} does not fit the 53-bit offset encoding")
    return (ledger_id << ENTRY_BITS) | entry_id


def decode_offset(offset: int) -> tuple[int, int]:
    return offset >> ENTRY_BITS, offset & ENTRY_MASK


def check_channel(channel: str) -> str:
    if not CHANNEL_RE.fullmatch(channel):
        raise BadRequest(f"channel id {channel!r} is not a valid Pulsar topic name", field="channel")
    return channel


def channel_topic(workspace: str, channel: str) -> str:
    return f"persistent://{workspace}/{CHANNELS_NS}/{check_channel(channel)}"


def ephemeral_topic(workspace: str, channel: str) -> str:
    return f"non-persistent://{workspace}/{EPHEMERAL_NS}/{check_channel(channel)}"


def dead_letter_topic(workspace: str, subscription: str) -> str:
    return f"persistent://{workspace}/{CHANNELS_NS}/{subscription}.dlq"


def channels_pattern(workspace: str) -> str:
    """Every channel topic of a workspace; not its dead-letter topics (names with a dot) nor system topics (`__…`)."""
    # no '/' inside the regex: the client parses the pattern as a topic name to find the namespace
    return f"persistent://{workspace}/{CHANNELS_NS}/[^._][^.]*"


def split_topic(topic: str) -> tuple[str, str]:
    """``persistent://ws/channels/ch`` (with or without ``-partition-N``) -> (ws, ch)."""
    rest = topic.split("://", 1)[-1]
    workspace, _ns, channel = rest.split("/", 2)
    return workspace, channel
