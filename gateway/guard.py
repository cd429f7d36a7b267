"""Handshake guard: checks a WebSocket upgrade before the front door accepts it (docs/security.md).

Called by the front door (gateway/frontdoor.py) with the request head, before the ``101``, so a refused
socket costs no session, no task and no outbox:

* **Origin allowlist** (cross-site WebSocket hijacking).  Browsers always send ``Origin``; a page on
  another site that tries to open ``/ws`` with the victim's cookies or network position is refused with
  HTTP **403**.  With ``STORM_ALLOWED_ORIGINS`` set, only those origins pass.  Left empty (embedded mode
  only; production refuses to start without a list) the gateway allows the same origin as the request's
  ``Host`` and the local forms of its own address.  Requests without ``Origin`` (non-browser clients:
  SDKs, bots, the benchmarks) pass: they cannot be driven by a foreign web page.
* **Handshakes in progress** (``STORM_MAX_HANDSHAKES``, admission control, issue 11): upgraded sockets whose
  session has not yet answered ``auth`` (``hello`` or a close), counted from the upgrade until then; over
  the bound, HTTP **503** with ``Retry-After: STORM_HANDSHAKE_RETRY_AFTER_S`` at once, so that a reconnect
  storm is told to come back later instead of queueing handshakes until they time out.  The clients
  (storm_sdk, the chat page) wait that long plus a random share of it.
  The bound also follows the gateway's **pace**: beyond ``QUEUE_FLOOR`` handshakes in progress, an upgrade
  is refused when those in progress would take more than ``QUEUE_TARGET_S`` to answer at the rate handshakes
  were answered over the last ``PACE_WINDOW_S`` (Little's law), with a ``Retry-After`` of that wait (at most
  ``RETRY_AFTER_MAX_S``); with nothing answered in that window (a lull) the pace last measured stands in,
  and only a gateway that never answered one (a cold start) is held by the fixed bound alone.  A reconnect
  storm comes after a lull: the survivors of a gateway kill are idle but for pings when thousands of
  clients arrive within a second, and the fixed bound alone let them queue ~20 s of handshakes; most
  timed out on the client and were retried, their work wasted (`storm bench reconnect`, 2026-12-07).
  A fixed 1 024 let `storm day`'s gateways, answering ~15 handshakes/s on the real services, queue
  a minute of work: the clients timed out after 30 s and retried, and the gateways spent their time on
  handshakes nobody was waiting for any more (docs/storm-day.md).
* **Connections held** (``STORM_MAX_CONNECTIONS``; 0, the default, derives it from the process's open-file
  limit less a reserve for the gateway's own files and outbound connections, see :func:`connection_cap`):
  over it, HTTP **503** with ``Retry-After`` ("full").  Without it a gateway at the limit fails ``accept()``
  with EMFILE, and the client sees its socket cut during the handshake with no answer at all (`storm bench
  connect --connections 20000` on one process, whose limit is 20 000 files: 18–20 such failures).
* **Concurrent connections per client IP** (``STORM_MAX_CONNECTIONS_PER_IP``), counted on this gateway
  from the upgrade until the socket ends; over the limit: HTTP **429** with ``Retry-After``.  Many mobile
  users share one address behind carrier-grade NAT: set it from the largest NAT pool you serve
  (docs/security.md, "Abuse limits"), or limit per user at the load balancer.

Refusals are HTTP responses sent instead of the ``101``.  The client IP is the socket's peer: behind a
load balancer, configure it to limit per client IP itself (the gateway sees the balancer's address).
"""

from __future__ import annotations

import logging
import math
import resource
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from storm.config import Config

log = logging.getLogger("storm.gateway.guard")

LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")
QUEUE_TARGET_S = 5.0  # an admitted handshake should be answered within this, at the recent pace
QUEUE_FLOOR = 128  # handshakes always allowed in progress, whatever the pace (a cold start, after a lull)
PACE_WINDOW_S = 5.0  # the pace: handshakes answered over this many past seconds
PACE_SLOT_S = 0.25  # counted in slots of this length
RETRY_AFTER_MAX_S = 10


FD_RESERVE_MIN = 256  # open files kept for the gateway itself: listeners, logs, the database pool, brokers,
FD_RESERVE_SHARE = 0.02  # the pipes of HTTP requests to Hypercorn (two each); the larger of the two
UNLIMITED = 1 << 30


def connection_cap(configured: int, nofile: int | None = None) -> int:
    """The WebSockets a gateway holds at most: ``configured`` when positive, else the open-file limit
    (``nofile``, default the process's soft ``RLIMIT_NOFILE``) less ``max(FD_RESERVE_MIN, 2 %)``."""
    if configured > 0:
        return configured
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile == resource.RLIM_INFINITY or nofile <= 0:
        return UNLIMITED
    return max(1, nofile - max(FD_RESERVE_MIN, int(nofile * FD_RESERVE_SHARE)))


