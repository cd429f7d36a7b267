"""The handshake guard behind a real Hypercorn (`storm dev` process): a foreign Origin gets HTTP 403 and
never an upgrade; the page's own origin and clients without Origin connect (docs/security.md)."""

from __future__ import annotations

import json
import urllib.request

import pytest
import websockets
from websockets.exceptions import InvalidStatus

pytestmark = [pytest.mark.e2e, pytest.mark.security]


def _token(base: str, user: str) -> str:
    with urllib.request.urlopen(f"{base}/dev/token?user={user}&workspace=demo", timeout=5) as resp:
        return str(json.loads(resp.read())["token"])


async def _hello(url: str, token: str, **kw: object) -> str:
    async with websockets.connect(url, **kw) as ws:
        await ws.send(json.dumps({"op": "auth", "token": token}))
        return str(json.loads(await ws.recv())["type"])


async def test_foreign_origin_gets_403_and_own_origin_connects(storm_dev_server):
    base = storm_dev_server
    url = base.replace("http", "ws") + "/ws"
    with pytest.raises(InvalidStatus) as info:
        async with websockets.connect(url, origin="https://evil.example"):
            pass
    assert info.value.response.status_code == 403
    token = _token(base, "bob")
    assert await _hello(url, token, origin=base) == "hello"  # the chat page's own origin
    assert await _hello(url, token) == "hello"  # a non-browser client sends no Origin
