"""A small client of Toxiproxy's HTTP API (github.com/Shopify/toxiproxy, v2; docs/operations.md, "Toxiproxy").

Proxies: ``POST /proxies`` {name, listen, upstream, enabled}, ``POST /proxies/<name>`` {enabled} (a cut:
the proxy stops listening and drops its connections), ``DELETE /proxies/<name>``.  Toxics:
``POST /proxies/<name>/toxics`` {name, type, stream, toxicity, attributes} with type ``latency`` (latency,
jitter ms), ``timeout`` (timeout ms: stop the data, close after), ``bandwidth`` (rate KB/s), ...;
``DELETE /proxies/<name>/toxics/<toxic>``.  ``POST /reset`` enables every proxy and removes every toxic.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

TOXIC_TYPES = ("latency", "timeout", "bandwidth", "slow_close", "slicer", "limit_data", "reset_peer")


class ToxiproxyError(RuntimeError):
    """Toxiproxy refused a request or does not answer; the message says which and why."""


class Toxiproxy:
    def __init__(self, url: str = "http://127.0.0.1:8474", timeout_s: float = 10.0) -> None:
        if not url.startswith(("http://127.0.0.1", "http://localhost")):
            raise ToxiproxyError(f"Toxiproxy must run on loopback here, got {url!r}")
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200, 201, 204)) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method,  # noqa: S310 - loopback
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:  # noqa: S310 - loopback
                raw = response.read()
                status = response.status
        except urllib.error.HTTPError as exc:
            raw, status = exc.read(), exc.code
        except (urllib.error.URLError, OSError) as exc:
            raise ToxiproxyError(f"Toxiproxy at {self.url} does not answer ({exc}); start it with "
                                 "scripts/services.sh up toxiproxy") from None
        if status not in ok:
            raise ToxiproxyError(f"{method} {path}: {status} {raw[:300].decode(errors='replace')}")
        return json.loads(raw) if raw.strip() else None

    def version(self) -> str:
        return str(self._call("GET", "/version"))

    def proxies(self) -> dict[str, Any]:
        return dict(self._call("GET", "/proxies"))

    def create(self, name: str, listen: str, upstream: str) -> dict[str, Any]:
        return dict(self._call("POST", "/proxies", {"name": name, "listen": listen, "upstream": upstream,
                                                    "enabled": True}))

    def delete(self, name: str) -> None:
        self._call("DELETE", f"/proxies/{name}", ok=(204, 404))

    def set_enabled(self, name: str, enabled: bool) -> None:
        self._call("POST", f"/proxies/{name}", {"enabled": enabled})

    def add_toxic(self, proxy: str, name: str, kind: str, attributes: dict[str, float], *,
                  stream: str = "downstream", toxicity: float = 1.0) -> None:
        if kind not in TOXIC_TYPES:
            raise ToxiproxyError(f"unknown toxic type {kind!r}; expected one of {', '.join(TOXIC_TYPES)}")
        if stream not in ("upstream", "downstream"):
            raise ToxiproxyError(f"stream must be upstream or downstream, got {stream!r}")
        self._call("POST", f"/proxies/{proxy}/toxics", {"name": name, "type": kind, "stream": stream,
                                                        "toxicity": toxicity, "attributes": attributes})

    def remove_toxic(self, proxy: str, name: str) -> None:
        self._call("DELETE", f"/proxies/{proxy}/toxics/{name}", ok=(204, 404))

    def reset(self) -> None:
        self._call("POST", "/reset")