class HandshakeGuard:
    def __init__(self, config: Config, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._allowed = config.origins()
        self._embedded = config.mode == "embedded"
        self._own = frozenset(f"{scheme}://{host}:{config.port}" for scheme in ("http", "https")
                              for host in (*LOCAL_HOSTS, config.host))
        self._max_per_ip = config.max_connections_per_ip
        self._max_handshakes = config.max_handshakes
        self._overloaded = Refusal(503, "too many handshakes in progress; retry later",
                                   config.handshake_retry_after_s)
        self.max_connections = connection_cap(config.max_connections)
        self._full = Refusal(503, "this gateway holds its maximum of connections; retry later",
                             config.handshake_retry_after_s)
        self.per_ip: dict[str, int] = {}
        self.connections = 0  # admitted and not released: WebSockets held (and upgrading)
        self.handshakes = 0  # in progress: admitted, their session not past auth yet
        self.refused = {"origin": 0, "per_ip": 0, "overload": 0, "full": 0}
        self._clock = clock
        self._retry_after = config.handshake_retry_after_s
        self._answered: deque[list[float]] = deque()  # [slot start, handshakes answered in it], oldest first
        self._last_pace = 0.0  # the pace when last measured: what bounds a storm that follows a lull

    def admit(self, headers: dict[str, str], ip: str) -> Refusal | None:
        """Check an upgrade (``headers`` with lower-case names); None admits it and counts it for ``ip`` and
        as a handshake in progress: the caller must ``handshake_over()`` once (the session answered ``auth``,
        or the socket ended before) and ``release(ip)`` when the socket ends."""
        origin = headers.get("origin")
        if origin is not None and not self.origin_allowed(origin, headers.get("host", "")):
            self.refused["origin"] += 1
            log.info("refused a WebSocket from origin %.100r", origin)
            return ORIGIN_REFUSED
        if self.connections >= self.max_connections:
            self.refused["full"] += 1
            return self._full
        if self.handshakes >= self._max_handshakes:
            self.refused["overload"] += 1
            return self._overloaded
        if self.handshakes >= QUEUE_FLOOR and (pace := self.pace() or self._last_pace) > 0:  # never any: the bound
            wait = self.handshakes / pace
            if wait > QUEUE_TARGET_S:
                self.refused["overload"] += 1
                retry = min(RETRY_AFTER_MAX_S, max(self._retry_after, math.ceil(wait)))
                return Refusal(503, self._overloaded.reason, retry)
        held = self.per_ip.get(ip, 0)
        if held >= self._max_per_ip:
            self.refused["per_ip"] += 1
            return PER_IP_REFUSED
        self.per_ip[ip] = held + 1
        self.connections += 1
        self.handshakes += 1
        return None

    def handshake_over(self, *, answered: bool = True) -> None:
        """One handshake in progress less: ``answered`` when its session answered ``auth`` (``hello`` or a
        refusal), which counts in the pace; not when the peer went away first."""
        self.handshakes -= 1
        if answered:
            now = self._clock()
            slots = self._answered
            if slots and now - slots[-1][0] < PACE_SLOT_S:
                slots[-1][1] += 1
            else:
                slots.append([now, 1.0])
                while slots and now - slots[0][0] > PACE_WINDOW_S:
                    slots.popleft()

    def pace(self) -> float:
        """Handshakes answered per second over the last ``PACE_WINDOW_S``."""
        now = self._clock()
        slots = self._answered
        while slots and now - slots[0][0] > PACE_WINDOW_S:
            slots.popleft()
        if not slots:
            return 0.0
        span = max(2 * PACE_SLOT_S, min(PACE_WINDOW_S, now - slots[0][0] + PACE_SLOT_S))  # a storm's first second
        self._last_pace = sum(n for _, n in slots) / span
        return self._last_pace

    def release(self, ip: str) -> None:
        self.connections -= 1
        left = self.per_ip.get(ip, 0) - 1
        if left > 0:
            self.per_ip[ip] = left
        else:
            self.per_ip.pop(ip, None)

    def origin_allowed(self, origin: str, host: str) -> bool:
        normalized = origin.strip().rstrip("/").lower()
        if self._allowed:
            return normalized in self._allowed
        if not self._embedded:
            return False  # production without a list is refused by Config.validate; never allow by accident
        if normalized in self._own:
            return True
        scheme, _, rest = normalized.partition("://")
        return scheme in ("http", "https") and bool(host) and rest == host.strip().lower()


@dataclass(frozen=True, slots=True)
class Refusal:
    """An upgrade refused before it happens: the HTTP status, reason and ``Retry-After`` to answer with."""

    status: int
    reason: str
    retry_after: int = 0

    @property
    def body(self) -> bytes:
        code = "forbidden" if self.status == 403 else "unavailable" if self.status == 503 else "rate_limited"
        return ('{"error":{"code":"%s","message":"%s"}}' % (code, self.reason)).encode()  # noqa: UP031 - ASCII

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        return (("Retry-After", str(self.retry_after)),) if self.retry_after else ()


ORIGIN_REFUSED = Refusal(403, "origin not allowed")
PER_IP_REFUSED = Refusal(429, "too many connections from this address", 5)
