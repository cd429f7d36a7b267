"""The pure part of webhooks (storm/webhooks.py, consumers/webhooks.handle): signatures, replay window,
backoff, failure policy, event mapping, target rules.  docs/security.md "Webhooks", docs/consumers.md."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid

import pytest

from consumers.webhooks import handle
from storm.errors import BadRequest
from storm.ports.broker import Delivery, Record
from storm.protocol import events as e
from storm.webhooks import (
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    RetryPolicy,
    Webhook,
    check_url,
    event_of,
    headers,
    retriable,
    sign,
    verify,
)

SECRET = "whsec_test"
BODY = b'{"type":"message.posted"}'


def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, 1_700_000_000, BODY) == f"v1={expected}"


def test_verify_accepts_a_fresh_request_and_refuses_tampering_and_replays() -> None:
    h = headers(SECRET, "evt", 1_700_000_000, BODY)
    assert verify(SECRET, h, BODY, now=1_700_000_010)
    assert not verify("whsec_other", h, BODY, now=1_700_000_010)  # wrong key
    assert not verify(SECRET, h, BODY + b" ", now=1_700_000_010)  # body changed
    assert not verify(SECRET, h, BODY, now=1_700_000_000 + 301)  # replayed after the window
    assert not verify(SECRET, h, BODY, now=1_700_000_000 - 301)  # from the future
    # a captured signature cannot be moved to a fresh timestamp: the timestamp is inside the MAC
    moved = {**h, HEADER_TIMESTAMP: "1700000500"}
    assert not verify(SECRET, moved, BODY, now=1_700_000_500)
    assert not verify(SECRET, {**h, HEADER_TIMESTAMP: "soon"}, BODY, now=1_700_000_000)
    # several signatures (key rotation): one match is enough
    rotated = {**h, HEADER_SIGNATURE: f"v1=deadbeef, {h[HEADER_SIGNATURE]}"}
    assert verify(SECRET, rotated, BODY, now=1_700_000_000)


def test_backoff_is_exponential_capped_and_jittered() -> None:
    p = RetryPolicy(max_attempts=6, base_s=0.5, cap_s=4.0)
    assert [p.backoff(n, lambda: 1.0) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert p.backoff(3, lambda: 0.25) == 0.5  # full jitter: uniform in [0, ceiling]
    assert p.backoff(3, lambda: 0.0) == 0.0


def test_default_policy_fits_in_the_ack_timeout() -> None:
    p = RetryPolicy()
    worst = p.max_attempts * p.timeout_s + sum(p.backoff(n, lambda: 1.0) for n in range(1, p.max_attempts))
    assert worst < 30.0  # STORM_ACK_TIMEOUT_S's default: no redelivery while a record is still being retried


@pytest.mark.parametrize("kwargs", [{"max_attempts": 0}, {"base_s": -1}, {"cap_s": 0.1}, {"timeout_s": 0}])
def test_policy_refuses_nonsense(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("status", "again"), [(None, True), (408, True), (429, True), (500, True), (503, True),
                                               (400, False), (401, False), (404, False), (410, False),
                                               (301, False)])
def test_which_failures_are_retried(status: int | None, again: bool) -> None:
    assert retriable(status) is again


def _record(event: object, offset: int = 7, channel: str | None = None) -> Delivery:
    ch = channel or uuid.uuid4().hex
    return Delivery(Record("acme", ch, offset, e.encode(event)), 1, None)


def test_event_mapping_and_stable_ids() -> None:
    ch = str(uuid.uuid4())
    msg = e.MessageEvent(channel=ch, id="m1", author="u1", author_name="Alice", text="hi", ts=12.5, cmid="c1")
    ev = event_of("acme", ch, 7, e.encode(msg))
    assert ev is not None and ev.type == "message.posted" and ev.offset == 7 and ev.ts == 12.5
    assert ev.data == {"id": "m1", "author": "u1", "author_name": "Alice", "text": "hi"}  # no cmid, no type
    assert ev.id == event_of("acme", ch, 7, e.encode(msg)).id  # type: ignore[union-attr]  # redelivery: same id
    assert ev.id != event_of("acme", ch, 8, e.encode(msg)).id  # type: ignore[union-attr]
    react = e.ReactionEvent(channel=ch, message_id="m1", user="u2", emoji="👍", ts=1.0, remove=True)
    assert event_of("acme", ch, 9, e.encode(react)).type == "reaction.removed"  # type: ignore[union-attr]
    assert event_of("acme", ch, 0, e.encode(e.TypingEvent(channel=ch, user="u", name="n"))) is None
    with pytest.raises(ValueError):
        event_of("acme", ch, 1, b"not json")
    with pytest.raises(ValueError):
        event_of("acme", ch, 1, json.dumps({"type": "mystery"}).encode())


def test_handle_filters_by_event_type_and_channel() -> None:
    ws, ch, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    everything = Webhook(uuid.uuid4(), ws, "https://a.example", "s", ("message.posted",))
    only_ch = Webhook(uuid.uuid4(), ws, "https://b.example", "s", ("message.posted",), channels=(ch,))
    only_other = Webhook(uuid.uuid4(), ws, "https://c.example", "s", ("message.posted",), channels=(other,))
    edits = Webhook(uuid.uuid4(), ws, "https://d.example", "s", ("message.edited",))
    d = _record(e.MessageEvent(channel=str(ch), id="m", author="u", author_name="A", text="t", ts=1.0),
                channel=ch.hex)
    handled = handle(d, [everything, only_ch, only_other, edits])
    assert handled.event is not None and handled.webhooks == (everything, only_ch)


@pytest.mark.parametrize("url", ["https://hooks.example.com/x", "https://93.184.216.34:8443/p?q=1"])
def test_production_accepts_public_https(url: str) -> None:
    assert check_url(url, allow_private=False) == url


@pytest.mark.parametrize("url", [
    "http://hooks.example.com/x",  # not https
    "https://127.0.0.1/x", "https://localhost/x", "https://10.1.2.3/", "https://192.168.0.1/",
    "https://169.254.169.254/latest/meta-data", "https://[::1]/", "https://[::ffff:127.0.0.1]/",
    "https://user:pw@hooks.example.com/", "ftp://hooks.example.com/", "https:///nohost", "not a url",
])
def test_production_refuses_plain_http_private_targets_and_credentials(url: str) -> None:
    with pytest.raises(BadRequest) as info:
        check_url(url, allow_private=False)
    assert info.value.field == "url"


def test_embedded_mode_allows_loopback_http() -> None:
    assert check_url("http://127.0.0.1:9999/hook", allow_private=True)


def test_membership_events_belong_to_the_workspace_not_a_channel() -> None:
    from storm.webhooks import MEMBERS_LOG, member_record

    user = uuid.uuid4()
    ev = event_of("acme", MEMBERS_LOG, 3, member_record("member.joined", user, 5.0, name="Bob", role="member"))
    assert ev is not None and ev.type == "member.joined" and ev.channel == "" and ev.ts == 5.0
    assert ev.data == {"user": str(user), "name": "Bob", "role": "member"}
    left = event_of("acme", MEMBERS_LOG, 4, member_record("member.left", user, 6.0))
    assert left is not None and left.data == {"user": str(user)}
    only_a_channel = Webhook(uuid.uuid4(), uuid.uuid4(), "https://a.example", "s", ("member.joined",),
                             channels=(uuid.uuid4(),))
    d = Delivery(Record("acme", MEMBERS_LOG, 3, member_record("member.joined", user, 5.0)), 1, None)
    assert handle(d, [only_a_channel]).webhooks == (only_a_channel,)  # the channel filter does not apply
    with pytest.raises(ValueError):
        member_record("member.exploded", user, 1.0)


@pytest.mark.parametrize(("env", "needle"), [
    ({"STORM_WEBHOOK_BACKOFF_S": "10", "STORM_WEBHOOK_BACKOFF_CAP_S": "1"}, "STORM_WEBHOOK_BACKOFF_S"),
    ({"STORM_WEBHOOK_BACKOFF_S": "-1"}, "STORM_WEBHOOK_BACKOFF_S"),
    ({"STORM_WEBHOOK_MAX_ATTEMPTS": "0"}, "STORM_WEBHOOK_MAX_ATTEMPTS"),
    ({"STORM_WEBHOOK_TIMEOUT_S": "0"}, "STORM_WEBHOOK_TIMEOUT_S"),
])
def test_bad_webhook_settings_name_the_variable(env: dict[str, str], needle: str) -> None:
    from storm.config import Config, ConfigError

    with pytest.raises(ConfigError, match=needle):
        Config.from_env(env)


def test_the_policy_comes_from_the_settings() -> None:
    from storm.config import Config

    cfg = Config.from_env({"STORM_WEBHOOK_MAX_ATTEMPTS": "3", "STORM_WEBHOOK_BACKOFF_S": "0.1",
                           "STORM_WEBHOOK_BACKOFF_CAP_S": "2", "STORM_WEBHOOK_TIMEOUT_S": "1.5"})
    assert RetryPolicy.of(cfg) == RetryPolicy(max_attempts=3, base_s=0.1, cap_s=2.0, timeout_s=1.5)
