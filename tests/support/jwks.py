"""A local Auth0 tenant for the security tests: a JWKS endpoint (http.server on 127.0.0.1, RSA keys generated
per run) and a minter of Auth0-shaped RS256 access tokens, so the Auth0 adapter is tested end to end without
Auth0.  The fixtures ``jwks_server`` and ``jwks`` (tests/service/conftest.py) serve it."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from storm.config import Config

ISSUER = "https://storm-test.eu.auth0.com/"
AUDIENCE = "https://api.storm.test"
WS_CLAIM = "https://storm.chat/ws"


def _b64(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@dataclass
class SigningKey:
    kid: str
    private: Any

    @property
    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)

    def jwk(self) -> dict[str, Any]:
        numbers = self.private.public_key().public_numbers()
        return {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid, "n": _b64(numbers.n),
                "e": _b64(numbers.e)}


def new_key(kid: str | None = None) -> SigningKey:
    return SigningKey(kid or uuid.uuid4().hex[:16], rsa.generate_private_key(public_exponent=65537, key_size=2048))


@dataclass
class Jwks:
    """The tenant: its published keys (mutable, to rotate), a counter of fetches, and a token minter."""

    url: str
    keys: list[SigningKey]
    fetches: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, *keys: SigningKey) -> None:
        with self.lock:
            self.keys = list(keys)

    def document(self) -> bytes:
        with self.lock:
            self.fetches += 1
            return json.dumps({"keys": [k.jwk() for k in self.keys]}).encode()

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER, "aud": [AUDIENCE, f"{ISSUER}userinfo"], "sub": "auth0|alice", WS_CLAIM: "demo",
            "scope": "openid chat", "iat": now, "nbf": now - 1, "exp": now + 3600, "jti": uuid.uuid4().hex,
            "name": "Alice",
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, key: SigningKey | None = None, *, kid: str | None = None, **overrides: Any) -> str:
        key = key or self.keys[0]
        return jwt.encode(self.claims(**overrides), key.private, algorithm="RS256",
                          headers={"kid": kid or key.kid})


class _Handler(BaseHTTPRequestHandler):
    jwks: Jwks

    def do_GET(self) -> None:
        if self.path != "/.well-known/jwks.json":
            self.send_error(404)
            return
        body = self.jwks.document()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass


def serve_jwks() -> tuple[Jwks, ThreadingHTTPServer, threading.Thread]:
    """Start the JWKS endpoint on a free loopback port with one key ``key-1``; stop it with :func:`stop_jwks`."""
    jwks = Jwks(url="", keys=[new_key("key-1")])
    handler = type("Handler", (_Handler,), {"jwks": jwks})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    jwks.url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    return jwks, server, thread


def stop_jwks(server: ThreadingHTTPServer, thread: threading.Thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join(5)


def auth0_config(jwks: Jwks, **overrides: Any) -> Config:
    values: dict[str, Any] = {
        "identity": "auth0", "auth0_issuer": ISSUER, "auth0_audience": AUDIENCE, "auth0_jwks_url": jwks.url,
        "auth0_leeway_s": 5.0, "auth0_workspace_claim": WS_CLAIM, "auth0_required_scopes": "chat",
    }
    values.update(overrides)
    return Config.from_env({}, **values)
