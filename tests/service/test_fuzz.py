"""Property-based fuzzing in every `make test` (storm_tools/fuzz.py has the strategies and the properties).

Budget, in Hypothesis examples (each one generated input): 5000 decoder frames + 1600 session conversations
(1 to 6 frames each, about 5600 frames) + 1000 REST bodies here, plus the 8 x 300 REST requests of
tests/service/test_tenants_fuzz.py: 10 000 examples, zero unhandled exceptions allowed.  `storm fuzz --cases N`
runs the same properties for longer.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storm.protocol import commands as c
from storm.protocol.codes import ErrorCode
from storm_tools.fuzz import REST_ENDPOINTS, RestTarget, SessionTarget, check_decoder, frames, rest_bodies, run_campaign

pytestmark = [pytest.mark.fuzz, pytest.mark.security]


def _budget(n: int) -> settings:
    return settings(max_examples=n, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


DECODER_EXAMPLES, SESSION_EXAMPLES, REST_EXAMPLES = 5000, 1600, 1000


@_budget(DECODER_EXAMPLES)
@given(frame=frames())
def test_decoder_accepts_or_refuses_every_frame_with_a_known_code(frame: Any) -> None:
    check_decoder(frame)


@pytest.mark.parametrize(("frame", "code"), [
    ("[" * 5000, ErrorCode.MALFORMED), ("\ud800", ErrorCode.MALFORMED), ('{"op":"\\ud800"}', ErrorCode.MALFORMED),
    ('{"op":"nope"}', ErrorCode.UNKNOWN_OP), ("{", ErrorCode.MALFORMED), ('{"op":"ping","id":1.0}',
                                                                        ErrorCode.BAD_REQUEST),
    (b'"\x80"', ErrorCode.MALFORMED),  # a string of invalid UTF-8 where an object belongs
])
def test_decoder_regressions_found_by_fuzzing(frame: str | bytes, code: ErrorCode) -> None:
    with pytest.raises(c.ProtocolViolation) as info:
        c.decode_command(frame, 65536)
    assert info.value.code is code


@pytest.fixture(scope="module")
def session_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionTarget]:
    with asyncio.Runner() as runner:
        target = SessionTarget(runner, Path(tmp_path_factory.mktemp("fuzz-session")))
        target.start()
        try:
            yield target
        finally:
            target.stop()


@_budget(SESSION_EXAMPLES)
@given(data=st.data())
def test_session_survives_any_conversation(session_target: SessionTarget, data: st.DataObject) -> None:
    session_target.check(data.draw(st.lists(frames(session_target.channels), min_size=1, max_size=6)))


def test_unknown_ops_and_bad_json_get_errors_and_repeated_garbage_closes_4004(session_target: SessionTarget) -> None:
    garbage = ["{", '{"op":"nope"}', "[]", '{"op":"publish"}', "\x00"] * 2
    events, closed = session_target.converse(garbage[:9])
    expected = ["malformed", "unknown_op", "malformed", "bad_request", "malformed"] * 2
    assert [e["code"] for e in events[1:]] == expected[:9]
    assert closed is None  # nine in a row: still open
    events, closed = session_target.converse(garbage)
    assert len([e for e in events if e["type"] == "error"]) == 10
    assert closed is not None and closed[0] == 4004


@pytest.fixture(scope="module")
def rest_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestTarget]:
    with asyncio.Runner() as runner:
        target = RestTarget(runner, Path(tmp_path_factory.mktemp("fuzz-rest")))
        target.start()
        try:
            yield target
        finally:
            target.stop()


@_budget(REST_EXAMPLES)
@given(endpoint=st.integers(0, len(REST_ENDPOINTS) - 1), body=rest_bodies)
def test_rest_write_endpoints_never_5xx(rest_target: RestTarget, endpoint: int, body: Any) -> None:
    rest_target.check(endpoint, body)


def test_storm_fuzz_campaign_reports_json_summary() -> None:
    result = run_campaign("decoder", 50, seed=1)
    assert result["target"] == "decoder" and result["cases"] >= 50 and result["failures"] == []
    json.dumps(result)


def test_storm_fuzz_cli_prints_a_json_summary(capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from storm_cli.main import cmd_fuzz

    args = argparse.Namespace(cases=40, target="decoder", seed=3)
    assert cmd_fuzz(args) == 0
    assert logging.getLogger("storm").level == logging.NOTSET  # the campaign's quieting is undone
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["failed"] is False and summary["targets"]["decoder"]["cases"] >= 40
    assert "storm fuzz: decoder 40/40" in err  # progress on stderr
