"""docs/api/asyncapi.yaml agrees with storm.protocol, so the published protocol and the code cannot drift.

* the document is AsyncAPI 3.0.0 with the expected channel, operations and messages, and its references
  resolve;
* the event types and ops it defines are exactly those of ``ServerEvent`` and ``OPS``; each payload
  schema has exactly the struct's fields, the same required fields and the same JSON types, and the
  command limits (lengths, patterns, ranges, defaults) equal the ``msgspec.Meta`` constraints;
* every event, encoded by the real encoder (all fields set, and only the required ones; channel events
  also with their offset spliced in), validates; a missing required field, a wrongly typed field or an
  unknown field is rejected;
* for commands, the schema and :func:`decode_command` accept and refuse the same frames;
* the examples in the document validate and are what the code produces;
* docs/protocol.md lists every error code and close code (with the right "reconnect" answer), and its
  example session is valid.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import msgspec.inspect as mi
import pytest

from storm.config import Config
from storm.domain import MAX_BODY_CHARS
from storm.protocol import commands as cmd
from storm.protocol import events as ev
from storm.protocol.codes import RECONNECTABLE, CloseCode, ErrorCode
from tests.support import asyncapi as spec

WS = "acme"
CH = "9b2e4c1a-5d3f-4e6a-8b7c-1d2e3f4a5b6c"
MSG = "7c3d4e5f-6a7b-4c8d-8e9f-1a2b3c4d5e6f"
MSG2 = "8d4e5f6a-7b8c-4d9e-9f0a-2b3c4d5e6f7a"
ALICE = "5a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
BOB = "6b2c3d4e-5f6a-4b7c-9d8e-0f1a2b3c4d5e"
TS = 1767225600.125
THUMBS = "\N{THUMBS UP SIGN}"


def _tag(cls: type[msgspec.Struct]) -> str:
    return str(cls.__struct_config__.tag)


EVENT_CLASSES: dict[str, type[msgspec.Struct]] = {_tag(c): c for c in typing.get_args(ev.ServerEvent)}
COMMAND_CLASSES: dict[str, type[msgspec.Struct]] = {_tag(c): c for c in typing.get_args(cmd.Command)}
CHANNEL_EVENTS = frozenset(_tag(c) for c in typing.get_args(ev.ChannelEvent))
NESTED = {"UserRef": ev.UserRef, "Limits": ev.Limits, "HistoryMessage": ev.HistoryMessage,
          "ChannelUnread": ev.ChannelUnread}

# ---- event samples: every field set to a non-default value, and only the required fields ----------------

LIMITS = ev.Limits(
    max_frame_bytes=65536, max_subscriptions=200, max_body_chars=4000, publish_rate=20.0, publish_burst=40,
    history_page_max=100, auth_timeout_s=5.0, idle_timeout_s=60.0,
)


def _history_message_full() -> ev.HistoryMessage:
    return ev.HistoryMessage(
        id=MSG, offset=42, author=ALICE, author_name="Alice", text="hello, everyone", ts=TS, cmid="c-01",
        thread=MSG2, edited_ts=TS + 10, deleted=True, reactions={THUMBS: 2, ":tada:": 1}, mine=[THUMBS],
    )


def _history_message_minimal() -> ev.HistoryMessage:
    return ev.HistoryMessage(id=MSG2, offset=40, author=BOB, author_name="Bob", text="", ts=TS - 10)


def _hello() -> ev.Hello:
    return ev.Hello(
        v=1, session="0f9e8d7c6b5a4f3e2d1c0b9a89786756", workspace=WS,
        user=ev.UserRef(id=ALICE, name="Alice"), heartbeat_s=25.0, limits=LIMITS,
    )


FULL: dict[str, Callable[[], msgspec.Struct]] = {
    "hello": _hello,
    "error": lambda: ev.Error(
        code=ErrorCode.BAD_REQUEST, message="Expected `str` of length <= 4000 - at `$.text`", id=3,
        field="text", channel=CH,
    ),
    "ack": lambda: ev.Ack(id=2, channel=CH, cmid="c-01", message_id=MSG, offset=42, duplicate=True),
    "subscribed": lambda: ev.Subscribed(channel=CH, offset=44, id=1, recovered=False, replayed=3, read=41,
                                        unread=2),
    "unsubscribed": lambda: ev.Unsubscribed(channel=CH, id=9, reason="removed"),
    "pong": lambda: ev.Pong(id=13, ts=TS),
    "presence": lambda: ev.PresenceList(
        channel=CH, users=[ev.UserRef(id=ALICE, name="Alice"), ev.UserRef(id=BOB, name="Bob")], id=8, count=3,
        broadcast=False, next_cursor=BOB,
    ),
    "history": lambda: ev.HistoryPage(
        channel=CH, messages=[_history_message_full(), _history_message_minimal()], offset=44, next_before=40,
        id=10,
    ),
    "unread": lambda: ev.UnreadList(
        channels=[ev.ChannelUnread(channel=CH, read=42, unread=3), ev.ChannelUnread(channel=MSG)], id=14
    ),
    "message": lambda: ev.MessageEvent(
        channel=CH, id=MSG, author=ALICE, author_name="Alice", text="hello, world", ts=TS, cmid="c-01",
        thread=MSG2,
    ),
    "edit": lambda: ev.EditEvent(channel=CH, id=MSG, author=ALICE, text="hello, everyone", ts=TS),
    "delete": lambda: ev.DeleteEvent(channel=CH, id=MSG, author=ALICE, ts=TS),
    "reaction": lambda: ev.ReactionEvent(
        channel=CH, message_id=MSG, user=BOB, emoji=THUMBS, ts=TS, remove=True, count=1
    ),
    "typing": lambda: ev.TypingEvent(channel=CH, user=BOB, name="Bob"),
    "presence.join": lambda: ev.PresenceJoin(channel=CH, users=[ev.UserRef(id=BOB, name="Bob")]),
    "presence.leave": lambda: ev.PresenceLeave(channel=CH, users=[ev.UserRef(id=BOB, name="Bob")]),
    "token.expiring": lambda: ev.TokenExpiring(expires_at=TS + 3600),
    "token.refreshed": lambda: ev.TokenRefreshed(expires_at=TS + 7200),
}

MINIMAL: dict[str, Callable[[], msgspec.Struct]] = {
    "hello": _hello,
    "error": lambda: ev.Error(code=ErrorCode.INTERNAL, message="internal error"),
    "ack": lambda: ev.Ack(),
    "subscribed": lambda: ev.Subscribed(channel=CH, offset=0),
    "unsubscribed": lambda: ev.Unsubscribed(channel=CH),
    "pong": lambda: ev.Pong(),
    "presence": lambda: ev.PresenceList(channel=CH, users=[], count=0, broadcast=True),
    "history": lambda: ev.HistoryPage(channel=CH, messages=[]),
    "unread": lambda: ev.UnreadList(channels=[]),
    "message": lambda: ev.MessageEvent(
        channel=CH, id=MSG, author=ALICE, author_name="Alice", text="x", ts=TS
    ),
    "edit": lambda: ev.EditEvent(channel=CH, id=MSG, author=ALICE, text="y", ts=TS),
    "delete": lambda: ev.DeleteEvent(channel=CH, id=MSG, author=ALICE, ts=TS),
    "reaction": lambda: ev.ReactionEvent(channel=CH, message_id=MSG, user=BOB, emoji=THUMBS, ts=TS),
    "typing": lambda: ev.TypingEvent(channel=CH, user=BOB, name="Bob"),
    "presence.join": lambda: ev.PresenceJoin(channel=CH, users=[ev.UserRef(id=BOB, name="Bob")]),
    "presence.leave": lambda: ev.PresenceLeave(channel=CH, users=[ev.UserRef(id=BOB, name="Bob")]),
    "token.expiring": lambda: ev.TokenExpiring(expires_at=TS),
    "token.refreshed": lambda: ev.TokenRefreshed(expires_at=TS),
}

# ---- command samples: every field set, and only the required fields -----------------------------------

COMMANDS_FULL: dict[str, dict[str, Any]] = {
    "auth": {"op": "auth", "token": "header.payload.signature"},
    "subscribe": {"op": "subscribe", "channel": CH, "id": 1, "since": 41},
    "unsubscribe": {"op": "unsubscribe", "channel": CH, "id": 2},
    "publish": {"op": "publish", "channel": CH, "cmid": "c-01", "text": "hello", "id": 3, "thread": MSG},
    "edit": {"op": "edit", "channel": CH, "message_id": MSG, "text": "hello!", "id": 4},
    "delete": {"op": "delete", "channel": CH, "message_id": MSG, "id": 5},
    "react": {"op": "react", "channel": CH, "message_id": MSG, "emoji": THUMBS, "remove": True, "id": 6},
    "typing": {"op": "typing", "channel": CH, "id": 11},
    "presence": {"op": "presence", "channel": CH, "id": 7, "cursor": BOB, "limit": 50},
    "history": {"op": "history", "channel": CH, "id": 8, "before": 22, "limit": 20},
    "read": {"op": "read", "channel": CH, "offset": 42, "id": 9},
    "unread": {"op": "unread", "id": 12},
    "ping": {"op": "ping", "id": 10},
}


def _required_only(op: str, sample: dict[str, Any]) -> dict[str, Any]:
    required = {f.encode_name for f in msgspec.structs.fields(COMMAND_CLASSES[op]) if f.required}
    return {k: v for k, v in sample.items() if k == "op" or k in required}


COMMANDS_MINIMAL = {op: _required_only(op, sample) for op, sample in COMMANDS_FULL.items()}

# A value of the wrong JSON type, by the JSON type the schema expects.
WRONG_TYPE: dict[str, Any] = {
    "string": 12345, "integer": "7", "number": "7.5", "boolean": "true", "array": {"a": 1}, "object": ["a"],
}


def _wire(event: msgspec.Struct) -> dict[str, Any]:
    """What a client parses: the real encoder's bytes, decoded as plain JSON."""
    decoded = msgspec.json.decode(ev.encode(event))
    assert isinstance(decoded, dict)
    return decoded


