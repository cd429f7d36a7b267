"""Auth0 identity: RS256 access tokens verified against the tenant's JWKS (docs/security.md, "Identity").

The signature is checked by auth0-python's :class:`AsymmetricSignatureVerifier` (it refuses any ``alg``
but RS256, so ``none`` and HS256-signed-with-the-public-key never reach a key).  Its ``TokenVerifier``
checks *ID* tokens, so the access-token claims are checked here: ``iss``, ``aud`` containing the API
identifier, ``exp``/``nbf`` with a small leeway, the workspace claim and the required scopes.

Keys: auth0-python fetches JWKS synchronously with ``requests`` (and without a timeout), which would block
the event loop.  :class:`JwksCache` fetches in a worker thread with a timeout, keeps the keys for
``STORM_AUTH0_JWKS_CACHE_S``, fetches at most once at a time (concurrent verifications wait for the same
fetch), and refetches on an unknown ``kid`` at most once per ``STORM_AUTH0_JWKS_MIN_REFETCH_S`` so a flood
of tokens with made-up ``kid``s cannot turn into a flood of requests to Auth0.  When a refetch fails the
keys already known stay in use.  Tokens are never logged.

Cost (issue 11): the header is read once to pick the key and the token is decoded once to check it (it
was decoded three times), and a token verified before is answered from
:class:`~storm.adapters.verified_tokens.VerifiedTokens` (its ``exp`` checked again) while the key set is
the one it was verified under: any change of the key set forgets every earlier verification.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard

import jwt
from auth0.authentication.token_verifier import AsymmetricSignatureVerifier

from storm.adapters.verified_tokens import VerifiedTokens
from storm.errors import Unauthenticated, Unavailable
from storm.ports.identity import Claims

log = logging.getLogger("storm.identity.auth0")

ALGORITHM = "RS256"
FETCH_TIMEOUT_S = 5.0
MAX_JWKS_BYTES = 256 * 1024


def _fetch_json(url: str, timeout: float) -> Any:
    """Blocking GET of the JWKS document (runs in a worker thread)."""
    import requests

    response = requests.get(url, timeout=timeout, headers={"Accept": "application/json"})
    response.raise_for_status()
    if len(response.content) > MAX_JWKS_BYTES:
        raise ValueError("JWKS document too large")
    return json.loads(response.content)


def parse_jwks(document: Any) -> dict[str, Any]:
    """``kid`` -> RSA public key for every usable signing key; other entries are skipped."""
    keys: dict[str, Any] = {}
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document")
    for jwk in document["keys"]:
        if not isinstance(jwk, dict) or jwk.get("kty") != "RSA" or not isinstance(jwk.get("kid"), str):
            continue
        if jwk.get("use", "sig") != "sig" or jwk.get("alg", ALGORITHM) != ALGORITHM:
            continue
        try:
            keys[jwk["kid"]] = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(jwk))
        except (ValueError, TypeError, KeyError, jwt.PyJWTError):
            log.warning("skipping an unreadable JWKS key kid=%.40s", jwk["kid"])
    return keys


class JwksCache:
    """The tenant's signing keys, fetched off the event loop (see the module docstring)."""

    def __init__(
        self,
        url: str,
        *,
        ttl_s: float = 600.0,
        min_refetch_s: float = 30.0,
        timeout_s: float = FETCH_TIMEOUT_S,
        monotonic: Callable[[], float] = time.monotonic,
        fetch: Callable[[str, float], Any] = _fetch_json,
    ) -> None:
        self._url = url
        self._ttl = ttl_s
        self._min_refetch = min_refetch_s
        self._timeout = timeout_s
        self._now = monotonic
        self._fetch_blocking = fetch
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None  # last successful fetch
        self._tried_at: float | None = None  # last attempt, successful or not
        self._inflight: asyncio.Future[None] | None = None
        self.fetches = 0  # attempts, successful or not
        self.generation = 0  # one more each time a fetch changes the key set

    def current(self) -> bool:
        """The keys were fetched and are not due for a refetch (a cached verification may then stand)."""
        return self._fetched_at is not None and self._now() - self._fetched_at < self._ttl

    async def key(self, kid: str) -> Any:
        now = self._now()
        if self._fetched_at is None or now - self._fetched_at >= self._ttl:
            await self._refresh()
        elif kid not in self._keys and (self._tried_at is None or now - self._tried_at >= self._min_refetch):
            await self._refresh()  # a rotated key: refetch, but not more than once per min_refetch_s
        key = self._keys.get(kid)
        if key is None:
            raise Unauthenticated("invalid token: unknown signing key")
        return key

    async def _refresh(self) -> None:
        """One fetch at a time: verifications that need keys while a fetch runs wait for that fetch."""
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._fetch())
        await asyncio.shield(self._inflight)

    async def _fetch(self) -> None:
        try:
            self._tried_at = self._now()
            self.fetches += 1
            try:
                document = await asyncio.to_thread(self._fetch_blocking, self._url, self._timeout)
                keys = parse_jwks(document)
            except Exception as exc:  # network, HTTP status, JSON: keep what we had
                log.warning("JWKS fetch from %s failed: %s", self._url, type(exc).__name__)
                if not self._keys:  # not the token's fault: the session answers 1011 `unavailable`, retried
                    raise Unavailable("signing keys unavailable") from None
                return
            if keys.keys() != self._keys.keys() or any(keys[k] != self._keys[k] for k in keys):
                self.generation += 1
            self._keys = keys
            self._fetched_at = self._tried_at
        finally:
            self._inflight = None


