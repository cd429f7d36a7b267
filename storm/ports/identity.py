"""Identity port: turn a bearer token into verified claims, or refuse it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Claims:
    subject: str  # stable user id at the identity provider ("dev|alice", "auth0|…")
    workspace: str  # slug of the workspace this token is for: a session is bound to one workspace
    name: str  # display name
    expires_at: float  # epoch seconds
    scopes: frozenset[str] = field(default_factory=frozenset)
    token_id: str = ""  # jti, for revocation


class IdentityVerifier(Protocol):
    async def verify(self, token: str) -> Claims:
        """Return the claims of a valid token; raise ``storm.errors.Unauthenticated`` otherwise.

        Never logs the token.  May fetch keys, but never blocks the event loop.
        """
        ...
