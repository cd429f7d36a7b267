"""Typed configuration, read once from environment variables.

Every setting is a field of :class:`Config`; ``docs/configuration.md`` is the table of them and a unit
test checks that the table and this module agree.  Nothing here connects to anything: the bootstrap
(:mod:`storm.bootstrap`) turns a ``Config`` into running adapters.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, get_type_hints


class ConfigError(ValueError):
    """A setting is missing, malformed or contradicts another one.  The message names the variable."""


def _setting(default: Any, env: str, doc: str) -> Any:
    return field(default=default, metadata={"env": env, "doc": doc})


@dataclass(frozen=True, slots=True)
class Config:
    mode: str = _setting("embedded", "STORM_MODE", "`embedded` (dev adapters allowed) or `production`.")
    host: str = _setting("127.0.0.1", "STORM_HOST", "Address the HTTP/WebSocket server binds.")
    port: int = _setting(8000, "STORM_PORT", "Port the HTTP/WebSocket server binds.")
    broker: str = _setting("memory", "STORM_BROKER", "`memory` (in-process log) or `pulsar`.")
    cache: str = _setting("memory", "STORM_CACHE", "`memory` or `hazelcast`.")
    store: str = _setting("sql", "STORM_STORE", "`sql` (the database at `STORM_DATABASE_URL`) or `memory` "
                          "(in-process, gone at exit: tests and demos).")
    identity: str = _setting("dev", "STORM_IDENTITY", "`dev` (HS256 dev issuer, embedded only) or `auth0`.")
    database_url: str = _setting(
        "sqlite+aiosqlite:///storm.db",
        "STORM_DATABASE_URL",
        "SQLAlchemy async URL: `sqlite+aiosqlite:///file.db`, `postgresql+asyncpg://…`, "
        "`cockroachdb+asyncpg://…`.",
    )
    db_pool_size: int = _setting(
        10, "STORM_DB_POOL_SIZE", "Database connections a process keeps open (PostgreSQL/CockroachDB).")
    db_pool_overflow: int = _setting(
        10, "STORM_DB_POOL_OVERFLOW", "Database connections a process may open beyond the pool under load.")
    db_pool_timeout_s: float = _setting(
        10.0, "STORM_DB_POOL_TIMEOUT_S",
        "Longest wait for a pooled database connection; beyond it the request is answered `unavailable`.",
    )
    dev_secret: str = _setting(
        "storm-dev-secret-change-me-0123456789",
        "STORM_DEV_SECRET",
        "HS256 key of the dev token issuer (embedded mode only; at least 32 bytes).",
    )
    token_ttl_s: int = _setting(3600, "STORM_TOKEN_TTL_S", "Lifetime of dev tokens, seconds.")
    handshake_timeout_s: float = _setting(
        5.0, "STORM_HANDSHAKE_TIMEOUT_S", "A connection must complete its HTTP request head (the WebSocket "
        "upgrade included) within this, however slowly its bytes arrive; also the HTTP keep-alive timeout."
    )
    auth_timeout_s: float = _setting(5.0, "STORM_AUTH_TIMEOUT_S", "A socket must authenticate within this.")
    heartbeat_s: float = _setting(25.0, "STORM_HEARTBEAT_S", "Interval the client is told to ping at.")
    idle_timeout_s: float = _setting(
        60.0, "STORM_IDLE_TIMEOUT_S", "A socket silent for this long is closed (4002)."
    )
    max_frame_bytes: int = _setting(65536, "STORM_MAX_FRAME_BYTES", "Largest client frame accepted.")
    max_subscriptions: int = _setting(200, "STORM_MAX_SUBSCRIPTIONS", "Channels one connection may join.")
    outbox_max_events: int = _setting(
        2000, "STORM_OUTBOX_MAX_EVENTS", "Events queued for one connection before it is closed (4008)."
    )
    outbox_max_bytes: int = _setting(
        4 * 1024 * 1024, "STORM_OUTBOX_MAX_BYTES", "Bytes queued for one connection before it is closed."
    )
    coalesce_max_bytes: int = _setting(
        65536, "STORM_COALESCE_MAX_BYTES", "Upper bound of one coalesced server frame."
    )
    socket_send_buffer: int = _setting(
        131072, "STORM_SOCKET_SEND_BUFFER",
        "SO_SNDBUF of each client socket, bytes (the kernel doubles it); 0 leaves the kernel's autotuning "
        "(up to net.ipv4.tcp_wmem's maximum, 4 MiB). Bounds what a client that stops reading holds in the "
        "kernel beside its outbox, so the outbox bound (4008) is reached.",
    )
    write_delay_s: float = _setting(
        0.0, "STORM_WRITE_DELAY_S",
        "Gateway write delay. 0: adaptive, an event is written at once while the loop has time and held "
        "(coalesced) only under load, for at most STORM_WRITE_DELAY_MAX_S. Above 0 (at most 1): a fixed "
        "delay, events queued within it leave as one frame per connection and wait up to this long (ADR 0006).",
    )
    write_delay_max_s: float = _setting(
        0.025, "STORM_WRITE_DELAY_MAX_S",
        "Adaptive write delay: the longest writes are held when the gateway is busy (0: never hold; at most 1).",
    )
    publish_rate: float = _setting(20.0, "STORM_PUBLISH_RATE", "Publishes per second per connection.")
    publish_burst: int = _setting(40, "STORM_PUBLISH_BURST", "Burst of the per-connection token bucket.")
    history_page_max: int = _setting(100, "STORM_HISTORY_PAGE_MAX", "Largest history page.")
    history_share_s: float = _setting(
        0.0, "STORM_HISTORY_SHARE_S",
        "A gateway always reads a channel's newest history page once for the requests that arrive while it is "
        "read; this keeps the page for that many seconds more (pages may then be that old: for clients that "
        "resume from the page's offset). 0: not kept.",
    )
    retention_messages: int = _setting(
        10000, "STORM_RETENTION_MESSAGES", "Memory broker: entries kept per channel log."
    )
    retention_s: float = _setting(
        7 * 24 * 3600.0, "STORM_RETENTION_S", "Memory broker: age after which entries are dropped."
    )
    presence_ttl_s: float = _setting(
        60.0, "STORM_PRESENCE_TTL_S", "A gateway's presence lease, and with it its users' presence, lapses "
        "unless renewed within this (every third of it); also the TTL of entries without a lease."
    )
    presence_broadcast_max: int = _setting(
        100, "STORM_PRESENCE_BROADCAST_MAX", "presence.join/leave are announced only in channels with at most "
        "this many live presence entries (connections); larger channels are served by paged presence queries "
        "(ADR 0010)."
    )
    presence_coalesce_s: float = _setting(
        1.0, "STORM_PRESENCE_COALESCE_S", "A channel's joins and leaves within this window go out as one "
        "presence.join and one presence.leave listing the users (0: the next loop turn; at most 10)."
    )
    presence_page_max: int = _setting(
        200, "STORM_PRESENCE_PAGE_MAX", "Most users in one presence reply (the query's limit is capped at it)."
    )
    dedup_ttl_s: float = _setting(
        600.0, "STORM_DEDUP_TTL_S", "How long a client message id is remembered for retries."
    )
    publish_timeout_s: float = _setting(
        10.0, "STORM_PUBLISH_TIMEOUT_S", "Broker send timeout of a publish; a cmid claim whose publish has not "
        "finished 2 s after it is settled by the next retry (docs/delivery.md)."
    )
    consumer_batch: int = _setting(500, "STORM_CONSUMER_BATCH", "Persistence worker batch size.")
    consumer_max_wait_s: float = _setting(
        0.05, "STORM_CONSUMER_MAX_WAIT_S", "Longest a worker waits for the first record of a batch (capped at 0.25 s)."
    )
    consumer_linger_s: float = _setting(
        0.02, "STORM_CONSUMER_LINGER_S", "After a batch's first record, how long a worker gathers more before it "
        "writes (0: write what is there at once). Adds up to this much to the time until history shows a "
        "message; nothing to live delivery."
    )
    consumer_workspace_prefix: str = _setting(
        "", "STORM_CONSUMER_WORKSPACE_PREFIX", "Consumers take work only from workspaces whose slug starts with this "
        "(empty: all). For deployments sharing one Pulsar (tests, chaos runs): the work subscription is shared, "
        "so another deployment's consumers would take and drop records of workspaces they do not know."
    )
    consumer_max_redeliveries: int = _setting(
        5, "STORM_CONSUMER_MAX_REDELIVERIES", "Deliveries of one message before it is dead-lettered."
    )
    ack_timeout_s: float = _setting(
        30.0, "STORM_ACK_TIMEOUT_S", "Unacknowledged work is redelivered after this."
    )
    nack_delay_s: float = _setting(1.0, "STORM_NACK_DELAY_S", "Delay before a nacked message returns.")
    work_attach_chunk: int = _setting(
        100, "STORM_WORK_ATTACH_CHUNK", "Pulsar: channel topics per consumer of a work subscription; a workspace's "
        "topics are subscribed in chunks of at most this many, and a chunk that fails is retried in halves "
        "(docs/consumers.md)."
    )
    webhook_max_attempts: int = _setting(
        5, "STORM_WEBHOOK_MAX_ATTEMPTS", "POSTs of one event to one webhook before it is dead-lettered."
    )
    webhook_backoff_s: float = _setting(
        0.5, "STORM_WEBHOOK_BACKOFF_S", "Webhook retry backoff: the first pause's ceiling, doubled per attempt."
    )
    webhook_backoff_cap_s: float = _setting(8.0, "STORM_WEBHOOK_BACKOFF_CAP_S", "Webhook retry backoff: the "
                                            "largest ceiling (each pause is uniform in [0, ceiling]).")
    webhook_timeout_s: float = _setting(4.0, "STORM_WEBHOOK_TIMEOUT_S", "Timeout of one webhook POST.")
    webhook_log_retention_s: float = _setting(
        7 * 24 * 3600.0, "STORM_WEBHOOK_LOG_RETENTION_S", "Age after which webhook delivery-log entries are dropped."
    )
    webhook_allow_private: bool = _setting(
        False, "STORM_WEBHOOK_ALLOW_PRIVATE", "Allow http:// and loopback/private webhook targets outside "
        "embedded mode (never in a real deployment: SSRF)."
    )
    drain_timeout_s: float = _setting(
        10.0, "STORM_DRAIN_TIMEOUT_S", "Graceful shutdown budget: in-flight acks, 1012 closes, then exit."
    )
    drain_reconnect_spread_s: float = _setting(
        5.0, "STORM_DRAIN_RECONNECT_SPREAD_S", "On drain each client is told (retry_ms in the 1012 reason) to "
        "wait a random 0 to this many seconds before reconnecting."
    )
    seed_demo: bool = _setting(False, "STORM_SEED_DEMO", "Seed the demo workspace at start (`storm dev`).")
    gateway_id: str = _setting("", "STORM_GATEWAY_ID", "Stable name of this gateway; random when empty.")
    pulsar_url: str = _setting("pulsar://127.0.0.1:6650", "STORM_PULSAR_URL", "Pulsar binary protocol service URL.")
    pulsar_admin_url: str = _setting(
        "http://127.0.0.1:8080", "STORM_PULSAR_ADMIN_URL", "Pulsar admin REST API (tenants, namespaces, policies)."
    )
    pulsar_cluster: str = _setting(
        "standalone", "STORM_PULSAR_CLUSTER", "Pulsar cluster name a workspace tenant is allowed on."
    )
    max_channel_readers: int = _setting(
        5000, "STORM_MAX_CHANNEL_READERS",
        "Pulsar: distinct channels one gateway follows at once (one reader each); beyond it subscribes are refused.",
    )
    broadcast: str = _setting(
        "readers", "STORM_BROADCAST",
        "Pulsar: how a gateway follows channels: `readers` (one reader per followed channel) or `relay` (one "
        "reader per followed workspace on a broadcast topic the consumers' relay worker fills; ADR 0013).",
    )
    hazelcast_members: str = _setting(
        "127.0.0.1:5701", "STORM_HAZELCAST_MEMBERS", "Comma-separated `host:port` of Hazelcast members."
    )
    hazelcast_cluster: str = _setting("storm", "STORM_HAZELCAST_CLUSTER", "Hazelcast cluster name.")
    # -- security (docs/security.md) -----------------------------------------------------------------------
    allowed_origins: str = _setting(
        "", "STORM_ALLOWED_ORIGINS",
        "Comma-separated `Origin`s allowed to open `/ws` (e.g. `https://chat.example.com`). Empty in embedded "
        "mode: the server's own `http://host:port` (and localhost forms); required in production. Clients "
        "that send no `Origin` (non-browser) are allowed.",
    )
    max_connections_per_ip: int = _setting(
        200, "STORM_MAX_CONNECTIONS_PER_IP", "Concurrent WebSockets per client IP on one gateway (HTTP 429).",
    )
    max_handshakes: int = _setting(
        1024, "STORM_MAX_HANDSHAKES", "WebSocket handshakes in progress on one gateway (upgraded, `hello` not yet "
        "sent); beyond it an upgrade is answered HTTP 503 with `Retry-After` (admission control).",
    )
    max_connections: int = _setting(
        0, "STORM_MAX_CONNECTIONS", "WebSockets one gateway holds at most; beyond it an upgrade is answered HTTP 503 "
        "with `Retry-After` (`storm.gateway.connects{result:full}`). 0: the process's open-file limit less a reserve "
        "for its own files and outbound connections (2 %, at least 256), so a full gateway answers instead of "
        "failing `accept()` with EMFILE.",
    )
    handshake_retry_after_s: int = _setting(
        2, "STORM_HANDSHAKE_RETRY_AFTER_S", "The `Retry-After` (seconds) of that 503; clients add jitter.",
    )
    user_publish_rate: float = _setting(
        30.0, "STORM_USER_PUBLISH_RATE", "Publishes per second per user, over all their connections (cache bucket).",
    )
    user_publish_burst: int = _setting(60, "STORM_USER_PUBLISH_BURST", "Burst of the per-user bucket.")
    workspace_publish_rate: float = _setting(
        0.0, "STORM_WORKSPACE_PUBLISH_RATE",
        "Publishes per second per workspace; 0 = the plan's `messages_per_second` (storm.domain.PLANS).",
    )
    token_expiry_warning_s: float = _setting(
        60.0, "STORM_TOKEN_EXPIRY_WARNING_S", "`token.expiring` is sent this long before the token expires.",
    )
    ban_ttl_s: float = _setting(
        86400.0, "STORM_BAN_TTL_S", "How long a banned subject stays on the revocation list (≥ token lifetime).",
    )
    auth0_domain: str = _setting("", "STORM_AUTH0_DOMAIN", "Auth0 tenant domain, e.g. `storm.eu.auth0.com`.")
    auth0_issuer: str = _setting(
        "", "STORM_AUTH0_ISSUER", "Expected `iss`; default `https://<STORM_AUTH0_DOMAIN>/`.",
    )
    auth0_audience: str = _setting(
        "", "STORM_AUTH0_AUDIENCE", "API identifier that must be in the token's `aud`.",
    )
    auth0_jwks_url: str = _setting(
        "", "STORM_AUTH0_JWKS_URL", "JWKS address; default `https://<STORM_AUTH0_DOMAIN>/.well-known/jwks.json`.",
    )
    auth0_leeway_s: float = _setting(30.0, "STORM_AUTH0_LEEWAY_S", "Clock skew allowed on `exp`/`nbf`, seconds.")
    auth0_workspace_claim: str = _setting(
        "https://storm.chat/ws", "STORM_AUTH0_WORKSPACE_CLAIM", "Claim holding the workspace slug (or `*`).",
    )
    auth0_required_scopes: str = _setting(
        "chat", "STORM_AUTH0_REQUIRED_SCOPES", "Space-separated scopes every access token must carry.",
    )
    auth0_jwks_cache_s: float = _setting(600.0, "STORM_AUTH0_JWKS_CACHE_S", "How long fetched signing keys are kept.")
    auth0_jwks_min_refetch_s: float = _setting(
        30.0, "STORM_AUTH0_JWKS_MIN_REFETCH_S", "At most one JWKS refetch per this interval for unknown `kid`s.",
    )
    # -- observability (docs/observability.md) ---------------------------------------------------------------
    log_format: str = _setting(
        "text", "STORM_LOG_FORMAT", "`text` (one readable line) or `json` (one JSON object per line, Datadog's "
        "log attributes: service, env, version, status, logger.name, session/request id; secrets redacted).",
    )
    access_log: bool = _setting(
        False, "STORM_ACCESS_LOG", "Log one line per HTTP request (logger `hypercorn.access`, through the same "
        "handlers, format and redaction as every other log line).",
    )
    metrics_interval_s: float = _setting(
        2.0, "STORM_METRICS_INTERVAL_S", "How often local counters and sampled latencies are flushed to DogStatsD.",
    )
    dd_agent_host: str = _setting(
        "", "DD_AGENT_HOST", "DogStatsD host (a Datadog Agent or `storm top`); metrics are off when this and "
        "`DD_DOGSTATSD_URL` are empty.",
    )
    dd_dogstatsd_port: int = _setting(8125, "DD_DOGSTATSD_PORT", "DogStatsD UDP port on `DD_AGENT_HOST`.")
    dd_dogstatsd_url: str = _setting(
        "", "DD_DOGSTATSD_URL", "`udp://host:port` or `unix:///path/dsd.socket`; wins over `DD_AGENT_HOST`.",
    )
    dd_env: str = _setting("", "DD_ENV", "The `env` tag of metrics and logs (e.g. `prod`, `staging`).")
    dd_service: str = _setting("", "DD_SERVICE", "The `service` tag; default the role (gateway, api, consumers, dev).")
    dd_version: str = _setting("", "DD_VERSION", "The `version` tag of metrics and logs (e.g. the git revision).")
    extra: Mapping[str, str] = field(default_factory=dict, metadata={"env": "", "doc": ""})

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Build a config from ``env`` (default ``os.environ``); ``overrides`` win over the environment."""
        env = os.environ if env is None else env
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f.metadata.get("env")
            if not name or name not in env:
                continue
            values[f.name] = _parse(name, env[name], hints[f.name])
        values.update(overrides)
        cfg = cls(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        choices = {
            "mode": ("embedded", "production"),
            "broker": ("memory", "pulsar"),
            "broadcast": ("readers", "relay"),
            "cache": ("memory", "hazelcast"),
            "store": ("sql", "memory"),
            "identity": ("dev", "auth0"),
            "log_format": ("text", "json"),
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"{env_name(name)}={value!r}: expected one of {', '.join(allowed)}")
        if self.mode == "production" and self.identity == "dev":
            raise ConfigError("STORM_IDENTITY=dev is refused in STORM_MODE=production (dev tokens are forgeable)")
        if self.identity == "dev" and len(self.dev_secret.encode()) < 32:
            raise ConfigError("STORM_DEV_SECRET must be at least 32 bytes")
        positive = (
            "port", "max_frame_bytes", "max_subscriptions", "outbox_max_events", "outbox_max_bytes",
            "coalesce_max_bytes", "history_page_max", "retention_messages", "consumer_batch",
            "consumer_max_redeliveries", "auth_timeout_s", "idle_timeout_s", "heartbeat_s", "token_ttl_s",
            "max_channel_readers", "work_attach_chunk", "publish_timeout_s", "dedup_ttl_s", "handshake_timeout_s",
            "metrics_interval_s", "dd_dogstatsd_port", "webhook_max_attempts", "webhook_timeout_s",
            "webhook_log_retention_s", "presence_broadcast_max", "presence_page_max",
            "db_pool_size", "db_pool_timeout_s",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{env_name(name)} must be positive, got {getattr(self, name)!r}")
        if self.db_pool_overflow < 0:
            raise ConfigError(f"STORM_DB_POOL_OVERFLOW must not be negative, got {self.db_pool_overflow!r}")
        if self.history_share_s < 0:
            raise ConfigError(f"STORM_HISTORY_SHARE_S must not be negative, got {self.history_share_s!r}")
        if self.socket_send_buffer < 0:
            raise ConfigError(f"STORM_SOCKET_SEND_BUFFER must be 0 (the kernel's autotuning) or positive, "
                              f"got {self.socket_send_buffer!r}")
        if not 0 <= self.consumer_linger_s <= 1:
            raise ConfigError(f"STORM_CONSUMER_LINGER_S must be between 0 and 1, got {self.consumer_linger_s!r}")
        if not 0 <= self.webhook_backoff_s <= self.webhook_backoff_cap_s:
            raise ConfigError("STORM_WEBHOOK_BACKOFF_S must be between 0 and STORM_WEBHOOK_BACKOFF_CAP_S, got "
                              f"{self.webhook_backoff_s!r} and {self.webhook_backoff_cap_s!r}")
        if self.drain_reconnect_spread_s < 0:
            raise ConfigError("STORM_DRAIN_RECONNECT_SPREAD_S must not be negative, "
                              f"got {self.drain_reconnect_spread_s!r}")
        if not 0 <= self.presence_coalesce_s <= 10:
            raise ConfigError(f"STORM_PRESENCE_COALESCE_S must be between 0 and 10, got {self.presence_coalesce_s!r}")
        if not 0 <= self.write_delay_s <= 1:
            raise ConfigError(f"STORM_WRITE_DELAY_S must be between 0 and 1, got {self.write_delay_s!r}")
        if not 0 <= self.write_delay_max_s <= 1:
            raise ConfigError(f"STORM_WRITE_DELAY_MAX_S must be between 0 and 1, got {self.write_delay_max_s!r}")
        if self.mode == "production" and not self.origins():
            raise ConfigError("STORM_ALLOWED_ORIGINS must list the allowed origins in STORM_MODE=production")
        if self.identity == "auth0":
            if not self.auth0_domain and not (self.auth0_issuer and self.auth0_jwks_url):
                raise ConfigError("STORM_AUTH0_DOMAIN (or STORM_AUTH0_ISSUER and STORM_AUTH0_JWKS_URL) is required "
                                  "with STORM_IDENTITY=auth0")
            if not self.auth0_audience:
                raise ConfigError("STORM_AUTH0_AUDIENCE is required with STORM_IDENTITY=auth0")
        for name in ("max_connections_per_ip", "max_handshakes", "handshake_retry_after_s", "user_publish_rate",
                     "user_publish_burst"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{env_name(name)} must be positive, got {getattr(self, name)!r}")
        if self.max_connections < 0:
            raise ConfigError(f"STORM_MAX_CONNECTIONS must not be negative (0: from the open-file limit), "
                              f"got {self.max_connections!r}")
        if self.workspace_publish_rate < 0 or self.token_expiry_warning_s < 0 or self.auth0_leeway_s < 0:
            raise ConfigError("STORM_WORKSPACE_PUBLISH_RATE, STORM_TOKEN_EXPIRY_WARNING_S and STORM_AUTH0_LEEWAY_S "
                              "must not be negative")
        if self.heartbeat_s >= self.idle_timeout_s:
            raise ConfigError("STORM_HEARTBEAT_S must be smaller than STORM_IDLE_TIMEOUT_S")

    def origins(self) -> frozenset[str]:
        """The configured ``Origin`` allowlist, normalised (lower case, no trailing slash)."""
        return frozenset(o.strip().rstrip("/").lower() for o in self.allowed_origins.split(",") if o.strip())


def env_name(field_name: str) -> str:
    for f in dataclasses.fields(Config):
        if f.name == field_name:
            return str(f.metadata["env"])
    raise KeyError(field_name)


def settings_table() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting: the source of docs/configuration.md."""
    rows = []
    for f in dataclasses.fields(Config):
        if f.metadata.get("env"):
            rows.append((f.metadata["env"], repr(f.default), f.metadata["doc"]))
    return rows


def _parse(name: str, raw: str, kind: Any) -> Any:
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        return raw
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {getattr(kind, '__name__', kind)}") from None