def _payload_schema(kind: str, name: str) -> dict[str, Any]:
    index = spec._index(kind)
    message = spec.deref(spec.load_spec()["channels"][spec.CHANNEL]["messages"][index[name]])
    return spec.deref(message["payload"])


def _json_type(prop: dict[str, Any]) -> Any:
    return spec.deref(prop).get("type")


def _decode(obj: Any) -> Any:
    return cmd.decode_command(json.dumps(obj, ensure_ascii=False).encode(), max_bytes=1 << 20)


def _schema_accepts(obj: Any) -> bool:
    try:
        spec.validate_client_command(obj)
    except jsonschema.ValidationError:
        return False
    return True


def _decoder_accepts(obj: Any) -> bool:
    try:
        _decode(obj)
    except cmd.ProtocolViolation:
        return False
    return True


# ---- the document ------------------------------------------------------------------------------------


def test_document_is_asyncapi_3_with_channel_operations_and_messages() -> None:
    doc = spec.load_spec()
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["title"] and doc["info"]["version"] == "1"
    assert doc["defaultContentType"] == "application/json"
    assert doc["servers"]["dev"]["host"] == "127.0.0.1:8000"
    assert doc["servers"]["dev"]["protocol"] == "ws"
    gateway = doc["channels"]["gateway"]
    assert gateway["address"] == "/ws"
    assert gateway["bindings"]["ws"]["method"] == "GET"
    assert doc["operations"] and doc["components"]["messages"] and doc["components"]["schemas"]
    # one channel message per op and per event type, each backed by a component message
    assert len(gateway["messages"]) == len(cmd.OPS) + len(EVENT_CLASSES)
    for key, ref in gateway["messages"].items():
        assert ref == {"$ref": f"#/components/messages/{key}"}


