"""Validate protocol v1 frames against ``docs/api/asyncapi.yaml``.

The AsyncAPI document describes the gateway: its ``send`` operations are the server events, its ``receive``
operations the client commands.  This module reads the document once and validates one decoded JSON object
at a time against the payload schema of its message, chosen by ``type`` (events) or ``op`` (commands):

    validate_server_event({"type": "pong", "id": 1, "ts": 1.5})
    validate_client_command({"op": "ping"})

Both raise :class:`jsonschema.ValidationError` on any mismatch, including an unknown ``type``/``op``.
A server frame may carry several events separated by ``\\n``; :func:`split_frame` parses one into objects.

Validation follows JSON Schema draft 7 (the base of AsyncAPI schemas) with one deliberate change: an
``integer`` must be a JSON integer, so ``1.0`` is not one -- which is what the server's decoder (msgspec)
does and what the server's encoder produces.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from referencing import Registry
from referencing.jsonschema import DRAFT7

SPEC_PATH = Path(__file__).resolve().parents[2] / "docs" / "api" / "asyncapi.yaml"
CHANNEL = "gateway"
_BASE_URI = "urn:storm:asyncapi"

_StrictValidator = jsonschema.validators.extend(
    jsonschema.Draft7Validator,
    type_checker=jsonschema.Draft7Validator.TYPE_CHECKER.redefine(
        "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool)
    ),
)


@functools.cache
def load_spec() -> dict[str, Any]:
    """The parsed AsyncAPI document (cached; do not mutate)."""
    with SPEC_PATH.open(encoding="utf-8") as fh:
        spec = yaml.safe_load(fh)
    if not isinstance(spec, dict):
        raise ValueError(f"{SPEC_PATH} is not a YAML mapping")
    return spec


def resolve(ref: str, spec: Mapping[str, Any] | None = None) -> Any:
    """Follow a local ``#/a/b`` reference (JSON pointer) inside the document."""
    if not ref.startswith("#/"):
        raise ValueError(f"only local references are used in this document, got {ref!r}")
    node: Any = load_spec() if spec is None else spec
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def deref(node: Any, spec: Mapping[str, Any] | None = None) -> Any:
    """``node`` itself, or what it points to when it is a ``{"$ref": ...}`` (followed repeatedly)."""
    while isinstance(node, Mapping) and "$ref" in node:
        node = resolve(node["$ref"], spec)
    return node


def channel_message_key(ref: str) -> str:
    """``#/channels/gateway/messages/<key>`` -> ``<key>``; anything else is an error."""
    prefix = f"#/channels/{CHANNEL}/messages/"
    if not ref.startswith(prefix):
        raise ValueError(f"operation message {ref!r} does not point into channel {CHANNEL!r}")
    return ref[len(prefix):]


def _messages_by_action(action: str) -> list[str]:
    keys: list[str] = []
    for op in load_spec()["operations"].values():
        if op["action"] == action:
            keys.extend(channel_message_key(m["$ref"]) for m in op.get("messages", []))
    return keys


def _discriminator(message_key: str, field: str) -> str:
    """The ``const`` of the ``type``/``op`` property of a channel message's payload."""
    message = deref(load_spec()["channels"][CHANNEL]["messages"][message_key])
    payload = deref(message["payload"])
    return str(payload["properties"][field]["const"])


@functools.cache
def _index(kind: str) -> dict[str, str]:
    """name -> channel message key, for ``kind`` "event" (``type``) or "command" (``op``)."""
    action, field = ("send", "type") if kind == "event" else ("receive", "op")
    index: dict[str, str] = {}
    for key in _messages_by_action(action):
        name = _discriminator(key, field)
        if index.get(name, key) != key:
            raise ValueError(f"{field} {name!r} is defined by two messages: {index[name]} and {key}")
        index[name] = key
    return index


def server_event_types() -> frozenset[str]:
    """Every ``type`` the spec lets the gateway send."""
    return frozenset(_index("event"))


def client_ops() -> frozenset[str]:
    """Every ``op`` the spec lets the gateway receive."""
    return frozenset(_index("command"))


@functools.cache
def _registry() -> Registry:
    return Registry().with_resource(_BASE_URI, DRAFT7.create_resource(load_spec()))


def _message_pointer(message_key: str) -> str:
    """Pointer of the Message Object behind a channel message (a JSON pointer never crosses a $ref)."""
    pointer = f"#/channels/{CHANNEL}/messages/{message_key}"
    node = resolve(pointer)
    while isinstance(node, Mapping) and "$ref" in node:
        pointer = node["$ref"]
        node = resolve(pointer)
    return pointer


@functools.cache
def _validator(message_key: str) -> jsonschema.protocols.Validator:
    schema = {"$ref": f"{_BASE_URI}{_message_pointer(message_key)}/payload"}
    return _StrictValidator(schema, registry=_registry())


def payload_validator(kind: str, name: str) -> jsonschema.protocols.Validator:
    """The validator of event ``type`` / command ``op`` ``name`` (kind "event" or "command")."""
    index = _index(kind)
    if name not in index:
        what = "event type" if kind == "event" else "op"
        raise jsonschema.ValidationError(f"unknown {what} {name!r}; the spec defines {sorted(index)}")
    return _validator(index[name])


def _validate(obj: Any, kind: str, field: str) -> None:
    if not isinstance(obj, dict):
        raise jsonschema.ValidationError(f"expected a JSON object, got {type(obj).__name__}")
    name = obj.get(field)
    if not isinstance(name, str):
        raise jsonschema.ValidationError(f"missing or non-string `{field}`: {name!r}")
    payload_validator(kind, name).validate(obj)


def validate_server_event(obj: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``obj`` is a valid server event (dispatch on ``type``)."""
    _validate(obj, "event", "type")


def validate_client_command(obj: dict[str, Any]) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``obj`` is a valid client command (dispatch on ``op``)."""
    _validate(obj, "command", "op")


def split_frame(frame: str | bytes) -> list[dict[str, Any]]:
    """The events of one server text frame (one or more JSON objects separated by ``\\n``)."""
    text = frame.decode("utf-8") if isinstance(frame, bytes) else frame
    return [json.loads(part) for part in text.split("\n")]


def validate_server_frame(frame: str | bytes) -> list[dict[str, Any]]:
    """Split a server frame, validate every event in it and return them."""
    events = split_frame(frame)
    for event in events:
        validate_server_event(event)
    return events


def iter_examples(kind: str) -> Iterable[tuple[str, str, Any]]:
    """(message key, example name, payload) of every example of the spec's events or commands."""
    spec = load_spec()
    for key in _index(kind).values():
        message = deref(spec["channels"][CHANNEL]["messages"][key])
        for i, example in enumerate(message.get("examples", [])):
            yield key, example.get("name", str(i)), example["payload"]
