"""Pulsar admin REST client: the workspace side of the Pulsar broker adapter (docs/adr/0005-pulsar-broker.md).

A workspace slug is a Pulsar tenant.  Under it:

* ``{ws}/channels``: persistent topics, one per channel id (the channel logs), plus the dead-letter topics
  of work subscriptions (``{name}.dlq``; channel ids never contain a dot, so the consumers' topic pattern
  leaves them out);
* ``{ws}/ephemeral``: non-persistent topics, one per channel id (typing, presence).

Policies follow the workspace plan (:func:`channel_policies`).  Every call is idempotent: creating what
exists updates its policies, deleting what is gone succeeds.  Transport failures and 5xx answers raise
:class:`storm.errors.Unavailable` (retriable).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec

from storm.domain import Plan
from storm.errors import Unavailable

log = logging.getLogger("storm.broker.pulsar.admin")

CHANNELS_NS = "channels"
EPHEMERAL_NS = "ephemeral"
SYSTEM_TENANTS = frozenset({"public", "pulsar", "sample"})


class AdminError(Unavailable):
    """The admin API refused or failed a call.  ``status`` is the HTTP status (0: no answer)."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class Position:
    ledger_id: int
    entry_id: int


@dataclass(frozen=True, slots=True)
class LedgerInfo:
    ledger_id: int
    entries: int


def channel_policies(plan: Plan) -> dict[str, Any]:
    """Namespace policies of ``{ws}/channels`` derived from the plan (values shown in docs/adr/0005)."""
    retention_min = plan.retention_days * 24 * 60
    return {
        # keep every entry for the plan's retention, whatever its size; trimming is by age only
        "retention": {"retentionTimeInMinutes": retention_min, "retentionSizeInMB": -1},
        # unconsumed backlog (the persistence subscription falling behind): about one hour of the plan's
        # full message rate at 1 KiB each; beyond it publishing fails fast instead of piling up
        "backlog_quota": {"limitSize": plan.messages_per_second * 3600 * 1024, "limitTime": -1,
                          "policy": "producer_exception"},
        "message_ttl_s": retention_min * 60,
        # a subscription without consumers for a whole retention period is dropped
        "subscription_expiration_min": retention_min,
        "deduplication": True,
        # Pulsar applies a namespace publish rate per topic, i.e. per channel (not per workspace)
        "publish_rate": {"publishThrottlingRateInMsg": plan.messages_per_second, "publishThrottlingRateInByte": -1},
    }


class _SubscriptionStats(msgspec.Struct):
    backlog: int = msgspec.field(name="msgBacklog", default=0)


class _TopicStats(msgspec.Struct):
    subscriptions: dict[str, _SubscriptionStats] = msgspec.field(default_factory=dict)


# namespace -> bundle -> persistent/non-persistent -> topic -> its stats; every other field is skipped unread
_BROKER_STATS = msgspec.json.Decoder(dict[str, dict[str, dict[str, dict[str, _TopicStats]]]])


def sum_backlog(stats: bytes, subscription: str) -> int:
    """Sum ``msgBacklog`` of ``subscription`` over a ``broker-stats/topics`` document (namespace -> bundle ->
    persistent/non-persistent -> topic), the response's bytes.

    The document holds every topic the broker serves with all its publishers and subscriptions: 2.3 MB for
    600 channels and two gateways, read at every metrics interval by each consumers process.  Parsed with
    ``json`` it built hundreds of thousands of objects each time (26 ms, and a consumers process whose memory
    grew through a storm day run); the bytes are decoded here into the one number per subscription this needs,
    the rest skipped unread."""
    return sum(sub.backlog
               for bundles in _BROKER_STATS.decode(stats).values()
               for kinds in bundles.values()
               for topics in kinds.values()
               for topic in topics.values()
               if (sub := topic.subscriptions.get(subscription)) is not None)