def test_every_reference_resolves() -> None:
    doc = spec.load_spec()

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if "$ref" in node:
                try:
                    spec.resolve(node["$ref"])
                except (KeyError, ValueError) as exc:
                    raise AssertionError(f"{where}: unresolvable $ref {node['$ref']!r}") from exc
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}/{i}")

    walk(doc, "#")


def test_operations_send_events_and_receive_commands() -> None:
    doc = spec.load_spec()
    channel_messages = doc["channels"]["gateway"]["messages"]
    events = {spec._index("event")[t] for t in EVENT_CLASSES}
    commands = {spec._index("command")[o] for o in cmd.OPS}
    used: list[str] = []
    for name, op in doc["operations"].items():
        assert op["action"] in ("send", "receive"), name
        assert op["channel"] == {"$ref": "#/channels/gateway"}, name
        keys = [spec.channel_message_key(m["$ref"]) for m in op["messages"]]
        assert keys and set(keys) <= set(channel_messages), name
        assert set(keys) <= (events if op["action"] == "send" else commands), name
        used.extend(keys)
        if "reply" in op:
            assert op["action"] == "receive", name
            assert op["reply"]["channel"] == {"$ref": "#/channels/gateway"}, name
            replies = {spec.channel_message_key(m["$ref"]) for m in op["reply"]["messages"]}
            assert replies and replies <= events, name
    assert sorted(used) == sorted(channel_messages), "each channel message belongs to exactly one operation"


def test_message_names_are_their_type_or_op() -> None:
    messages = spec.load_spec()["channels"]["gateway"]["messages"]
    for kind in ("event", "command"):
        for name, key in spec._index(kind).items():
            assert spec.deref(messages[key])["name"] == name


def test_component_schemas_are_valid_json_schema() -> None:
    for name, schema in spec.load_spec()["components"]["schemas"].items():
        try:
            jsonschema.Draft7Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:  # pragma: no cover - only on a broken document
            raise AssertionError(f"components.schemas.{name}: {exc.message}") from exc


# ---- names and fields agree with the code --------------------------------------------------------------


def test_server_event_types_equal_the_server_event_union() -> None:
    assert spec.server_event_types() == set(EVENT_CLASSES)


def test_client_ops_equal_ops() -> None:
    assert spec.client_ops() == set(cmd.OPS)


def test_error_code_enumerates_error_codes() -> None:
    codes = [c.value for c in ErrorCode]
    assert spec.load_spec()["components"]["schemas"]["ErrorCode"]["enum"] == codes
    assert spec.deref(_payload_schema("event", "error")["properties"]["code"])["enum"] == codes


