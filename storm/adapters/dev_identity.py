"""Dev identity: an HS256 token issuer and verifier for the embedded mode only.

Anyone holding ``STORM_DEV_SECRET`` can mint tokens for anyone, so the bootstrap refuses this adapter
when ``STORM_MODE=production`` (storm.config.Config.validate).  Tokens name a subject, a workspace slug
(``*`` for provisioning tokens not bound to one workspace), a display name and scopes.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

import jwt

from storm.adapters.verified_tokens import VerifiedTokens
from storm.errors import Unauthenticated
from storm.ports.identity import Claims

ISSUER = "storm-dev"
AUDIENCE = "storm"
DEFAULT_SCOPES = ("chat", "workspaces:create")


class DevIdentity:
    def __init__(self, secret: str, *, ttl_s: int = 3600, leeway_s: float = 5.0,
                 verified: VerifiedTokens | None = None) -> None:
        self._secret = secret
        self._ttl = ttl_s
        self._leeway = leeway_s
        self.verified = VerifiedTokens() if verified is None else verified  # the secret never changes

    def issue(
        self,
        subject: str,
        workspace: str,
        name: str | None = None,
        *,
        ttl_s: int | None = None,
        scopes: tuple[str, ...] = DEFAULT_SCOPES,
        now: float | None = None,
    ) -> str:
        now = time.time() if now is None else now
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": subject,
            "ws": workspace,
            "name": name or subject.split("|")[-1],
            "scope": " ".join(scopes),
            "iat": int(now),
            "nbf": int(now) - 1,
            "exp": int(now + (self._ttl if ttl_s is None else ttl_s)),
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._secret, algorithm="HS256")

    async def verify(self, token: str) -> Claims:
        digest = self.verified.digest(token)
        known = self.verified.get(digest)
        if known is not None:  # verified before: only its expiry can have changed (PyJWT's rule, leeway)
            if time.time() >= known.expires_at + self._leeway:
                raise Unauthenticated("token expired")
            return known
        try:
            data = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],  # never "none", never an asymmetric alg with this key
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=self._leeway,
                options={"require": ["exp", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired") from None
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid token: {type(exc).__name__}") from None
        ws = data.get("ws")
        if not isinstance(ws, str) or not ws:
            raise Unauthenticated("token has no workspace claim")
        claims = Claims(
            subject=str(data["sub"]),
            workspace=ws,
            name=str(data.get("name") or data["sub"]),
            expires_at=float(data["exp"]),
            scopes=frozenset(str(data.get("scope", "")).split()),
            token_id=str(data.get("jti", "")),
        )
        self.verified.put(digest, claims)
        return claims


if TYPE_CHECKING:  # the type checker proves the port is satisfied (centrifuge's `var _ Broker = ...`)
    from storm.ports.identity import IdentityVerifier

    def _conforms(identity: DevIdentity) -> None:
        _identity: IdentityVerifier = identity