class PulsarAdmin:
    def __init__(self, admin_url: str, cluster: str, *, timeout_s: float = 10.0) -> None:
        self._base = admin_url.rstrip("/")
        self._cluster = cluster
        self._timeout_s = timeout_s
        self._http: httpx.AsyncClient | None = None

    async def start(self) -> None:
        self._http = httpx.AsyncClient(base_url=self._base, timeout=self._timeout_s, follow_redirects=True)

    async def close(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    async def _call(self, method: str, path: str, *, ok: tuple[int, ...] = (), json: Any = None,
                    params: dict[str, str] | None = None) -> httpx.Response:
        """One admin call; 2xx and the statuses in ``ok`` return, anything else raises AdminError."""
        if self._http is None:
            raise Unavailable("Pulsar admin client is not started")
        try:
            # In a task of its own, whoever drives the caller: httpcore's cancellation shield needs the current
            # task when it closes a dead pooled connection.  While the gateway handled frames outside any task
            # (6c0aa76, reverted in 0a211ba), a subscribe during a Pulsar restart failed with TypeError /
            # RuntimeError ("session bug", answered `internal`: chaos pulsar-restart, 22:11 UTC).
            resp = await asyncio.ensure_future(self._http.request(method, path, json=json, params=params))
        except httpx.HTTPError as exc:
            raise AdminError(f"Pulsar admin {method} {path}: {exc!r}") from exc
        except (AttributeError, RuntimeError) as exc:
            # The transport's own failure, not ours: a connection the broker dropped just as it was opened
            # reaches anyio with no socket left ("'NoneType' object has no attribute 'getpeername'", anyio 4.16,
            # httpcore 1.0.9), and a dead pooled connection can fail to close ("the handler is closed").  Seen
            # as 3 `internal` errors in storm day (100 000 users, a Pulsar restart): the broker is unavailable.
            raise AdminError(f"Pulsar admin {method} {path}: transport failed: {exc!r}") from exc
        if resp.is_success or resp.status_code in ok:
            return resp
        raise AdminError(f"Pulsar admin {method} {path} answered {resp.status_code}: {resp.text[:300]}",
                         status=resp.status_code)

    # -- tenants and namespaces -------------------------------------------------------------------------
    async def tenants(self) -> list[str]:
        resp = await self._call("GET", "/admin/v2/tenants")
        return [t for t in resp.json() if t not in SYSTEM_TENANTS]

    async def ensure_tenant(self, tenant: str) -> bool:
        """Create the tenant (allowed on our cluster) or update it; True when it was created now."""
        body = {"adminRoles": [], "allowedClusters": [self._cluster]}
        resp = await self._call("PUT", f"/admin/v2/tenants/{tenant}", json=body, ok=(409,))
        if resp.status_code == 409:
            await self._call("POST", f"/admin/v2/tenants/{tenant}", json=body)
            return False
        return True

    async def ensure_namespace(self, tenant: str, ns: str) -> bool:
        resp = await self._call("PUT", f"/admin/v2/namespaces/{tenant}/{ns}", json={}, ok=(409,))
        return resp.status_code != 409

    async def set_channel_policies(self, tenant: str, plan: Plan) -> None:
        p = channel_policies(plan)
        base = f"/admin/v2/namespaces/{tenant}/{CHANNELS_NS}"
        await self._call("POST", f"{base}/retention", json=p["retention"])
        await self._call("POST", f"{base}/backlogQuota", json=p["backlog_quota"],
                         params={"backlogQuotaType": "destination_storage"})
        await self._call("POST", f"{base}/messageTTL", json=p["message_ttl_s"])
        await self._call("POST", f"{base}/subscriptionExpirationTime", json=p["subscription_expiration_min"])
        await self._call("POST", f"{base}/deduplication", json=p["deduplication"])
        await self._call("POST", f"{base}/publishRate", json=p["publish_rate"])

    async def set_ephemeral_policies(self, tenant: str, plan: Plan) -> None:
        p = channel_policies(plan)
        await self._call("POST", f"/admin/v2/namespaces/{tenant}/{EPHEMERAL_NS}/publishRate", json=p["publish_rate"])

    async def delete_tenant(self, tenant: str) -> None:
        """Delete the tenant's topics, namespaces and the tenant itself; a missing one is not an error.

        Topics are force-deleted one by one (that disconnects producers and consumers and drops
        subscriptions); namespaces and the tenant then go without ``force``, which standalone brokers
        refuse by default (``forceDeleteNamespaceAllowed``).  A producer recreating a topic meanwhile makes
        the namespace deletion fail with 409: the topics are deleted again, a few times.
        """
        resp = await self._call("GET", f"/admin/v2/namespaces/{tenant}", ok=(404,))
        namespaces = [] if resp.status_code == 404 else [n.split("/", 1)[1] for n in resp.json()]
        for ns in namespaces:
            for attempt in range(4):
                await self._delete_topics(tenant, ns)
                resp = await self._call("DELETE", f"/admin/v2/namespaces/{tenant}/{ns}", ok=(404, 409, 412))
                if resp.status_code not in (409, 412):
                    break
                log.info("tenant=%s namespace %s still has topics (attempt %d); deleting them again",
                         tenant, ns, attempt + 1)
            else:
                raise AdminError(f"namespace {tenant}/{ns} could not be emptied", status=resp.status_code)
        await self._call("DELETE", f"/admin/v2/tenants/{tenant}", ok=(404,))

    async def _delete_topics(self, tenant: str, ns: str) -> None:
        for domain in ("persistent", "non-persistent"):
            resp = await self._call("GET", f"/admin/v2/{domain}/{tenant}/{ns}", ok=(404,))
            if resp.status_code == 404:
                continue
            for topic in resp.json():
                local = topic.rsplit("/", 1)[1]
                await self._call("DELETE", f"/admin/v2/{domain}/{tenant}/{ns}/{local}", ok=(404,),
                                 params={"force": "true"})

    async def work_backlog(self, subscription: str) -> int:
        """Records waiting on the subscription ``subscription`` over every topic this broker serves (one call,
        ``GET /admin/v2/broker-stats/topics``, whatever the number of channels).  With several brokers the
        figure is this one's: point the admin URL at each and sum."""
        resp = await self._call("GET", "/admin/v2/broker-stats/topics")
        try:
            return sum_backlog(resp.content, subscription)
        except msgspec.DecodeError as exc:  # not the document we know: the gauge says nothing this time
            raise ValueError(f"broker-stats/topics: {exc}") from exc

    # -- topics -----------------------------------------------------------------------------------------
    async def channel_topics(self, tenant: str) -> list[str]:
        """Full names of the persistent topics in a workspace's channels namespace; none when it has none."""
        resp = await self._call("GET", f"/admin/v2/persistent/{tenant}/{CHANNELS_NS}", ok=(404,))
        return [] if resp.status_code == 404 else [str(t) for t in resp.json()]

    async def create_topic(self, tenant: str, channel: str) -> None:
        """Create a channel's persistent topic ahead of its first publish (409: it exists)."""
        await self._call("PUT", f"/admin/v2/persistent/{tenant}/{CHANNELS_NS}/{channel}", ok=(409,))

    async def last_position(self, tenant: str, channel: str) -> Position | None:
        """Position of the last entry written to the channel's topic; None when the topic does not exist."""
        resp = await self._call("GET", f"/admin/v2/persistent/{tenant}/{CHANNELS_NS}/{channel}/lastMessageId",
                                ok=(404,))
        if resp.status_code == 404:
            return None
        data = resp.json()
        return Position(int(data["ledgerId"]), int(data["entryId"]))

    async def ledgers(self, tenant: str, channel: str) -> tuple[list[LedgerInfo], Position | None] | None:
        """Retained ledgers (oldest first, the current one last) and the last confirmed entry, from the
        topic's internal stats; None when the topic does not exist."""
        resp = await self._call("GET", f"/admin/v2/persistent/{tenant}/{CHANNELS_NS}/{channel}/internalStats",
                                ok=(404,))
        if resp.status_code == 404:
            return None
        data = resp.json()
        ledgers = [LedgerInfo(int(lg["ledgerId"]), int(lg.get("entries", 0))) for lg in data.get("ledgers", [])]
        lac = data.get("lastConfirmedEntry") or ""
        last = None
        if ":" in lac:
            ledger, entry = lac.split(":", 1)
            last = Position(int(ledger), int(entry))
        return ledgers, last