def _event_type(t: mi.Type) -> str:
    """JSON type on the wire of an event field (``X | None = None`` is X: None is omitted, not sent)."""
    if isinstance(t, mi.UnionType):
        others = [x for x in t.types if not isinstance(x, mi.NoneType)]
        assert len(others) == 1, t
        t = others[0]
    names = {
        mi.StrType: "string", mi.IntType: "integer", mi.FloatType: "number", mi.BoolType: "boolean",
        mi.ListType: "array", mi.DictType: "object", mi.StructType: "object",
    }
    return names[type(t)]


@pytest.mark.parametrize("tag", sorted(EVENT_CLASSES))
def test_event_schema_has_the_struct_fields(tag: str) -> None:
    schema = _payload_schema("event", tag)
    info = mi.type_info(EVENT_CLASSES[tag])
    assert isinstance(info, mi.StructType)
    fields = {f.encode_name: f for f in info.fields}
    offset = {"offset"} if tag in CHANNEL_EVENTS else set()
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"type"} | set(fields) | offset
    assert set(schema["required"]) == {"type"} | {n for n, f in fields.items() if f.required}
    assert schema["properties"]["type"]["const"] == tag
    for name, f in fields.items():
        assert _json_type(schema["properties"][name]) == _event_type(f.type), f"{tag}.{name}"


@pytest.mark.parametrize("name", sorted(NESTED))
def test_nested_schema_has_the_struct_fields(name: str) -> None:
    schema = spec.load_spec()["components"]["schemas"][name]
    info = mi.type_info(NESTED[name])
    assert isinstance(info, mi.StructType)
    fields = {f.encode_name: f for f in info.fields}
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(fields)
    assert set(schema["required"]) == {n for n, f in fields.items() if f.required}
    for field_name, f in fields.items():
        assert _json_type(schema["properties"][field_name]) == _event_type(f.type), f"{name}.{field_name}"


def _command_constraints(t: mi.Type) -> dict[str, Any]:
    """The JSON Schema keywords a command field's msgspec type implies."""
    nullable = False
    if isinstance(t, mi.UnionType):
        others = [x for x in t.types if not isinstance(x, mi.NoneType)]
        assert len(others) == 1, t
        nullable, t = len(others) < len(t.types), others[0]
    if isinstance(t, mi.StrType):
        out: dict[str, Any] = {"type": "string", "minLength": t.min_length, "maxLength": t.max_length,
                               "pattern": t.pattern}
    elif isinstance(t, mi.IntType):
        assert t.gt is None and t.lt is None and t.multiple_of is None, t
        out = {"type": "integer", "minimum": t.ge, "maximum": t.le}
    elif isinstance(t, mi.BoolType):
        out = {"type": "boolean"}
    else:  # pragma: no cover - a new kind of command field: extend this test and the schema
        raise AssertionError(f"unexpected command field type {t!r}")
    out = {k: v for k, v in out.items() if v is not None}
    if nullable:
        out["type"] = [out["type"], "null"]
    return out


COMMAND_FIELDS = [
    (op, f) for op, cls in sorted(COMMAND_CLASSES.items()) for f in msgspec.structs.fields(cls)
]


@pytest.mark.parametrize("op", sorted(COMMAND_CLASSES))
def test_command_schema_has_the_struct_fields(op: str) -> None:
    schema = _payload_schema("command", op)
    fields = {f.encode_name: f for f in msgspec.structs.fields(COMMAND_CLASSES[op])}
    assert schema["additionalProperties"] is False  # the decoder forbids unknown fields
    assert set(schema["properties"]) == {"op"} | set(fields)
    assert set(schema["required"]) == {"op"} | {n for n, f in fields.items() if f.required}
    assert schema["properties"]["op"]["const"] == op


@pytest.mark.parametrize(("op", "field"), COMMAND_FIELDS, ids=[f"{o}.{f.name}" for o, f in COMMAND_FIELDS])
def test_command_field_limits_equal_the_msgspec_constraints(
    op: str, field: msgspec.structs.FieldInfo
) -> None:
    info = mi.type_info(COMMAND_CLASSES[op])
    assert isinstance(info, mi.StructType)
    (ftype,) = [f.type for f in info.fields if f.name == field.name]
    prop = spec.deref(_payload_schema("command", op)["properties"][field.encode_name])
    keywords = ("type", "minLength", "maxLength", "pattern", "minimum", "maximum")
    assert {k: prop[k] for k in keywords if k in prop} == _command_constraints(ftype)
    if field.default not in (msgspec.NODEFAULT, None):
        assert prop["default"] == field.default


