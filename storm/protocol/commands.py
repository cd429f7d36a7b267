"""Client -> server commands of protocol v1 and their decoder.  No I/O.

A client frame is one JSON object with an ``op`` field.  :func:`decode_command` turns bytes into one of
the command structs below or raises :class:`ProtocolViolation` with a stable code and, where it applies,
the offending field.  Limits (text length, emoji length) are enforced here so nothing downstream has to.
"""

from __future__ import annotations

from typing import Annotated, get_args

import msgspec

from storm.domain import MAX_BODY_CHARS, MAX_EMOJI_CHARS
from storm.protocol.codes import ErrorCode

# `(?![\s\S])` after `$`: Python's `$` also matches before a trailing newline; this form means "end of
# string" in both Python and ECMAScript regexes, so the AsyncAPI schema can carry the same pattern.
ChannelId = Annotated[str, msgspec.Meta(min_length=32, max_length=36,
                                        pattern=r"^[0-9a-fA-F-]{32,36}$(?![\s\S])")]
RequestId = Annotated[int, msgspec.Meta(ge=0, le=2**53)]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_BODY_CHARS)]
ClientMsgId = Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
Offset = Annotated[int, msgspec.Meta(ge=0, le=2**62)]
Emoji = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_EMOJI_CHARS)]


class ProtocolViolation(Exception):
    """The peer sent something we cannot accept.  Reported as an ``error`` event; the session survives."""

    def __init__(self, code: ErrorCode, message: str, *, field: str | None = None, id: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.id = id


class _Command(msgspec.Struct, tag_field="op", forbid_unknown_fields=True, frozen=True):
    pass


class Auth(_Command, tag="auth", frozen=True):
    token: Annotated[str, msgspec.Meta(min_length=1, max_length=8192)]


class Subscribe(_Command, tag="subscribe", frozen=True):
    channel: ChannelId
    id: RequestId | None = None
    since: Offset | None = None  # last offset the client has seen; replay what follows


class Unsubscribe(_Command, tag="unsubscribe", frozen=True):
    channel: ChannelId
    id: RequestId | None = None


class Publish(_Command, tag="publish", frozen=True):
    channel: ChannelId
    cmid: ClientMsgId  # client message id: retries with the same cmid never make a second message
    text: Text
    id: RequestId | None = None
    thread: ChannelId | None = None  # id of the parent message


class Edit(_Command, tag="edit", frozen=True):
    channel: ChannelId
    message_id: ChannelId
    text: Text
    id: RequestId | None = None


class Delete(_Command, tag="delete", frozen=True):
    channel: ChannelId
    message_id: ChannelId
    id: RequestId | None = None


class React(_Command, tag="react", frozen=True):
    channel: ChannelId
    message_id: ChannelId
    emoji: Emoji
    remove: bool = False
    id: RequestId | None = None


class Typing(_Command, tag="typing", frozen=True):
    channel: ChannelId
    id: RequestId | None = None  # accepted for uniformity; typing has no reply


class Presence(_Command, tag="presence", frozen=True):
    channel: ChannelId
    id: RequestId | None = None
    cursor: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None  # a reply's next_cursor
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] | None = None  # capped at STORM_PRESENCE_PAGE_MAX


class History(_Command, tag="history", frozen=True):
    channel: ChannelId
    id: RequestId | None = None
    before: Offset | None = None  # page of messages with offset < before, newest first
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 50


class Read(_Command, tag="read", frozen=True):
    channel: ChannelId
    offset: Offset
    id: RequestId | None = None


class Unread(_Command, tag="unread", frozen=True):
    id: RequestId | None = None


class Ping(_Command, tag="ping", frozen=True):
    id: RequestId | None = None


Command = (Auth | Subscribe | Unsubscribe | Publish | Edit | Delete | React | Typing | Presence | History | Read
           | Unread | Ping)
OPS = tuple(c.__struct_config__.tag for c in get_args(Command))

_decoder: msgspec.json.Decoder[Command] = msgspec.json.Decoder(Command)
_probe = msgspec.json.Decoder()


def decode_command(data: bytes | str, max_bytes: int) -> Command:
    """Decode one client frame.  Raises ProtocolViolation; never anything else."""
    size = len(data)
    if isinstance(data, str) and size * 4 > max_bytes:  # chars -> bytes only when it could matter
        size = len(data.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise ProtocolViolation(ErrorCode.TOO_LARGE, f"frame larger than {max_bytes} bytes")
    try:
        return _decoder.decode(data)
    except msgspec.ValidationError as exc:
        raise _explain(data, exc) from None
    except (msgspec.DecodeError, UnicodeError):  # UnicodeEncodeError: a str with lone surrogates
        raise ProtocolViolation(ErrorCode.MALFORMED, "frame is not valid JSON") from None
    except RecursionError:
        raise ProtocolViolation(ErrorCode.MALFORMED, "frame is nested too deeply") from None


def _explain(data: bytes | str, exc: msgspec.ValidationError) -> ProtocolViolation:
    """Turn msgspec's message into a stable code, a field name and the request id when readable."""
    text = str(exc)
    try:
        raw = _probe.decode(data)
    except (msgspec.DecodeError, RecursionError):  # e.g. "[[[[…": the typed decoder stopped at the first "["
        raw = None
    except UnicodeError:  # e.g. b'"\x80"': the typed decoder stopped at the string, before its bytes
        return ProtocolViolation(ErrorCode.MALFORMED, "frame is not valid JSON")
    if not isinstance(raw, dict):
        return ProtocolViolation(ErrorCode.MALFORMED, "frame must be a JSON object")
    rid = raw.get("id") if isinstance(raw.get("id"), int) and not isinstance(raw.get("id"), bool) else None
    op = raw.get("op")
    if op is None:
        return ProtocolViolation(ErrorCode.BAD_REQUEST, "missing field `op`", field="op", id=rid)
    if not isinstance(op, str) or op not in OPS:
        return ProtocolViolation(ErrorCode.UNKNOWN_OP, f"unknown op {str(op)[:32]!r}", field="op", id=rid)
    field = None
    if "at `$." in text:
        field = text.split("at `$.", 1)[1].split("`", 1)[0].split("[", 1)[0]
    elif "Object missing required field `" in text:
        field = text.split("Object missing required field `", 1)[1].split("`", 1)[0]
    elif "Object contains unknown field `" in text:
        field = text.split("Object contains unknown field `", 1)[1].split("`", 1)[0]
    return ProtocolViolation(ErrorCode.BAD_REQUEST, text, field=field, id=rid)
