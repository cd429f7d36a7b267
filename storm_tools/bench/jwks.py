"""An Auth0-style issuer for the benches: an RSA key, its JWKS served on loopback, RS256 access tokens.

``storm bench connect --services real`` (the default ``--identity rs256``) points the gateways at it with
``STORM_IDENTITY=auth0`` and ``STORM_AUTH0_*`` (docs/configuration.md), so every connect verifies an RS256
signature against the gateway's cached JWKS, as in production.  The same shape as the tests' tenant
(tests/support/jwks.py), which tooling cannot import."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ISSUER = "https://storm-bench.auth0.local/"
AUDIENCE = "https://api.storm.bench"
WS_CLAIM = "https://storm.chat/ws"


def _b64(n: int) -> str:
    return base64.urlsafe_b64encode(n.to_bytes((n.bit_length() + 7) // 8, "big")).decode().rstrip("=")


class BenchIssuer:
    """``with BenchIssuer() as issuer:`` serves ``/.well-known/jwks.json``; ``issuer.token(...)`` signs."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.kid = uuid.uuid4().hex[:16]
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        numbers = self._key.public_key().public_numbers()
        self._document = json.dumps({"keys": [{"kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
                                               "n": _b64(numbers.n), "e": _b64(numbers.e)}]}).encode()
        self.fetches = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def __enter__(self) -> BenchIssuer:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path != "/.well-known/jwks.json":
                    self.send_error(404)
                    return
                issuer.fetches += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(issuer._document)))
                self.end_headers()
                self.wfile.write(issuer._document)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/.well-known/jwks.json"
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def env(self) -> dict[str, str]:
        """The gateways' settings for this issuer."""
        return {"STORM_IDENTITY": "auth0", "STORM_AUTH0_DOMAIN": "storm-bench.auth0.local",
                "STORM_AUTH0_ISSUER": ISSUER, "STORM_AUTH0_AUDIENCE": AUDIENCE, "STORM_AUTH0_JWKS_URL": self.url,
                "STORM_AUTH0_WORKSPACE_CLAIM": WS_CLAIM, "STORM_AUTH0_REQUIRED_SCOPES": "chat"}

    def token(self, subject: str, workspace: str, name: str, ttl_s: float = 3600) -> str:
        import jwt

        now = int(time.time())
        claims = {"iss": ISSUER, "aud": [AUDIENCE, f"{ISSUER}userinfo"], "sub": subject, WS_CLAIM: workspace,
                  "scope": "openid chat", "iat": now, "nbf": now - 1, "exp": now + int(ttl_s),
                  "jti": uuid.uuid4().hex, "name": name}
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})