def test_hello_example_shows_the_default_limits() -> None:
    (payload,) = [p for _, _, p in spec.iter_examples("event") if p["type"] == "hello"]
    cfg = Config()
    names = [f.name for f in msgspec.structs.fields(ev.Limits)]
    expected = {n: MAX_BODY_CHARS if n == "max_body_chars" else getattr(cfg, n) for n in names}
    assert payload["limits"] == expected
    assert payload["heartbeat_s"] == cfg.heartbeat_s
    assert payload["v"] == 1


# ---- encoded events validate ---------------------------------------------------------------------------


def test_samples_cover_every_event_type() -> None:
    assert set(FULL) == set(MINIMAL) == set(EVENT_CLASSES)
    for tag in EVENT_CLASSES:
        assert type(FULL[tag]()) is EVENT_CLASSES[tag] and type(MINIMAL[tag]()) is EVENT_CLASSES[tag]


@pytest.mark.parametrize("tag", sorted(EVENT_CLASSES))
def test_full_sample_sets_every_field(tag: str) -> None:
    wire = _wire(FULL[tag]())
    assert set(wire) == {"type"} | {f.encode_name for f in msgspec.structs.fields(EVENT_CLASSES[tag])}
    if tag == "history":
        full = {f.encode_name for f in msgspec.structs.fields(ev.HistoryMessage)}
        assert set(wire["messages"][0]) == full


@pytest.mark.parametrize("tag", sorted(EVENT_CLASSES))
def test_minimal_sample_has_only_required_fields(tag: str) -> None:
    wire = _wire(MINIMAL[tag]())
    fields = msgspec.structs.fields(EVENT_CLASSES[tag])
    assert set(wire) == {"type"} | {f.encode_name for f in fields if f.required}


@pytest.mark.parametrize("variant", ["full", "minimal"])
@pytest.mark.parametrize("tag", sorted(EVENT_CLASSES))
def test_encoded_event_validates(tag: str, variant: str) -> None:
    event = (FULL if variant == "full" else MINIMAL)[tag]()
    spec.validate_server_event(_wire(event))


@pytest.mark.parametrize("variant", ["full", "minimal"])
@pytest.mark.parametrize("tag", sorted(CHANNEL_EVENTS))
def test_channel_event_with_offset_validates(tag: str, variant: str) -> None:
    payload = ev.encode((FULL if variant == "full" else MINIMAL)[tag]())
    for offset in (1, 42, 2**62):
        wire = msgspec.json.decode(ev.with_offset(payload, offset))
        assert wire["offset"] == offset
        spec.validate_server_event(wire)
    assert ev.with_offset(payload, 0) == payload  # no offset: still valid (delivered outside a subscription)
    spec.validate_server_event(msgspec.json.decode(ev.with_offset(payload, 0)))


OFFSETLESS = sorted(
    t for t, c in EVENT_CLASSES.items()
    if t not in CHANNEL_EVENTS and "offset" not in {f.encode_name for f in msgspec.structs.fields(c)}
)


@pytest.mark.parametrize("tag", OFFSETLESS)
def test_only_channel_events_carry_an_offset(tag: str) -> None:
    wire = msgspec.json.decode(ev.with_offset(ev.encode(MINIMAL[tag]()), 7))
    with pytest.raises(jsonschema.ValidationError):
        spec.validate_server_event(wire)


def test_a_coalesced_frame_splits_into_valid_events() -> None:
    parts = [ev.encode(FULL["subscribed"]()), ev.with_offset(ev.encode(FULL["message"]()), 42),
             ev.encode(FULL["typing"]()), ev.with_offset(ev.encode(FULL["reaction"]()), 43)]
    frame = ev.join_frames(parts)
    events = spec.validate_server_frame(frame)
    assert [e["type"] for e in events] == ["subscribed", "message", "typing", "reaction"]
    assert spec.validate_server_frame(frame.decode()) == events


# ---- wrong events are rejected --------------------------------------------------------------------------

EVENT_FIELDS = [
    (tag, f.encode_name, f.required)
    for tag, cls in sorted(EVENT_CLASSES.items())
    for f in msgspec.structs.fields(cls)
]


@pytest.mark.parametrize(("tag", "field", "required"), EVENT_FIELDS,
                         ids=[f"{t}.{f}" for t, f, _ in EVENT_FIELDS])
def test_event_with_a_wrongly_typed_or_missing_field_is_rejected(
    tag: str, field: str, required: bool
) -> None:
    good = _wire(FULL[tag]())
    bad = {**good, field: WRONG_TYPE[_json_type(_payload_schema("event", tag)["properties"][field])]}
    with pytest.raises(jsonschema.ValidationError):
        spec.validate_server_event(bad)
    missing = {k: v for k, v in good.items() if k != field}
    if required:
        with pytest.raises(jsonschema.ValidationError, match=f"'{field}' is a required property"):
            spec.validate_server_event(missing)
    else:
        spec.validate_server_event(missing)