class _KeyedVerifier(AsymmetricSignatureVerifier):
    """auth0-python's RS256 verifier, handed the key we already fetched instead of fetching it itself."""

    def __init__(self) -> None:
        super().__init__("https://jwks.invalid/", algorithm=ALGORITHM)  # its own fetcher is never used
        self._key: Any = None

    def _fetch_key(self, key_id: str) -> Any:
        return self._key

    def check(self, token: str, key: Any) -> dict[str, Any]:
        """The signature checked with ``key`` by auth0-python's decode (``alg`` pinned to RS256 there too);
        the header was already read by the caller, so it is not read twice more (``verify_signature``)."""
        return self._decode_jwt(token, key)


@dataclass(frozen=True, slots=True)
class Auth0Settings:
    """What the adapter takes from the configuration; :func:`storm.bootstrap.auth0_settings` builds it from
    ``STORM_AUTH0_*`` (docs/configuration.md), deriving the issuer and JWKS address from the domain."""

    issuer: str  # expected `iss`
    audience: str  # must be in `aud`
    jwks_url: str
    leeway_s: float = 30.0  # clock skew allowed on exp/nbf
    workspace_claim: str = "https://storm.chat/ws"
    required_scopes: frozenset[str] = frozenset({"chat"})
    jwks_cache_s: float = 600.0
    jwks_min_refetch_s: float = 30.0


class Auth0Identity:
    def __init__(self, settings: Auth0Settings, *, wall: Callable[[], float] = time.time,
                 jwks: JwksCache | None = None, verified: VerifiedTokens | None = None) -> None:
        self._issuer = settings.issuer
        self._audience = settings.audience
        self._leeway = settings.leeway_s
        self._ws_claim = settings.workspace_claim
        self._required = settings.required_scopes
        self._now = wall
        self.jwks = jwks or JwksCache(settings.jwks_url, ttl_s=settings.jwks_cache_s,
                                      min_refetch_s=settings.jwks_min_refetch_s)
        self._verifier = _KeyedVerifier()
        self.verified = VerifiedTokens() if verified is None else verified

    async def verify(self, token: str) -> Claims:
        jwks = self.jwks
        digest = self.verified.digest(token)
        if jwks.current():
            known = self.verified.get(digest, jwks.generation)
            if known is not None:
                if self._now() > known.expires_at + self._leeway:
                    raise Unauthenticated("token expired")
                return known
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthenticated("invalid token: not a JWT") from None
        if header.get("alg") != ALGORITHM:  # refuses "none" and HS256 (HS/RS confusion) before any key
            raise Unauthenticated("invalid token: unsupported algorithm")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("invalid token: no key id")
        key = await self.jwks.key(kid)
        try:
            data = self._verifier.check(token, key)
        except Exception as exc:  # TokenValidationError, jwt errors: all mean "not a token of ours"
            raise Unauthenticated(f"invalid token: {type(exc).__name__}") from None
        claims = self._claims(data)
        self.verified.put(digest, claims, jwks.generation)
        return claims

    def _claims(self, data: dict[str, Any]) -> Claims:
        now = self._now()
        if data.get("iss") != self._issuer:
            raise Unauthenticated("invalid token: wrong issuer")
        aud = data.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if self._audience not in audiences:
            raise Unauthenticated("invalid token: wrong audience")
        exp = data.get("exp")
        if not _number(exp):
            raise Unauthenticated("invalid token: no expiry")
        if now > exp + self._leeway:
            raise Unauthenticated("token expired")
        nbf = data.get("nbf")
        if nbf is not None and (not _number(nbf) or now < nbf - self._leeway):
            raise Unauthenticated("token not valid yet")
        sub = data.get("sub")
        if not isinstance(sub, str) or not sub:
            raise Unauthenticated("invalid token: no subject")
        ws = data.get(self._ws_claim)
        if not isinstance(ws, str) or not ws:
            raise Unauthenticated("token has no workspace claim")
        scopes = set(data["scope"].split()) if isinstance(data.get("scope"), str) else set()
        perms = data.get("permissions")
        if isinstance(perms, list):
            scopes.update(p for p in perms if isinstance(p, str))
        missing = self._required - scopes
        if missing:
            raise Unauthenticated(f"token lacks scope {sorted(missing)[0]!r}")
        name = data.get("name")
        return Claims(
            subject=sub, workspace=ws, name=name if isinstance(name, str) and name else sub,
            expires_at=float(exp), scopes=frozenset(scopes), token_id=str(data.get("jti") or ""),
        )


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


if TYPE_CHECKING:  # the type checker proves the port is satisfied (centrifuge's `var _ Broker = ...`)
    from storm.ports.identity import IdentityVerifier

    def _conforms(identity: Auth0Identity) -> None:
        _identity: IdentityVerifier = identity
