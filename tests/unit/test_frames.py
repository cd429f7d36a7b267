"""The RFC 6455 codec (gateway/frames.py), without sockets: the RFC's own examples, the rules a server must
enforce, any split of a byte stream giving the same messages (Hypothesis), and the client's end that the
benchmarks and the tests' clients use.  Client frames are built here independently of the module under
test (``client_frame`` below): a codec checked only against itself would prove nothing."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import frames as f


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = None, rsv: int = 0) -> bytes:
    """A masked client frame, built independently of the module under test."""
    mask = mask if mask is not None else os.urandom(4)
    first = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    if n < 126:
        head = bytes((first, 0x80 | n))
    elif n < 65536:
        head = bytes((first, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


# --- the RFC's examples ------------------------------------------------------------------------------------

def test_accept_key_of_the_rfc_example() -> None:
    assert f.accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 1.3


def test_the_rfc_masked_hello_text_frame_and_ping() -> None:  # RFC 6455 5.7
    hello = bytes.fromhex("818537fa213d7f9f4d5158")
    assert f.FrameReader(1 << 16).feed(hello) == [f.Message(f.OP_TEXT, "Hello")]
    ping = bytes.fromhex("898537fa213d7f9f4d5158")
    assert f.FrameReader(1 << 16).feed(ping) == [f.Message(f.OP_PING, b"Hello")]


def test_server_frame_headers_for_the_three_length_encodings() -> None:
    assert f.frame_header(f.OP_TEXT, 5) == bytes.fromhex("8105")  # RFC 6455 5.7, unmasked "Hello"
    assert f.frame_header(f.OP_BINARY, 256) == bytes.fromhex("827e0100")
    assert f.frame_header(f.OP_BINARY, 65536) == bytes.fromhex("827f0000000000010000")


# --- messages ----------------------------------------------------------------------------------------------

def test_fragments_are_reassembled_with_control_frames_in_between() -> None:
    reader = f.FrameReader(1 << 16)
    data = (client_frame(f.OP_TEXT, b"Hel", fin=False) + client_frame(f.OP_PING, b"p")
            + client_frame(f.OP_CONTINUATION, b"lo wo", fin=False) + client_frame(f.OP_CONTINUATION, "rld ✓".encode()))
    assert reader.feed(data) == [f.Message(f.OP_PING, b"p"), f.Message(f.OP_TEXT, "Hello world ✓")]


def test_thousands_of_one_byte_fragments_do_not_recurse() -> None:
    data = client_frame(f.OP_BINARY, b"x", fin=False) + client_frame(f.OP_CONTINUATION, b"x", fin=False) * 5000
    data += client_frame(f.OP_CONTINUATION, b"x")
    assert f.FrameReader(1 << 16).feed(data) == [f.Message(f.OP_BINARY, b"x" * 5002)]


def test_close_frames_carry_code_and_reason() -> None:
    reader = f.FrameReader(1 << 16)
    assert reader.feed(client_frame(f.OP_CLOSE, (1000).to_bytes(2, "big") + b"bye")) == [
        f.Message(f.OP_CLOSE, "bye", close_code=1000)]
    assert reader.feed(client_frame(f.OP_CLOSE, b"")) == [f.Message(f.OP_CLOSE, "", close_code=None)]
    assert f.close_frame(1012, "gateway draining; retry_ms=10") == (
        bytes((0x88, 31)) + (1012).to_bytes(2, "big") + b"gateway draining; retry_ms=10")


@pytest.mark.parametrize(("data", "code"), [
    (client_frame(f.OP_TEXT, b"x", rsv=0x40), f.CLOSE_PROTOCOL_ERROR),  # RSV1: no extension negotiated
    (bytes((0x81, 0x01)) + b"x", f.CLOSE_PROTOCOL_ERROR),  # unmasked client frame
    (client_frame(0x3, b"x"), f.CLOSE_PROTOCOL_ERROR),  # reserved data opcode
    (client_frame(0xB, b"x"), f.CLOSE_PROTOCOL_ERROR),  # reserved control opcode
    (client_frame(f.OP_PING, b"x", fin=False), f.CLOSE_PROTOCOL_ERROR),  # fragmented control frame
    (client_frame(f.OP_PING, b"x" * 126), f.CLOSE_PROTOCOL_ERROR),  # control frame over 125 bytes
    (client_frame(f.OP_CONTINUATION, b"x"), f.CLOSE_PROTOCOL_ERROR),  # continuation of nothing
    (client_frame(f.OP_TEXT, b"a", fin=False) + client_frame(f.OP_TEXT, b"b"), f.CLOSE_PROTOCOL_ERROR),
    (client_frame(f.OP_TEXT, b"\xff\xfe"), f.CLOSE_BAD_DATA),  # not UTF-8
    (client_frame(f.OP_CLOSE, b"\x03"), f.CLOSE_PROTOCOL_ERROR),  # one-byte close payload
    (client_frame(f.OP_TEXT, b"x" * 1025), f.CLOSE_TOO_BIG),
    (client_frame(f.OP_TEXT, b"x" * 600, fin=False) + client_frame(f.OP_CONTINUATION, b"x" * 600), f.CLOSE_TOO_BIG),
])
def test_violations_raise_the_close_code_the_rfc_prescribes(data: bytes, code: int) -> None:
    with pytest.raises(f.FrameError) as info:
        f.FrameReader(1024).feed(data)
    assert info.value.code == code


def test_an_oversized_frame_is_refused_from_its_header_before_its_payload_arrives() -> None:
    head = bytes((0x82, 0x80 | 127)) + (1 << 40).to_bytes(8, "big")  # claims a terabyte; nothing follows
    with pytest.raises(f.FrameError) as info:
        f.FrameReader(1 << 20).feed(head)
    assert info.value.code == f.CLOSE_TOO_BIG


@settings(max_examples=300, deadline=None)
@given(messages=st.lists(st.one_of(st.text(max_size=300).map(lambda t: (f.OP_TEXT, t)),
                                   st.binary(max_size=300).map(lambda b: (f.OP_BINARY, b))), max_size=6),
       cuts=st.lists(st.integers(0, 4000), max_size=8), fragment=st.booleans())
def test_any_split_of_the_stream_gives_the_same_messages(messages: list[tuple[int, object]], cuts: list[int],
                                                         fragment: bool) -> None:
    stream = b""
    for opcode, data in messages:
        raw = data.encode() if isinstance(data, str) else data
        if fragment and len(raw) > 1:
            half = len(raw) // 2
            stream += client_frame(opcode, raw[:half], fin=False) + client_frame(f.OP_CONTINUATION, raw[half:])
        else:
            stream += client_frame(opcode, raw)
    reader, got, start = f.FrameReader(1 << 16), [], 0
    for cut in [*sorted(c for c in cuts if c < len(stream)), len(stream)]:
        got += reader.feed(stream[start:cut])
        start = cut
    assert got == [f.Message(op, data) for op, data in messages]


# --- the upgrade request -----------------------------------------------------------------------------------

UPGRADE = (b"GET /ws?x=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: http://a\r\n"
           b"X-Many: 1\r\nX-Many: 2\r\n\r\n")


def test_a_complete_upgrade_request_is_parsed() -> None:
    request = f.parse_head(UPGRADE + b"\x81")
    assert request is not None and request.wants_websocket
    assert (request.method, request.path, request.head_size) == ("GET", "/ws", len(UPGRADE))
    assert request.headers["origin"] == "http://a" and request.headers["x-many"] == "1, 2"
    assert f.handshake_problem(request) is None
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in f.switching_protocols(request)


def test_incomplete_oversized_and_malformed_heads() -> None:
    assert f.parse_head(UPGRADE[:40]) is None
    with pytest.raises(f.HeadTooLarge):
        f.parse_head(b"GET / HTTP/1.1\r\nX: " + b"a" * f.MAX_HEAD)
    assert f.parse_head(b"GARBAGE\r\n\r\n").method == ""  # type: ignore[union-attr]
    assert f.parse_head(b"GET / SPDY/3\r\n\r\n").method == ""  # type: ignore[union-attr]
    assert f.parse_head(b"GET / HTTP/1.1\r\nno colon here\r\n\r\n").method == ""  # type: ignore[union-attr]
    assert not f.parse_head(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n").wants_websocket  # type: ignore[union-attr]


@pytest.mark.parametrize(("header", "status"), [
    (b"Sec-WebSocket-Version: 8", 426), (b"Sec-WebSocket-Key: short", 400), (b"Sec-WebSocket-Key: !!!!", 400)])
def test_bad_handshakes_get_the_status_the_rfc_prescribes(header: bytes, status: int) -> None:
    name = header.split(b":")[0]
    lines = [line for line in UPGRADE.split(b"\r\n") if not line.startswith(name)]
    head = b"\r\n".join([*lines[:2], header, *lines[2:]])
    request = f.parse_head(head)
    assert request is not None
    assert f.handshake_problem(request)[0] == status  # type: ignore[index]


# --- the client's end (benchmarks and the tests' clients use the same codec) --------------------------------

def test_a_client_frame_reads_back_through_the_servers_reader_and_the_rfc_example_masks_alike() -> None:
    key = bytes.fromhex("37fa213d")
    assert f.client_frame(f.OP_TEXT, b"Hello", key=key) == bytes.fromhex("818537fa213d7f9f4d5158")  # RFC 6455 5.7
    frames = f.client_frame(f.OP_TEXT, "é".encode() * 40_000) + f.client_frame(f.OP_PING, b"p")
    assert f.FrameReader(1 << 20).feed(frames) == [f.Message(f.OP_TEXT, "é" * 40_000), f.Message(f.OP_PING, b"p")]


def test_the_clients_reader_wants_unmasked_frames_and_can_leave_text_undecoded() -> None:
    reader = f.FrameReader(1 << 16, masked=False, utf8=False)
    assert reader.idle
    frame = f.frame_header(f.OP_TEXT, 5) + b"Hello"
    assert reader.feed(frame[:3]) == [] and not reader.idle
    assert reader.feed(frame[3:] + f.close_frame(1012, "bye")) == [
        f.Message(f.OP_TEXT, b"Hello"), f.Message(f.OP_CLOSE, "bye", close_code=1012)]
    assert reader.idle
    with pytest.raises(f.FrameError) as info:
        f.FrameReader(1 << 16, masked=False).feed(client_frame(f.OP_TEXT, b"x"))
    assert info.value.code == f.CLOSE_PROTOCOL_ERROR


def test_the_upgrade_from_the_clients_end() -> None:
    key = f.new_key()
    request = f.parse_head(f.upgrade_request("/ws", "example.com:80", key, (("Origin", "http://a"),)))
    assert request is not None and request.wants_websocket and f.handshake_problem(request) is None
    assert request.headers["origin"] == "http://a"
    answer = f.switching_protocols(request)
    response = f.parse_response_head(answer[:-4])
    assert response.status == 101 and response.upgraded(key) and not response.upgraded(f.new_key())
    refused = f.parse_response_head(f.http_response(429, "Too Many Requests", b"{}", (("Retry-After", "5"),))
                                    .split(b"\r\n\r\n")[0])
    assert (refused.status, refused.headers["retry-after"]) == (429, "5") and not refused.upgraded(key)
    assert f.parse_response_head(b"garbage").status == 0


def test_a_long_close_reason_is_cut_on_a_character_boundary() -> None:
    payload = f.close_payload(4010, "é" * 100)  # 200 bytes of reason: at most 123 fit
    assert len(payload) <= 125
    assert payload[2:].decode("utf-8") == "é" * 61