def _edit(tag: str, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    wire = _wire(FULL[tag]())
    change(wire)
    return wire


BAD_EVENTS: dict[str, Any] = {
    "unknown type": {"type": "presence.update", "channel": CH},
    "missing type": {"channel": CH, "users": []},
    "type not a string": {"type": 1},
    "not an object": ["type", "pong"],
    "unknown field": _edit("pong", lambda e: e.update(extra=1)),
    "type of another event": _edit("typing", lambda e: e.update(type="presence.join", extra=1)),
    "hello v 2": _edit("hello", lambda e: e.update(v=2)),
    "hello user without name": _edit("hello", lambda e: e["user"].pop("name")),
    "hello limits with unknown field": _edit("hello", lambda e: e["limits"].update(max_bytes=1)),
    "hello limits as float frame size": _edit("hello", lambda e: e["limits"].update(max_frame_bytes=1.0)),
    "error with unknown code": _edit("error", lambda e: e.update(code="oops")),
    "ack offset negative": _edit("ack", lambda e: e.update(offset=-1)),
    "ack id negative": _edit("ack", lambda e: e.update(id=-1)),
    "ack id as float": _edit("ack", lambda e: e.update(id=2.0)),
    "ack duplicate null": _edit("ack", lambda e: e.update(duplicate=None)),
    "subscribed offset negative": _edit("subscribed", lambda e: e.update(offset=-1)),
    "presence user id as int": _edit("presence", lambda e: e["users"][0].update(id=1)),
    "history message without text": _edit("history", lambda e: e["messages"][0].pop("text")),
    "history reaction count as string": _edit(
        "history", lambda e: e["messages"][0]["reactions"].update(x="1")
    ),
    "history next_before null": _edit("history", lambda e: e.update(next_before=None)),
    "message with empty text": _edit("message", lambda e: e.update(text="")),
    "message offset 0": _edit("message", lambda e: e.update(offset=0)),
    "message offset as string": _edit("message", lambda e: e.update(offset="42")),
    "message cmid null": _edit("message", lambda e: e.update(cmid=None)),
    "reaction emoji too long": _edit("reaction", lambda e: e.update(emoji="x" * 65)),
    "typing with offset": _edit("typing", lambda e: e.update(offset=5)),
    "token.expiring without expires_at": {"type": "token.expiring"},
    "token.refreshed without expires_at": {"type": "token.refreshed"},
}


@pytest.mark.parametrize("case", sorted(BAD_EVENTS))
def test_bad_event_is_rejected(case: str) -> None:
    with pytest.raises(jsonschema.ValidationError):
        spec.validate_server_event(BAD_EVENTS[case])


# ---- commands: the schema and the decoder agree -------------------------------------------------------


def test_command_samples_cover_every_op() -> None:
    assert set(COMMANDS_FULL) == set(COMMANDS_MINIMAL) == set(cmd.OPS)
    for op, sample in COMMANDS_FULL.items():
        assert set(sample) == {"op"} | {f.encode_name for f in msgspec.structs.fields(COMMAND_CLASSES[op])}


@pytest.mark.parametrize("variant", ["full", "minimal"])
@pytest.mark.parametrize("op", sorted(COMMAND_CLASSES))
def test_command_sample_is_accepted_by_schema_and_decoder(op: str, variant: str) -> None:
    sample = (COMMANDS_FULL if variant == "full" else COMMANDS_MINIMAL)[op]
    spec.validate_client_command(sample)
    decoded = _decode(sample)
    assert type(decoded) is COMMAND_CLASSES[op]
    # a command re-encoded with every field (None as null, defaults spelled out) is valid too
    spec.validate_client_command(msgspec.json.decode(msgspec.json.encode(decoded)))


@pytest.mark.parametrize(("op", "field"), COMMAND_FIELDS, ids=[f"{o}.{f.name}" for o, f in COMMAND_FIELDS])
def test_command_with_a_wrongly_typed_or_missing_field_is_refused_by_both(
    op: str, field: msgspec.structs.FieldInfo
) -> None:
    good = COMMANDS_FULL[op]
    name = field.encode_name
    json_type = _json_type(_payload_schema("command", op)["properties"][name])
    wrong = {**good, name: WRONG_TYPE[json_type[0] if isinstance(json_type, list) else json_type]}
    cases = [wrong]
    if field.required:
        cases.append({k: v for k, v in good.items() if k != name})
    for bad in cases:
        with pytest.raises(jsonschema.ValidationError):
            spec.validate_client_command(bad)
        with pytest.raises(cmd.ProtocolViolation) as info:
            _decode(bad)
        assert info.value.code == ErrorCode.BAD_REQUEST
        assert info.value.field == name


U32 = "0123456789abcdef0123456789ABCDEF"
GOOD_COMMANDS: dict[str, dict[str, Any]] = {
    "ping without id": {"op": "ping"},
    "ping id null": {"op": "ping", "id": None},
    "ping id 0": {"op": "ping", "id": 0},
    "ping id 2^53": {"op": "ping", "id": 2**53},
    "fields in any order": {"channel": CH, "id": 1, "op": "subscribe"},
    "subscribe since 0": {"op": "subscribe", "channel": CH, "since": 0},
    "subscribe since null": {"op": "subscribe", "channel": CH, "since": None},
    "channel without dashes, mixed case": {"op": "subscribe", "channel": U32},
    "channel upper case": {"op": "unsubscribe", "channel": CH.upper()},
    "publish 4000 characters": {"op": "publish", "channel": CH, "cmid": "c", "text": "x" * MAX_BODY_CHARS},
    "publish 4000 astral characters": {"op": "publish", "channel": CH, "cmid": "c", "text": THUMBS * 4000},
    "publish cmid 64 characters": {"op": "publish", "channel": CH, "cmid": "c" * 64, "text": "x"},
    "publish thread null": {"op": "publish", "channel": CH, "cmid": "c", "text": "x", "thread": None},
    "react emoji 64 characters": {"op": "react", "channel": CH, "message_id": MSG, "emoji": ":" * 64},
    "react remove false": {"op": "react", "channel": CH, "message_id": MSG, "emoji": "+1", "remove": False},
    "history limit 1": {"op": "history", "channel": CH, "limit": 1},
    "history limit 1000": {"op": "history", "channel": CH, "limit": 1000},
    "history before null": {"op": "history", "channel": CH, "before": None},
    "read offset 2^62": {"op": "read", "channel": CH, "offset": 2**62},
    "auth token 8192 characters": {"op": "auth", "token": "t" * 8192},
}
BAD_COMMANDS: dict[str, Any] = {
    "not an object": ["op", "ping"],
    "a string": "ping",
    "op missing": {"id": 1},
    "op null": {"op": None},
    "op a number": {"op": 1},
    "unknown op": {"op": "join", "channel": CH},
    "unknown field": {"op": "ping", "id": 1, "extra": True},
    "auth with id": {"op": "auth", "token": "t", "id": 1},
    "auth token empty": {"op": "auth", "token": ""},
    "auth token 8193 characters": {"op": "auth", "token": "t" * 8193},
    "ping id negative": {"op": "ping", "id": -1},
    "ping id 2^53+1": {"op": "ping", "id": 2**53 + 1},
    "ping id float": {"op": "ping", "id": 1.0},
    "ping id boolean": {"op": "ping", "id": True},
    "ping id string": {"op": "ping", "id": "1"},
    "channel a name": {"op": "subscribe", "channel": "general"},
    "channel 37 characters": {"op": "subscribe", "channel": CH + "0"},
    "channel 31 hex digits": {"op": "subscribe", "channel": U32[:31]},
    "channel with braces": {"op": "subscribe", "channel": "{" + CH + "}"},
    "channel with a trailing newline": {"op": "subscribe", "channel": U32 + "\n"},
    "channel null": {"op": "subscribe", "channel": None},
    "subscribe since negative": {"op": "subscribe", "channel": CH, "since": -1},
    "subscribe since 2^62+1": {"op": "subscribe", "channel": CH, "since": 2**62 + 1},
    "publish text empty": {"op": "publish", "channel": CH, "cmid": "c", "text": ""},
    "publish text 4001 characters": {"op": "publish", "channel": CH, "cmid": "c", "text": "x" * 4001},
    "publish cmid empty": {"op": "publish", "channel": CH, "cmid": "", "text": "x"},
    "publish cmid 65 characters": {"op": "publish", "channel": CH, "cmid": "c" * 65, "text": "x"},
    "publish thread not a uuid": {"op": "publish", "channel": CH, "cmid": "c", "text": "x", "thread": "t1"},
    "edit without text": {"op": "edit", "channel": CH, "message_id": MSG},
    "delete message_id null": {"op": "delete", "channel": CH, "message_id": None},
    "react emoji empty": {"op": "react", "channel": CH, "message_id": MSG, "emoji": ""},
    "react emoji 65 characters": {"op": "react", "channel": CH, "message_id": MSG, "emoji": ":" * 65},
    "react remove null": {"op": "react", "channel": CH, "message_id": MSG, "emoji": "+1", "remove": None},
    "history limit 0": {"op": "history", "channel": CH, "limit": 0},
    "history limit 1001": {"op": "history", "channel": CH, "limit": 1001},
    "history limit null": {"op": "history", "channel": CH, "limit": None},
    "read without offset": {"op": "read", "channel": CH},
    "read offset null": {"op": "read", "channel": CH, "offset": None},
}


@pytest.mark.parametrize("case", sorted(GOOD_COMMANDS))
def test_good_command_is_accepted_by_schema_and_decoder(case: str) -> None:
    obj = GOOD_COMMANDS[case]
    assert _schema_accepts(obj)
    assert _decoder_accepts(obj)


@pytest.mark.parametrize("case", sorted(BAD_COMMANDS))
def test_bad_command_is_refused_by_schema_and_decoder(case: str) -> None:
    obj = BAD_COMMANDS[case]
    assert not _schema_accepts(obj)
    with pytest.raises(cmd.ProtocolViolation) as info:
        _decode(obj)
    assert info.value.code in (ErrorCode.MALFORMED, ErrorCode.UNKNOWN_OP, ErrorCode.BAD_REQUEST)


def test_channel_id_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(cmd.ProtocolViolation):
        _decode({"op": "subscribe", "channel": U32 + "\n"})


def test_validator_rejects_unknown_names_and_non_objects() -> None:
    for bad in ({"op": "nope"}, {"type": "ping"}, {}, [], None, "ping"):
        with pytest.raises(jsonschema.ValidationError):
            spec.validate_client_command(bad)  # type: ignore[arg-type]
    for bad in ({"type": "nope"}, {"op": "ping"}, {}, [], None):
        with pytest.raises(jsonschema.ValidationError):
            spec.validate_server_event(bad)  # type: ignore[arg-type]


# ---- the document's examples ----------------------------------------------------------------------------

EVENT_EXAMPLES = list(spec.iter_examples("event"))
COMMAND_EXAMPLES = list(spec.iter_examples("command"))


def test_every_message_has_an_example() -> None:
    keys = {k for k, _, _ in EVENT_EXAMPLES} | {k for k, _, _ in COMMAND_EXAMPLES}
    assert keys == set(spec.load_spec()["channels"]["gateway"]["messages"])


@pytest.mark.parametrize(("key", "name", "payload"), EVENT_EXAMPLES,
                         ids=[f"{k}-{n}" for k, n, _ in EVENT_EXAMPLES])
def test_event_example_is_what_the_encoder_produces(
    key: str, name: str, payload: dict[str, Any]
) -> None:
    spec.validate_server_event(payload)
    event = msgspec.convert(payload, ev.ServerEvent)  # an `offset` (channel events) is not a struct field
    assert type(event) is EVENT_CLASSES[payload["type"]]
    if payload["type"] not in CHANNEL_EVENTS:
        assert _wire(event) == payload
        return
    assert _wire(event) == {k: v for k, v in payload.items() if k != "offset"}
    if "offset" in payload:
        assert msgspec.json.decode(ev.with_offset(ev.encode(event), payload["offset"])) == payload


@pytest.mark.parametrize(("key", "name", "payload"), COMMAND_EXAMPLES,
                         ids=[f"{k}-{n}" for k, n, _ in COMMAND_EXAMPLES])
def test_command_example_is_accepted_by_schema_and_decoder(
    key: str, name: str, payload: dict[str, Any]
) -> None:
    spec.validate_client_command(payload)
    assert type(_decode(payload)) is COMMAND_CLASSES[payload["op"]]


# ---- docs/protocol.md stays in step too --------------------------------------------------------------

PROTOCOL_MD = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def _section(title: str) -> str:
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def test_protocol_doc_lists_every_error_code() -> None:
    rows = [line for line in _section("Error codes").splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == [c.value for c in ErrorCode]


def test_protocol_doc_close_codes_match_close_code_and_reconnectable() -> None:
    rows = {}
    for line in _section("Close codes").splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 4 and cells[0].isdigit():
            rows[int(cells[0])] = cells
    for code in CloseCode:
        assert code in rows, f"close code {code} missing from docs/protocol.md"
        _number, name, _meaning, reconnect = rows[code]
        assert name == f"`{code.name}`"
        assert reconnect.startswith("yes") == (code in RECONNECTABLE), f"{code}: {reconnect}"
    assert set(rows) - set(CloseCode) == {1006}  # documented for clients, never sent by the server


def test_protocol_doc_example_session_is_valid() -> None:
    block = _section("Example session").split("```text\n", 1)[1].split("```", 1)[0]
    sent = received = 0
    for line in block.splitlines():
        if line.startswith("→ "):
            obj = json.loads(line[2:])
            spec.validate_client_command(obj)
            _decode(obj)
            sent += 1
        elif line.startswith(("← ", "  {")):
            spec.validate_server_event(json.loads(line[2:]))
            received += 1
    assert sent >= 6 and received >= 10


def test_protocol_doc_and_schema_never_promise_dense_offsets() -> None:
    """Offsets increase but are not dense on Pulsar (ADR 0005, delivery.md): protocol.md once said
    "1, 2, 3, … with no holes" and that a client detects a gap from the numbers (issue 13)."""
    doc = " ".join(PROTOCOL_MD.read_text(encoding="utf-8").split())
    schema = " ".join(spec.load_spec()["info"]["description"].split())
    for text in (doc, schema):
        assert "no holes" not in text and "offsets are dense" not in text and "(dense," not in text
    assert "never subtract them" in doc and "not dense" in schema
