"""Typed, frozen settings: one object per capability, composed into :class:`Settings`.

Nothing here reads the environment at import time. The edge (CLI, app factory, tests)
calls :meth:`Settings.from_env` once and passes the result down.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
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
    """Redis / Valkey for sessions and hot data; ``None`` url means not configured."""

    url: str | None = None


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
    process keeps in stock. Creating a tenant then renames a spare (milliseconds) instead of
    running the whole DDL; the stock is refilled in the background. 0 turns it off.
    """

    spare_schemas: int = 0


@dataclass(frozen=True, slots=True)
class Settings:
    """All of tenantry's settings."""

    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    redis: RedisSettings = field(default_factory=RedisSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    resolution: ResolutionSettings = field(default_factory=ResolutionSettings)
    provisioning: ProvisioningSettings = field(default_factory=ProvisioningSettings)

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
            redis=RedisSettings(url=env.get("REDIS_URL") or None),
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
            ),
        )


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
