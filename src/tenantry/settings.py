"""Typed, frozen settings: one object per capability, composed into :class:`Settings`.

Nothing here reads the environment at import time. The edge (CLI, app factory, tests)
calls :meth:`Settings.from_env` once and passes the result down.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from tenantry.errors import ConfigurationError

RESOLVERS = ("subdomain", "header", "jwt")


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    """Where the control database is and how the application connects to it.

    ``url`` is the owner connection (DDL, provisioning, migrations). The application's
    request traffic uses ``app_url``: a role that owns nothing, is not superuser and
    cannot bypass row-level security. When ``app_url`` is not given it is ``url`` with the
    user replaced by ``app_role`` (and ``app_password``).
    """

    url: str = ""
    app_url: str | None = None
    app_role: str = "tenantry_app"
    app_password: str | None = None
    pool_min: int = 1
    pool_max: int = 10
    cell: str = "default"

    def resolved_app_url(self) -> str:
        """The application role's connection URL."""
        if self.app_url:
            return self.app_url
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = quote(self.app_role, safe="")
        if self.app_password:
            netloc += ":" + quote(self.app_password, safe="")
        netloc += "@" + host + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """Redis / Valkey for hot data, sessions and rate limits; ``None`` url means not configured.

    ``url`` names one node (``redis://`` / ``rediss://``) or a Redis Cluster: the
    ``redis+cluster://`` scheme, or a comma-separated seed list (``redis://h1:7101,h2:7102``).
    ``socket_timeout`` bounds every command, so an unresponsive server degrades requests
    instead of stalling them. After a failure the client is considered down for
    ``retry_interval`` seconds (no request waits on it), and the "unavailable" warning is
    logged at most once per ``warn_interval``.
    """

    url: str | None = None
    max_connections: int = 64
    socket_timeout: float = 0.5
    connect_timeout: float = 0.5
    key_prefix: str = ""
    retry_interval: float = 1.0
    warn_interval: float = 30.0


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """Tenant-scoped cache-aside: the default entry TTL and how long one recompute may hold
    a key's stampede lock before another caller takes over (seconds)."""

    default_ttl: float = 300.0
    lock_ttl: float = 5.0


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """Server-side sessions: the cookie holds an opaque id; the data lives in Redis.

    A session ends ``idle_ttl`` seconds after its last use, and ``absolute_ttl`` seconds
    after it was created whatever its use.
    """

    cookie_name: str = "tenantry_session"
    idle_ttl: float = 1800.0
    absolute_ttl: float = 43_200.0
    cookie_secure: bool = True
    cookie_samesite: Literal["lax", "strict", "none"] = "lax"


@dataclass(frozen=True, slots=True)
class TierLimits:
    """A tenant's request limits.

    ``rate`` requests per second sustained with bursts of up to ``burst`` (GCRA), at most
    ``concurrency`` requests in flight (0: no cap) and ``quota`` requests per
    ``quota_window`` seconds, windows aligned to the epoch (86400: UTC days; 0: no quota).
    """

    rate: float
    burst: int
    concurrency: int = 0
    quota: int = 0
    quota_window: int = 86_400

    def __post_init__(self) -> None:
        if not self.rate > 0 or self.burst < 1:
            raise ConfigurationError("a rate limit needs rate > 0 and burst >= 1")
        if self.concurrency < 0 or self.quota < 0 or self.quota_window < 1:
            raise ConfigurationError("concurrency and quota must be >= 0, quota_window >= 1")

    def merged(self, overrides: Mapping[str, object]) -> TierLimits:
        """A copy with some fields replaced (from a tenant's catalog attributes, say)."""
        unknown = set(overrides) - set(_LIMIT_FIELDS)
        if unknown:
            raise ConfigurationError(
                f"unknown rate-limit field(s) {sorted(unknown)}; use {list(_LIMIT_FIELDS)}"
            )
        values: dict[str, float | int] = {}
        for name, value in overrides.items():
            kind = _LIMIT_FIELDS[name]
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise ConfigurationError(f"rate-limit field {name!r} must be a number")
            try:
                number = float(value)
            except ValueError:
                raise ConfigurationError(f"rate-limit field {name!r} must be a number") from None
            if kind is int and not number.is_integer():
                raise ConfigurationError(f"rate-limit field {name!r} must be a whole number")
            values[name] = int(number) if kind is int else number
        return replace(self, **values)  # type: ignore[arg-type]

    @classmethod
    def parse(cls, text: str, base: TierLimits) -> TierLimits:
        """``"rate=10,burst=20,concurrency=5,quota=100000"`` over ``base``."""
        pairs: dict[str, object] = {}
        for part in text.split(","):
            if not part.strip():
                continue
            name, sep, value = part.partition("=")
            if not sep:
                raise ConfigurationError(f"expected name=value in rate limit {text!r}")
            pairs[name.strip().lower()] = value.strip()
        return base.merged(pairs)


