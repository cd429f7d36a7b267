"""Helpers for `storm dev` (embedded mode): dev tokens and the channel list over HTTP (docs/sdk.md).

``GET /dev/token`` exists only in embedded mode; in a deployment your token provider asks your identity
provider instead.  Blocking HTTP runs in a thread, so these are safe to await from the event loop.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

from storm_sdk.errors import StormSdkError


class HttpError(StormSdkError):
    code = "http_error"

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retriable = status is None or status >= 500


def _get_json(url: str, headers: dict[str, str], timeout: float) -> Any:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url!r}")
    req = urllib.request.Request(url, headers={"Accept": "application/json", **headers})  # noqa: S310 - checked above
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - checked above
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise HttpError(f"GET {url}: HTTP {exc.code}", status=exc.code) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise HttpError(f"GET {url}: {exc}") from None


def ws_url(base_url: str) -> str:
    """``http://host:port`` -> ``ws://host:port/ws`` (and https -> wss)."""
    parts = urllib.parse.urlsplit(base_url.rstrip("/"))
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme)
    if scheme is None:
        raise ValueError(f"base_url must be http:// or https:// (got {base_url!r})")
    return urllib.parse.urlunsplit((scheme, parts.netloc, "/ws", "", ""))


def dev_token_provider(base_url: str, user: str, workspace: str = "demo", *, timeout: float = 5.0
                       ) -> Callable[[], Awaitable[str]]:
    """A token provider minting a fresh dev token for ``user`` at every (re)connect."""
    query = urllib.parse.urlencode({"user": user, "workspace": workspace})
    url = f"{base_url.rstrip('/')}/dev/token?{query}"

    async def provide() -> str:
        body = await asyncio.to_thread(_get_json, url, {}, timeout)
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise HttpError(f"GET {url}: no token in the response")
        return token

    return provide


async def list_channels(base_url: str, token: str, workspace: str = "demo", *, timeout: float = 5.0
                        ) -> dict[str, str]:
    """``{channel name: channel id}`` of ``workspace`` from the tenants API."""
    url = f"{base_url.rstrip('/')}/v1/workspaces/{urllib.parse.quote(workspace)}/channels"
    body = await asyncio.to_thread(_get_json, url, {"Authorization": f"Bearer {token}"}, timeout)
    items = body.get("channels") if isinstance(body, dict) else body
    if not isinstance(items, list):
        raise HttpError(f"GET {url}: unexpected response")
    return {c["name"]: c["id"] for c in items if isinstance(c, dict) and "id" in c and "name" in c}
