"""`consumers.persistence.handle` decodes the common ``message`` record on a fast path (ids decoded by
msgspec) and everything else on the general one; what is stored, skipped or dead-lettered must not depend
on the path (docs/consumers.md, "Throughput")."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

from consumers.persistence import handle
from storm.ports.broker import Delivery, Record

WS = "acme"
WS_ID = uuid.uuid4()
CHANNEL = str(uuid.uuid4())


def _delivery(event: dict[str, object], offset: int = 7) -> Delivery:
    return Delivery(Record(WS, CHANNEL, offset, json.dumps(event).encode(), 0.0), 1, None)


def _message(**fields: object) -> dict[str, object]:
    event: dict[str, object] = {"type": "message", "channel": CHANNEL, "id": str(uuid.uuid4()),
                                "author": str(uuid.uuid4()), "author_name": "Ann", "text": "hi", "ts": 1.5e9}
    event.update(fields)
    return event


def test_a_message_record_becomes_a_message_row() -> None:
    thread = uuid.uuid4()
    event = _message(cmid="c-1", thread=str(thread))
    handled = handle([_delivery(event)], {WS: WS_ID})
    assert handled.poison == []
    (msg,) = handled.plans[WS].messages
    assert (msg.id, msg.author_id, msg.thread_id) == (uuid.UUID(str(event["id"])), uuid.UUID(str(event["author"])),
                                                      thread)
    assert (msg.workspace_id, msg.channel_id, msg.body, msg.offset, msg.client_msg_id) == (
        WS_ID, uuid.UUID(CHANNEL), "hi", 7, "c-1")
    assert msg.created_at == datetime.fromtimestamp(1.5e9, UTC)


def test_ids_the_fast_decoder_refuses_are_read_as_before() -> None:
    mid = uuid.uuid4()
    handled = handle([_delivery(_message(id=f"urn:uuid:{mid}", thread=""))], {WS: WS_ID})
    assert handled.poison == []
    (msg,) = handled.plans[WS].messages
    assert (msg.id, msg.thread_id) == (mid, None)  # uuid.UUID reads the URN form; an empty thread is none


def test_bad_message_records_are_poison_on_either_path() -> None:
    bad_id = _delivery(_message(id="not-a-uuid"), 1)
    no_name = _delivery({k: v for k, v in _message().items() if k != "author_name"}, 2)
    bad_ts = _delivery(_message(ts="yesterday"), 3)
    handled = handle([bad_id, no_name, bad_ts], {WS: WS_ID})
    reasons = {d.record.offset: reason for d, reason in handled.poison}
    assert set(reasons) == {1, 2, 3}
    assert reasons[1].startswith("invalid ids in record")
    assert reasons[2].startswith("undecodable record") and reasons[3].startswith("undecodable record")
    assert not handled.plans.get(WS, None) or not handled.plans[WS].messages


def test_other_events_take_the_general_path() -> None:
    mid = uuid.uuid4()
    edit = _delivery({"type": "edit", "channel": CHANNEL, "id": str(mid), "author": str(uuid.uuid4()),
                      "text": "new", "ts": 2.0e9}, 1)
    typing = _delivery({"type": "typing", "channel": CHANNEL, "user": str(uuid.uuid4()), "name": "Ann"}, 2)
    handled = handle([edit, typing], {WS: WS_ID})
    assert handled.poison == []
    plan = handled.plans[WS]
    assert plan.edits == [(mid, "new", datetime.fromtimestamp(2.0e9, UTC))] and plan.messages == []