_LIMIT_FIELDS: dict[str, type] = {
    "rate": float,
    "burst": int,
    "concurrency": int,
    "quota": int,
    "quota_window": int,
}
DEFAULT_TIER_LIMITS: Mapping[str, TierLimits] = MappingProxyType(
    {
        "free": TierLimits(rate=10, burst=20, concurrency=10, quota=100_000),
        "pro": TierLimits(rate=100, burst=200, concurrency=50),
        "enterprise": TierLimits(rate=1000, burst=2000, concurrency=200),
    }
)


@dataclass(frozen=True, slots=True)
class RateLimitSettings:
    """Per-tenant rate limits, quotas and concurrency caps (active when Redis is configured).

    ``tiers`` holds the defaults by tier; a tenant's catalog attribute ``rate_limit`` (an
    object with some of ``TierLimits``' fields) overrides them. ``fail_open``: when Redis
    is unreachable, requests are let through (the default) rather than refused with 503.
    An in-flight slot not released within ``concurrency_lease`` seconds (a crashed worker)
    is reclaimed. ``reserve``: a process takes this many seconds of a tenant's sustained
    rate from Redis at once (at most a quarter of its burst, at most 1,000 tokens) and admits
    requests from them without a round trip, and under a concurrency cap of 8 or more also
    leases a quarter of the cap in slots (see :mod:`tenantry.cache.ratelimit`); 0 checks
    every request in Redis.
    """

    enabled: bool = True
    fail_open: bool = True
    tiers: Mapping[str, TierLimits] = field(default_factory=lambda: DEFAULT_TIER_LIMITS)
    concurrency_lease: float = 60.0
    reserve: float = 0.1


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Bearer-token (JWT, HS256) settings.

    ``required``: when true every tenant request must carry a valid bearer token; when
    false a token is optional but, if present, must be valid and agree with the tenant.
    """

    jwt_secret: str | None = None
    algorithm: str = "HS256"
    issuer: str = "tenantry"
    token_ttl_seconds: int = 3600
    required: bool = False


@dataclass(frozen=True, slots=True)
class ResolutionSettings:
    """How a request is mapped to a tenant.

    ``order`` lists the resolvers tried (``subdomain``, ``header``, ``jwt``); every one
    that finds an identifier must agree with the others. ``base_domains`` are the hosts
    under which ``<slug>.<base>`` names a tenant.
    """

    order: tuple[str, ...] = RESOLVERS
    base_domains: tuple[str, ...] = ("localhost",)
    header: str = "x-tenant-id"
    cache_ttl_seconds: float = 30.0
    cache_size: int = 10_000


@dataclass(frozen=True, slots=True)
class ProvisioningSettings:
    """Tenant provisioning.

    ``spare_schemas``: how many ready-built, unassigned tenant schemas each long-running
    process keeps in stock. Creating a tenant then claims a spare (one DML statement, no
    DDL) instead of running the whole DDL; the stock is refilled in the background. 0 turns
    it off. ``synchronous_claims``: a claim's commit waits for its WAL flush (the default,
    durable). Off, it does not (``synchronous_commit = off`` for that transaction only):
    the sign-up no longer waits on the disk, and a *database server* crash within about
    three ``wal_writer_delay`` s of it may lose that sign-up — whole: the tenant row and the
    claim together, so the spare is back in stock and the slug free; never half of it.
    """

    spare_schemas: int = 0
    synchronous_claims: bool = True


@dataclass(frozen=True, slots=True)
class FlagSettings:
    """Feature flags.

    Each process keeps every flag in memory and listens for changes
    (``LISTEN tenantry_flags``). ``reconnect_seconds``: pause between attempts while the
    database is unreachable (the last snapshot keeps serving). ``resync_seconds``: a full
    reload after this long without notifications, as a safety net.
    """

    reconnect_seconds: float = 1.0
    resync_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class EventsSettings:
    """Events: the transactional outbox, its relay to Kafka, consumers and their DLQ policy.

    ``kafka_bootstrap``: Kafka's bootstrap servers; ``None`` is the embedded default, where
    consumers read the outbox itself as the log (no broker). ``topic_prefix`` is put before
    each event family's topic name (``employee.hired`` goes to ``<prefix>employee``).
    ``topic_partitions``: partitions of the topics the relay creates. A handler that raises
    is retried ``max_attempts`` times in all, ``backoff`` seconds after the first failure,
    doubling up to ``max_backoff``; then the event goes to the dead-letter queue and its
    tenant's later events go on. ``relay_batch``: oldest outbox rows one relay claim looks
    at (its window: it takes those of the tenant shards it can lock);
    ``consumer_batch``: records one consumer poll takes; ``concurrency``: tenants processed
    at once by one consumer. ``consume_in_app``: run the app's consumers inside the web
    process (the embedded default does; with Kafka, run ``tenantry consume`` instead).
    ``log_retention``: seconds the embedded log keeps events every group has passed.
    ``commit_interval``: seconds between a Kafka consumer's offset commits while records
    flow (it also commits whenever a poll finds nothing new, and when it stops); offsets
    only ever cover handled records, so a consumer that dies replays at most this much,
    which the inbox absorbs. 0 commits after every poll. ``relay_interval``: the least
    seconds between the starts of two relay rounds while events trickle in (under a backlog
    full rounds follow each other at once): each round then carries the events of that
    interval, and the relay, the broker and the consumers pay per round, not per event,
    for at most this much added latency. 0 starts a round on every wake-up.
    """

    kafka_bootstrap: str | None = None
    topic_prefix: str = "tenantry."
    topic_partitions: int = 6
    max_attempts: int = 3
    backoff: float = 0.05
    max_backoff: float = 2.0
    relay_batch: int = 2000
    consumer_batch: int = 500
    concurrency: int = 16
    consume_in_app: bool = True
    log_retention: float = 7 * 86_400.0
    commit_interval: float = 0.2
    relay_interval: float = 0.01


DEFAULT_REDACTED_KEYS = (
    "password",
    "passwd",
    "secret",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "authorization",
    "proxy_authorization",
    "cookie",
    "set_cookie",
    "api_key",
    "apikey",
    "jwt_secret",
    "client_secret",
    "private_key",
)


@dataclass(frozen=True, slots=True)
class LogSettings:
    """Structured logs (structlog).

    ``format``: ``json`` (one object per line, the default) or ``console`` (for people).
    Every field whose name is in ``redact_keys`` (case-insensitive, ``-`` = ``_``), at any
    depth, is replaced by ``[REDACTED]``; bearer tokens and JWTs are scrubbed from every
    string whatever its key. ``access_log``: one line per HTTP request.
    """

    format: Literal["json", "console"] = "json"
    level: str = "info"
    redact_keys: tuple[str, ...] = DEFAULT_REDACTED_KEYS
    access_log: bool = True


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    """Prometheus metrics on ``/metrics``.

    ``tenant_cap``: at most this many tenants get a ``tenant`` label of their own per
    process; the rest are folded into ``_other`` (see the README's tenant-label policy).
    ``tenant_allow``: slugs that always get their label (they count against the cap).
    ``promote_after``: requests a tenant needs before it is given a label of its own.
    ``multiproc_dir``: ``PROMETHEUS_MULTIPROC_DIR`` for multi-process servers. ``port`` /
    ``host``: where processes without HTTP (``tenantry relay``, ``tenantry consume``) serve
    ``/metrics`` (none by default).
    """

    enabled: bool = True
    tenant_cap: int = 200
    tenant_allow: tuple[str, ...] = ()
    promote_after: int = 20
    multiproc_dir: str | None = None
    port: int | None = None
    host: str = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """OpenTelemetry traces; off by default.

    ``otlp_endpoint`` (``OTEL_EXPORTER_OTLP_ENDPOINT``): where spans go over OTLP/HTTP;
    without one, spans are created (and propagated) but only exported to exporters added
    in code. ``sample_ratio``: the share of new traces recorded (parent-based).
    """

    enabled: bool = False
    otlp_endpoint: str | None = None
    sample_ratio: float = 1.0
    service_name: str = "tenantry"


@dataclass(frozen=True, slots=True)
class UsageSettings:
    """Usage metering: per-tenant counters are flushed to the control plane every
    ``flush_seconds``."""

    enabled: bool = True
    flush_seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class Settings:
    """All of tenantry's settings."""

    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    cache: CacheSettings = field(default_factory=CacheSettings)
    sessions: SessionSettings = field(default_factory=SessionSettings)
    rate_limit: RateLimitSettings = field(default_factory=RateLimitSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    resolution: ResolutionSettings = field(default_factory=ResolutionSettings)
    provisioning: ProvisioningSettings = field(default_factory=ProvisioningSettings)
    flags: FlagSettings = field(default_factory=FlagSettings)
    events: EventsSettings = field(default_factory=EventsSettings)
    log: LogSettings = field(default_factory=LogSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)
    usage: UsageSettings = field(default_factory=UsageSettings)

    def with_database_url(self, url: str) -> Settings:
        """A copy pointing at another control database."""
        return replace(self, database=replace(self.database, url=url))

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from environment variables (see the README for the list)."""
        env = os.environ if env is None else env
        order = _csv(env.get("TENANTRY_RESOLUTION_ORDER")) or RESOLVERS
        bad = [name for name in order if name not in RESOLVERS]
        if bad:
            raise ConfigurationError(
                f"TENANTRY_RESOLUTION_ORDER has unknown resolver(s) {bad}; use {RESOLVERS}"
            )
        return cls(
            database=DatabaseSettings(
                url=env.get("DATABASE_URL", ""),
                app_url=env.get("TENANTRY_APP_DATABASE_URL") or None,
                app_role=env.get("TENANTRY_APP_ROLE", "tenantry_app"),
                app_password=env.get("TENANTRY_APP_DB_PASSWORD") or None,
                pool_min=_int(env, "TENANTRY_DB_POOL_MIN", 1),
                pool_max=_int(env, "TENANTRY_DB_POOL_MAX", 10),
            ),
            redis=RedisSettings(
                url=env.get("REDIS_URL") or None,
                max_connections=_int(env, "TENANTRY_REDIS_MAX_CONNECTIONS", 64),
                socket_timeout=_float(env, "TENANTRY_REDIS_TIMEOUT", 0.5),
                connect_timeout=_float(env, "TENANTRY_REDIS_TIMEOUT", 0.5),
                key_prefix=env.get("TENANTRY_REDIS_KEY_PREFIX", ""),
                retry_interval=_float(env, "TENANTRY_REDIS_RETRY_INTERVAL", 1.0),
                warn_interval=_float(env, "TENANTRY_REDIS_WARN_INTERVAL", 30.0),
            ),
            cache=CacheSettings(
                default_ttl=_float(env, "TENANTRY_CACHE_TTL", 300.0),
                lock_ttl=_float(env, "TENANTRY_CACHE_LOCK_TTL", 5.0),
            ),
            sessions=SessionSettings(
                cookie_name=env.get("TENANTRY_SESSION_COOKIE") or "tenantry_session",
                idle_ttl=_int(env, "TENANTRY_SESSION_IDLE_TTL", 1800),
                absolute_ttl=_int(env, "TENANTRY_SESSION_ABSOLUTE_TTL", 43_200),
                cookie_secure=_bool(env, "TENANTRY_SESSION_COOKIE_SECURE", True),
            ),
            rate_limit=_rate_limit_settings(env),
            auth=AuthSettings(
                jwt_secret=env.get("TENANTRY_JWT_SECRET") or None,
                required=_bool(env, "TENANTRY_AUTH_REQUIRED", False),
                token_ttl_seconds=_int(env, "TENANTRY_TOKEN_TTL", 3600),
            ),
            resolution=ResolutionSettings(
                order=order,
                base_domains=_csv(env.get("TENANTRY_BASE_DOMAINS")) or ("localhost",),
                cache_ttl_seconds=float(_int(env, "TENANTRY_TENANT_CACHE_TTL", 30)),
            ),
            provisioning=ProvisioningSettings(
                spare_schemas=_int(env, "TENANTRY_SPARE_SCHEMAS", 0),
                synchronous_claims=_bool(env, "TENANTRY_SPARE_SYNCHRONOUS_CLAIMS", True),
            ),
            events=_events_settings(env),
            **_observability_settings(env),
        )


def _observability_settings(env: Mapping[str, str]) -> dict[str, Any]:
    log_format = env.get("TENANTRY_LOG_FORMAT", "json").strip().lower()
    if log_format not in {"json", "console"}:
        raise ConfigurationError(f"TENANTRY_LOG_FORMAT must be json or console, got {log_format!r}")
    cap = _int(env, "TENANTRY_METRICS_TENANT_CAP", 200)
    if cap < 0:
        raise ConfigurationError(f"TENANTRY_METRICS_TENANT_CAP must be >= 0, got {cap}")
    ratio = _float(env, "TENANTRY_TRACE_SAMPLE_RATIO", 1.0)
    if ratio > 1:
        raise ConfigurationError(f"TENANTRY_TRACE_SAMPLE_RATIO must be in [0, 1], got {ratio}")
    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None
    extra_keys = tuple(k.replace("-", "_") for k in _csv(env.get("TENANTRY_LOG_REDACT")))
    return {
        "log": LogSettings(
            format="console" if log_format == "console" else "json",
            level=env.get("TENANTRY_LOG_LEVEL", "info").strip().lower() or "info",
            redact_keys=DEFAULT_REDACTED_KEYS + extra_keys,
            access_log=_bool(env, "TENANTRY_ACCESS_LOG", True),
        ),
        "metrics": MetricsSettings(
            enabled=_bool(env, "TENANTRY_METRICS", True),
            tenant_cap=cap,
            tenant_allow=_csv(env.get("TENANTRY_METRICS_TENANTS")),
            promote_after=max(1, _int(env, "TENANTRY_METRICS_PROMOTE_AFTER", 20)),
            multiproc_dir=env.get("PROMETHEUS_MULTIPROC_DIR") or None,
            port=_int(env, "TENANTRY_METRICS_PORT", 0) or None,
            host=env.get("TENANTRY_METRICS_HOST") or "127.0.0.1",
        ),
        "tracing": TracingSettings(
            enabled=_bool(env, "TENANTRY_TRACING", endpoint is not None),
            otlp_endpoint=endpoint,
            sample_ratio=ratio,
            service_name=env.get("OTEL_SERVICE_NAME") or "tenantry",
        ),
        "usage": UsageSettings(
            enabled=_bool(env, "TENANTRY_USAGE", True),
            flush_seconds=_float(env, "TENANTRY_USAGE_FLUSH_SECONDS", 10.0) or 10.0,
        ),
    }


def _events_settings(env: Mapping[str, str]) -> EventsSettings:
    kafka = env.get("TENANTRY_KAFKA_BOOTSTRAP", "").strip() or None
    attempts = _int(env, "TENANTRY_EVENTS_MAX_ATTEMPTS", 3)
    if attempts < 1:
        raise ConfigurationError("TENANTRY_EVENTS_MAX_ATTEMPTS must be at least 1")
    return EventsSettings(
        kafka_bootstrap=kafka,
        topic_prefix=env.get("TENANTRY_EVENTS_TOPIC_PREFIX", "tenantry."),
        topic_partitions=max(1, _int(env, "TENANTRY_EVENTS_TOPIC_PARTITIONS", 6)),
        max_attempts=attempts,
        backoff=_float(env, "TENANTRY_EVENTS_BACKOFF", 0.05),
        max_backoff=_float(env, "TENANTRY_EVENTS_MAX_BACKOFF", 2.0),
        relay_batch=max(1, _int(env, "TENANTRY_EVENTS_RELAY_BATCH", 2000)),
        consumer_batch=max(1, _int(env, "TENANTRY_EVENTS_CONSUMER_BATCH", 500)),
        concurrency=max(1, _int(env, "TENANTRY_EVENTS_CONCURRENCY", 16)),
        consume_in_app=_bool(env, "TENANTRY_EVENTS_CONSUME_IN_APP", kafka is None),
        log_retention=_float(env, "TENANTRY_EVENTS_LOG_RETENTION", 7 * 86_400.0),
        commit_interval=max(0.0, _float(env, "TENANTRY_EVENTS_COMMIT_INTERVAL", 0.2)),
        relay_interval=_float(env, "TENANTRY_EVENTS_RELAY_INTERVAL", 0.01),
    )


def _rate_limit_settings(env: Mapping[str, str]) -> RateLimitSettings:
    fail = env.get("TENANTRY_RATE_LIMIT_FAIL", "open").strip().lower()
    if fail not in {"open", "closed"}:
        raise ConfigurationError(f"TENANTRY_RATE_LIMIT_FAIL must be open or closed, got {fail!r}")
    tiers = dict(DEFAULT_TIER_LIMITS)
    for tier, base in DEFAULT_TIER_LIMITS.items():
        name = f"TENANTRY_RATE_LIMIT_{tier.upper()}"
        if env.get(name):
            try:
                tiers[tier] = TierLimits.parse(env[name], base)
            except ConfigurationError as exc:
                raise ConfigurationError(f"{name}: {exc}") from None
    return RateLimitSettings(
        enabled=_bool(env, "TENANTRY_RATE_LIMIT", True),
        fail_open=fail == "open",
        tiers=MappingProxyType(tiers),
        concurrency_lease=_float(env, "TENANTRY_RATE_LIMIT_LEASE", 60.0),
        reserve=_float(env, "TENANTRY_RATE_LIMIT_RESERVE", 0.1),
    )


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {raw!r}") from None
    if not value >= 0:
        raise ConfigurationError(f"{name} must not be negative, got {raw!r}")
    return value


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip().lower() for part in (value or "").split(",") if part.strip())


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a whole number, got {raw!r}") from None


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in {"1", "true", "yes", "on"}:
        return True
    if raw.lower() in {"0", "false", "no", "off"}:
        return False
    raise ConfigurationError(f"{name} must be true or false, got {raw!r}")
