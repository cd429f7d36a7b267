"""Auth0 adapter against a local JWKS endpoint: the accepted token and the negative matrix, one test each
(docs/security.md, "Identity")."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from typing import Any

import pytest

from storm.adapters.auth0_identity import Auth0Identity, JwksCache
from storm.bootstrap import auth0_settings
from storm.config import Config, ConfigError
from storm.errors import Unauthenticated, Unavailable
from tests.support.jwks import AUDIENCE, WS_CLAIM, Jwks, auth0_config, new_key

pytestmark = pytest.mark.security


def _seg(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")


def _forge(header: dict[str, Any], claims: dict[str, Any], key: bytes | None) -> str:
    signing_input = f"{_seg(header)}.{_seg(claims)}"
    sig = b"" if key is None else hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(sig).decode().rstrip('=')}"


@pytest.fixture
def identity(jwks: Jwks) -> Auth0Identity:
    return Auth0Identity(auth0_settings(auth0_config(jwks, auth0_jwks_min_refetch_s=0.0)))


async def refused(identity: Auth0Identity, token: str, needle: str) -> None:
    with pytest.raises(Unauthenticated) as info:
        await identity.verify(token)
    assert needle in info.value.message
    assert not token or token not in info.value.message


async def test_valid_access_token_gives_claims(identity, jwks):
    claims = await identity.verify(jwks.token())
    assert claims.subject == "auth0|alice" and claims.workspace == "demo" and claims.name == "Alice"
    assert "chat" in claims.scopes and claims.token_id
    assert claims.expires_at > time.time() + 3000


async def test_permissions_claim_counts_as_scopes_and_aud_may_be_a_string(identity, jwks):
    claims = await identity.verify(jwks.token(scope=None, permissions=["chat", "workspaces:create"], aud=AUDIENCE))
    assert {"chat", "workspaces:create"} <= claims.scopes


async def test_alg_none_is_refused(identity, jwks):
    await refused(identity, _forge({"alg": "none", "typ": "JWT", "kid": "key-1"}, jwks.claims(), None),
                  "unsupported algorithm")


async def test_hs256_signed_with_the_public_key_is_refused(identity, jwks):
    """HS/RS confusion: an attacker signs with HMAC using the published RSA public key as the secret."""
    token = _forge({"alg": "HS256", "typ": "JWT", "kid": "key-1"}, jwks.claims(), jwks.keys[0].public_pem)
    await refused(identity, token, "unsupported algorithm")


async def test_expired_token_is_refused(identity, jwks):
    await refused(identity, jwks.token(exp=int(time.time()) - 60), "expired")


async def test_expiry_within_leeway_is_accepted(identity, jwks):
    assert await identity.verify(jwks.token(exp=int(time.time()) - 2))


async def test_not_yet_valid_token_is_refused(identity, jwks):
    await refused(identity, jwks.token(nbf=int(time.time()) + 120), "not valid yet")


async def test_wrong_issuer_is_refused(identity, jwks):
    await refused(identity, jwks.token(iss="https://evil.eu.auth0.com/"), "wrong issuer")


async def test_wrong_audience_is_refused(identity, jwks):
    await refused(identity, jwks.token(aud=["https://api.other.test"]), "wrong audience")


async def test_bad_signature_is_refused(identity, jwks):
    head, _body, sig = jwks.token().split(".")
    other = jwks.token(sub="auth0|mallory").split(".")[1]  # claims swapped under the original signature
    await refused(identity, f"{head}.{other}.{sig}", "invalid token")
    forger = new_key("key-1")  # same kid, another private key
    await refused(identity, jwks.token(forger), "invalid token")


async def test_unknown_kid_is_refused_after_one_refetch(identity, jwks):
    assert await identity.verify(jwks.token())
    before = jwks.fetches
    await refused(identity, jwks.token(new_key("key-unknown")), "unknown signing key")
    assert jwks.fetches == before + 1  # refetched once to look for a rotated key, then refused


async def test_rotated_key_is_picked_up_by_refetch(identity, jwks):
    assert await identity.verify(jwks.token())
    rotated = new_key("key-2")
    jwks.publish(jwks.keys[0], rotated)
    assert (await identity.verify(jwks.token(rotated))).subject == "auth0|alice"


async def test_unknown_kid_refetches_are_rate_limited(jwks):
    identity = Auth0Identity(auth0_settings(auth0_config(jwks, auth0_jwks_min_refetch_s=30.0)))
    assert await identity.verify(jwks.token())
    for _ in range(20):
        await refused(identity, jwks.token(new_key()), "unknown signing key")
    assert jwks.fetches == 1


async def test_missing_workspace_claim_is_refused(identity, jwks):
    await refused(identity, jwks.token(**{WS_CLAIM: None}), "workspace claim")


async def test_missing_scope_is_refused(identity, jwks):
    await refused(identity, jwks.token(scope="openid profile"), "lacks scope 'chat'")


async def test_missing_exp_and_garbage_are_refused(identity, jwks):
    await refused(identity, jwks.token(exp=None), "no expiry")
    await refused(identity, "not.a.jwt", "invalid token")
    await refused(identity, "", "invalid token")


async def test_jwks_fetch_runs_off_the_event_loop_and_once_for_concurrent_verifications(jwks):
    calls = 0
    document = json.loads(jwks.document())

    def slow_fetch(url: str, timeout: float) -> Any:
        nonlocal calls
        calls += 1
        time.sleep(0.3)  # a slow Auth0: must not stall other connections
        return document

    cache = JwksCache(jwks.url, fetch=slow_fetch)
    identity = Auth0Identity(auth0_settings(auth0_config(jwks)), jwks=cache)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        results = await asyncio.gather(*(identity.verify(jwks.token()) for _ in range(10)))
    finally:
        task.cancel()
    assert len(results) == 10 and calls == 1
    assert ticks >= 10  # the loop kept running while the keys were fetched


async def test_unreachable_jwks_refuses_without_crashing(jwks):
    """No key set yet and none reachable: Unavailable (the session answers 1011, retried), not Unauthenticated
    (4001, final for a client: a valid token is not at fault)."""
    cfg = auth0_config(jwks, auth0_jwks_url="http://127.0.0.1:9/.well-known/jwks.json")
    token = jwks.token()
    with pytest.raises(Unavailable) as info:
        await Auth0Identity(auth0_settings(cfg)).verify(token)
    assert "signing keys unavailable" in info.value.message and token not in info.value.message


def test_config_requires_auth0_settings_and_refuses_dev_identity_in_production():
    with pytest.raises(ConfigError, match="STORM_AUTH0_AUDIENCE"):
        Config.from_env({}, identity="auth0", auth0_domain="x.auth0.com")
    with pytest.raises(ConfigError, match="STORM_IDENTITY=dev is refused"):
        Config.from_env({"STORM_MODE": "production", "STORM_ALLOWED_ORIGINS": "https://chat.example.com"})
    with pytest.raises(ConfigError, match="STORM_ALLOWED_ORIGINS"):
        Config.from_env({}, mode="production", identity="auth0", auth0_domain="x.auth0.com", auth0_audience="a")
    cfg = Config.from_env({}, mode="production", identity="auth0", auth0_domain="x.auth0.com", auth0_audience="a",
                          allowed_origins="https://chat.example.com")
    ident = Auth0Identity(auth0_settings(cfg))
    assert ident.jwks._url == "https://x.auth0.com/.well-known/jwks.json"


@pytest.mark.parametrize("command", [["dev"], ["serve", "gateway"], ["serve", "api"], ["serve", "consumers"]])
def test_every_server_command_refuses_to_start_with_dev_tokens_in_production(command, monkeypatch, capsys):
    from storm_cli.main import main

    monkeypatch.setenv("STORM_MODE", "production")
    monkeypatch.setenv("STORM_IDENTITY", "dev")
    monkeypatch.setenv("STORM_ALLOWED_ORIGINS", "https://chat.example.com")
    assert main(command) == 2
    assert "STORM_IDENTITY=dev is refused in STORM_MODE=production" in capsys.readouterr().err


async def test_the_expected_issuer_is_derived_from_the_domain(jwks, tmp_path):
    """Only ``STORM_AUTH0_DOMAIN`` set: tokens of ``https://<domain>/`` pass, those of another tenant do not."""
    from storm.bootstrap import build_services

    cfg = Config.from_env({}, identity="auth0", auth0_domain="x.auth0.com/", auth0_audience=AUDIENCE,
                          auth0_jwks_url=jwks.url, auth0_workspace_claim=WS_CLAIM,
                          database_url=f"sqlite+aiosqlite:///{tmp_path}/i.db")
    identity = build_services(cfg).identity
    assert (await identity.verify(jwks.token(iss="https://x.auth0.com/"))).subject == "auth0|alice"
    await refused(identity, jwks.token(iss="https://y.auth0.com/"), "wrong issuer")


def test_bootstrap_builds_the_auth0_verifier(jwks, tmp_path):
    from storm.bootstrap import build_services

    services = build_services(auth0_config(jwks, database_url=f"sqlite+aiosqlite:///{tmp_path}/b.db"))
    assert isinstance(services.identity, Auth0Identity)


async def test_a_token_is_verified_once_while_the_key_set_stands(identity, jwks):
    """Issue 11: a reconnect with the same token skips the RS256 check; a changed key set forgets it."""
    token = jwks.token()
    first = await identity.verify(token)
    assert await identity.verify(token) is first and identity.verified.hits == 1
    identity.jwks._fetched_at = None  # due for a refetch: the cached answer does not stand
    assert await identity.verify(token) == first and identity.verified.hits == 1
    jwks.publish(new_key("key-9"))  # key-1 withdrawn (compromised, rotated out)
    identity.jwks._fetched_at = None
    await refused(identity, token, "unknown signing key")


async def test_a_cached_token_still_expires(identity, jwks):
    token = jwks.token(exp=int(time.time()) + 5)
    claims = await identity.verify(token)
    identity._now = lambda: claims.expires_at + 31  # past the 30 s leeway
    await refused(identity, token, "expired")
