"""Tokens never appear in logs: every record (all loggers, DEBUG and up) captured while authentication
fails in every way, over the gateway, the REST API and the Auth0 adapter, is searched for the token text.
The redaction filter (storm/redact.py) is checked on its own."""

from __future__ import annotations

import json
import logging
import time

import pytest

from storm.adapters.auth0_identity import Auth0Identity
from storm.adapters.dev_identity import DevIdentity
from storm.bootstrap import auth0_settings
from storm.errors import Unauthenticated, Unavailable
from storm.redact import REDACTED, SecretRedactor, install, redact
from tests.service.test_isolation import World, world  # noqa: F401 - fixture
from tests.service.test_session import ListTransport
from tests.support.jwks import Jwks, auth0_config, new_key

pytestmark = pytest.mark.security


def _all_text(records: list[logging.LogRecord]) -> str:
    parts = []
    for r in records:
        parts.append(r.getMessage())
        if r.exc_info:
            parts.append(logging.Formatter().formatException(r.exc_info))
        if r.exc_text:
            parts.append(r.exc_text)
    return "\n".join(parts)


def _bad_tokens(w: World) -> list[str]:
    forged = DevIdentity("another-secret-of-at-least-32-bytes!!")
    good = w.identity
    return [
        forged.issue("dev|alice", "demo"),  # bad signature
        good.issue("dev|alice", "demo", ttl_s=-600),  # expired
        good.issue("dev|mallory", "demo"),  # not a member
        good.issue("dev|alice", "nowhere"),  # unknown workspace
        good.issue("dev|alice", "demo")[:-5] + "AAAAA",  # tampered
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",  # alg none
    ]


async def test_no_token_text_in_logs_during_gateway_and_rest_auth_failures(world, caplog):  # noqa: F811
    caplog.set_level(logging.DEBUG)
    tokens = _bad_tokens(world)
    for tok in tokens:
        from storm.protocol.session import Session

        s = Session(world.gateway.session_context, ListTransport())
        await s.receive(json.dumps({"op": "auth", "token": tok}))
        status, _ = await world.rest("GET", "/v1/workspaces/demo/members", tok)
        assert status in (401, 403)
    ok = world.token("alice", "demo")
    s = Session(world.gateway.session_context, ListTransport())
    await s.receive(json.dumps({"op": "auth", "token": ok}))
    await s.receive(json.dumps({"op": "auth", "token": tokens[0]}))  # a refused refresh
    assert _leaks([*tokens, ok], _all_text(caplog.records)) == []
    # ... and that "nothing" could have been something: the search finds a token in a line, and the capture
    # holds what the loggers of the session and of the tenants API write at DEBUG, the lowest level.
    assert _leaks([ok], f"auth failed for {ok}")
    for name in ("storm.session", "storm.tenants"):
        logging.getLogger(name).debug("canary %s", ok)
        assert any(r.name == name and r.getMessage().startswith("canary ") for r in caplog.records), name


def _leaks(tokens: list[str], text: str) -> list[str]:
    """The pieces (header, claims, signature) of ``tokens`` long enough to identify one, found in ``text``."""
    return [piece for tok in tokens for piece in tok.split(".") if len(piece) >= 16 and piece in text]


async def test_no_token_text_in_logs_during_auth0_failures(jwks: Jwks, caplog):
    caplog.set_level(logging.DEBUG)
    identity = Auth0Identity(auth0_settings(auth0_config(jwks, auth0_jwks_min_refetch_s=0.0)))
    tokens = [jwks.token(new_key()), jwks.token(exp=int(time.time()) - 600), jwks.token(aud=["x"]),
              jwks.token(scope="none")]
    unreachable = Auth0Identity(auth0_settings(auth0_config(jwks, auth0_jwks_url="http://127.0.0.1:9/jwks.json")))
    for tok in tokens:
        for ident in (identity, unreachable):
            try:
                await ident.verify(tok)
            except (Unauthenticated, Unavailable) as exc:  # unreachable keys: unavailable (retried), ade901f
                assert tok not in exc.message
    text = _all_text(caplog.records)
    assert caplog.records  # the failed fetches were logged ...
    for tok in tokens:
        assert tok.split(".")[2] not in text and tok.split(".")[1] not in text  # ... without any token


def test_redactor_removes_jwts_bearer_values_and_secrets():
    jwt_text = DevIdentity("x" * 32).issue("dev|alice", "demo")
    assert jwt_text not in redact(f"auth failed for {jwt_text} from 1.2.3.4")
    assert REDACTED in redact(f"Authorization: Bearer {jwt_text}")
    assert redact("Authorization: Bearer abcdefgh12345678") == f"Authorization: Bearer {REDACTED}"
    assert redact("STORM_DEV_SECRET=supersecretvalue1") == f"STORM_DEV_SECRET={REDACTED}"
    assert redact("published 3 messages to general") == "published 3 messages to general"


def test_installed_redactor_rewrites_records_and_tracebacks():
    secret = DevIdentity("y" * 32).issue("dev|bob", "demo")
    logger = logging.getLogger("storm.test.redact")
    logger.propagate = False
    lines: list[str] = []

    class ListHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = ListHandler()
    logger.addHandler(handler)
    try:
        install(logger)
        install(logger)
        assert sum(isinstance(f, SecretRedactor) for f in handler.filters) == 1
        logger.warning("token %s refused", secret)
        try:
            raise ValueError(f"bad token {secret}")
        except ValueError:
            logger.exception("while checking")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    assert len(lines) == 2 and all(secret not in line for line in lines)
    assert REDACTED in lines[0] and REDACTED in lines[1]


def test_hypercorn_error_log_goes_through_the_redacted_root_handlers(capsys):
    """The server library's own log lines are redacted too, and written once (no handler of its own)."""
    from gateway.serve import hypercorn_config
    from storm.config import Config

    secret = DevIdentity("z" * 32).issue("dev|carol", "demo")
    root = logging.getLogger()
    handler = logging.StreamHandler()  # stderr, as the CLI's logging.basicConfig sets it up
    root.addHandler(handler)
    try:
        install()
        config = hypercorn_config(Config.from_env({}))
        assert config.errorlog is logging.getLogger("hypercorn.error")
        assert not logging.getLogger("hypercorn.error").handlers
        logging.getLogger("hypercorn.error").error("Error in ASGI Framework: token %s", secret)
    finally:
        root.removeHandler(handler)
    err = capsys.readouterr().err
    assert secret not in err and err.count(REDACTED) == 1

