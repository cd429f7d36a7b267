"""Every metric STORM emits: name, type, unit, tags, meaning (docs/observability.md is generated from it).

One list, used four ways: :class:`storm.metrics.Metrics` refuses (``UnknownMetric``) a name or a tag that is
not here when an instrument is created, so no code can emit outside the catalogue; the docs table is
generated from it (``storm_tools/datadog_tf.py docs``); the Terraform generator and its test check that every
metric named in an SLO, monitor or dashboard is here; the emission test (tests/e2e/test_metrics_emission.py)
checks that every one of them really arrives, with its tags, from the processes that own it.

Tags have bounded cardinality.  Every metric carries the process tags ``service`` (the role: gateway, api,
consumers, or dev for ``storm dev``), ``env``, ``version`` and ``instance`` (the gateway id, or host:pid);
the per-metric tags below are small enums whose values are listed.  Never a user, channel, message, session
or token; no metric carries a workspace tag (an allowlisted workspace tag would be added here, as an enum).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["count", "gauge", "distribution"]
ROLES = ("gateway", "api", "consumers")
PROCESS_TAGS = ("service", "env", "version", "instance")

CONNECT_RESULTS = ("ok", "unauthenticated", "revoked", "quota", "origin", "per_ip", "overload", "full",
                   "restarting", "auth_timeout", "internal")
CLOSE_CODES = ("1000", "1001", "1008", "1009", "1011", "1012", "4001", "4002", "4003", "4004", "4008", "4009",
               "4010", "4029", "client")
COMMAND_OPS = ("auth", "subscribe", "unsubscribe", "publish", "edit", "delete", "react", "typing", "presence",
               "history", "read", "ping")
COMMAND_RESULTS = ("ok", "malformed", "unknown_op", "bad_request", "too_large", "unauthenticated",
                   "already_authenticated", "forbidden", "not_found", "not_subscribed", "too_many_subscriptions",
                   "rate_limited", "quota_exceeded", "conflict", "gone", "unavailable", "internal")
RATE_SCOPES = ("connection", "user", "workspace")
AUTH_REASONS = ("invalid_token", "not_auth", "timeout", "revoked", "refresh_refused")
# the Cache port's methods; presence_* is one family
CACHE_OPS = ("get", "set", "delete", "put_if_absent", "incr", "rate_take", "revoke", "is_revoked", "revoked_among",
             "presence", "watch_presence_expiry", "drop_workspace")


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    kind: Kind
    unit: str
    meaning: str
    roles: tuple[str, ...]  # the processes that emit it (``storm dev`` emits them all)
    tags: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (tag, allowed values)

    @property
    def tag_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.tags)

    def allowed(self, tag: str) -> tuple[str, ...]:
        for name, values in self.tags:
            if name == tag:
                return values
        raise KeyError(tag)


GW = ("gateway",)
ALL = ROLES

CATALOGUE: tuple[Metric, ...] = (
    # -- gateway ---------------------------------------------------------------------------------------
    Metric("storm.gateway.connections", "gauge", "connections", "Open WebSocket connections on this gateway.", GW),
    Metric("storm.gateway.connects", "count", "connections",
           "Connection attempts by outcome: `ok` (hello sent) or the refusal (auth, revocation, plan quota, "
           "origin, per-IP limit, overload: handshakes in progress over STORM_MAX_HANDSHAKES (503), "
           "full: connections at STORM_MAX_CONNECTIONS (503), draining gateway, auth timeout, internal).", GW,
           (("result", CONNECT_RESULTS),)),
    Metric("storm.gateway.connect_time", "distribution", "ms",
           "From the WebSocket upgrade to the `hello` frame (token check, directory, quota).", GW),
    Metric("storm.gateway.disconnects", "count", "connections",
           "Sessions ended, by close code (`client` when the client closed first).", GW, (("code", CLOSE_CODES),)),
    Metric("storm.gateway.resumes", "count", "subscriptions",
           "Subscribes with `since` (a resume after a reconnect), by whether the gap was replayed.", GW,
           (("recovered", ("true", "false")),)),
    Metric("storm.gateway.resume_gap", "distribution", "ms",
           "On a resume with missed events: from the broker append of the oldest missed event to its replay. "
           "How long a reconnecting client was without the channel, as the data saw it.", GW),
    Metric("storm.publish.ack_latency", "distribution", "ms",
           "From a publish frame read to the pass of the gateway's writer that wrote its ack (sampled).", GW),
    Metric("storm.delivery.latency", "distribution", "ms",
           "From the broker append of a channel event to the writer pass that wrote it to the subscribers' "
           "sockets (sampled records, this gateway's clock against the broker's).", GW),
    Metric("storm.fanout.deliveries", "count", "events", "Channel events handed to local subscribers.", GW),
    Metric("storm.outbox.overflows", "count", "connections",
           "Outgoing queues that overflowed (the connection is closed with 4008 and resumes).", GW),
    Metric("storm.commands", "count", "frames", "Client commands handled, by op and result (ok or error code).",
           GW, (("op", COMMAND_OPS), ("result", COMMAND_RESULTS))),
    Metric("storm.ratelimit.refused", "count", "publishes", "Writes refused by a token bucket, by bucket.", GW,
           (("scope", RATE_SCOPES),)),
    Metric("storm.auth.failures", "count", "attempts",
           "Failed authentications: bad or expired token, first frame not auth, auth timeout, revoked, refused "
           "token refresh.", GW, (("reason", AUTH_REASONS),)),
    # -- dependencies, every role ----------------------------------------------------------------------
    Metric("storm.broker.publish_latency", "distribution", "ms", "Broker append of one record (publish to ack).",
           ("gateway",)),
    Metric("storm.cache.op_latency", "distribution", "ms", "One cache operation, by operation family.", ALL,
           (("op", CACHE_OPS),)),
    Metric("storm.store.tx_latency", "distribution", "ms", "One store transaction (unit of work or run).", ALL),
    Metric("storm.store.serialization_retries", "count", "transactions",
           "Transactions run again after a serialization failure (SQLSTATE 40001).", ALL),
    # -- consumers -------------------------------------------------------------------------------------
    Metric("storm.consumer.batch_size", "distribution", "records", "Records in one persistence batch.",
           ("consumers",)),
    Metric("storm.consumer.batch_latency", "distribution", "ms", "Writing and acknowledging one batch.",
           ("consumers",)),
    Metric("storm.consumer.backlog", "gauge", "records",
           "Records waiting on the persistence subscription (Pulsar's subscription stats, which the broker "
           "refreshes once a minute; the embedded broker's pending count), read every 30 s.", ("consumers",)),
    Metric("storm.consumer.redelivered", "count", "records",
           "Records received again (delivery count > 1): a write failed, or a worker died before its ack.",
           ("consumers",)),
    Metric("storm.consumer.dead_lettered", "count", "records", "Records moved to the dead-letter log.",
           ("consumers",)),
    # -- every process ---------------------------------------------------------------------------------
    Metric("storm.process.loop_lag", "distribution", "ms",
           "Event-loop lag: how late a 250 ms timer fires.", ALL),
    Metric("storm.process.gc_pause", "distribution", "ms", "One garbage collection pass (gc callbacks).", ALL),
    Metric("storm.process.rss", "gauge", "bytes", "Resident memory of the process.", ALL),
    Metric("storm.process.cpu", "gauge", "percent", "CPU used by the process since the last flush (100 = a core).",
           ALL),
    Metric("storm.process.open_fds", "gauge", "descriptors", "Open file descriptors (sockets included), counted at "
           "most every 15 s: listing them costs ~1 µs each.", ALL),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in CATALOGUE}


class UnknownMetric(ValueError):
    """A metric name, tag or tag value that the catalogue does not list."""


def check(name: str, kind: Kind, tags: dict[str, str]) -> Metric:
    """The catalogue entry for ``name``; raises :class:`UnknownMetric` unless the kind and every tag and value
    are the catalogue's and every tag of the entry is given."""
    metric = BY_NAME.get(name)
    if metric is None:
        raise UnknownMetric(f"{name} is not in storm/metrics_catalogue.py")
    if metric.kind != kind:
        raise UnknownMetric(f"{name} is a {metric.kind}, not a {kind}")
    if set(tags) != set(metric.tag_names):
        raise UnknownMetric(f"{name} takes the tags {sorted(metric.tag_names)}, got {sorted(tags)}")
    for tag, value in tags.items():
        if value not in metric.allowed(tag):
            raise UnknownMetric(f"{name}: {tag}={value!r} is not one of {metric.allowed(tag)}")
    return metric


def markdown_table() -> str:
    """The catalogue as the Markdown table of docs/observability.md."""
    lines = ["| Metric | Type | Unit | Tags | Emitted by | Meaning |", "|---|---|---|---|---|---|"]
    for m in CATALOGUE:
        tags = "<br>".join(f"`{t}`: {', '.join(v)}" for t, v in m.tags) or "–"
        lines.append(f"| `{m.name}` | {m.kind} | {m.unit} | {tags} | {', '.join(m.roles)} | {m.meaning} |")
    return "\n".join(lines) + "\n"
