"""Settings are read from an explicit mapping at the edge, validated, and frozen."""

from __future__ import annotations

import dataclasses
from urllib.parse import unquote, urlsplit

import pytest

from tenantry import ConfigurationError, Settings
from tenantry.settings import RESOLVERS, DatabaseSettings


def test_defaults_from_an_empty_environment() -> None:
    """With nothing set, every capability gets its documented default."""
    settings = Settings.from_env({})
    assert settings.database.url == ""
    assert settings.database.app_url is None
    assert settings.database.app_role == "tenantry_app"
    assert settings.database.app_password is None
    assert (settings.database.pool_min, settings.database.pool_max) == (1, 10)
    assert settings.redis.url is None
    assert settings.auth.jwt_secret is None
    assert settings.auth.required is False
    assert settings.auth.token_ttl_seconds == 3600
    assert settings.resolution.order == RESOLVERS
    assert settings.resolution.base_domains == ("localhost",)
    assert settings.resolution.cache_ttl_seconds == 30.0
    assert settings.provisioning.spare_schemas == 0


def test_from_env_parses_every_documented_variable() -> None:
    """Each variable lands in its field, typed."""
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://owner:pw@db.internal:5433/saas",
            "TENANTRY_APP_DATABASE_URL": "postgresql://app@pgbouncer:6432/saas",
            "TENANTRY_APP_ROLE": "saas_app",
            "TENANTRY_APP_DB_PASSWORD": "s3cret",
            "TENANTRY_DB_POOL_MIN": "2",
            "TENANTRY_DB_POOL_MAX": "40",
            "REDIS_URL": "redis://cache:6379/1",
            "TENANTRY_JWT_SECRET": "k" * 32,
            "TENANTRY_AUTH_REQUIRED": "yes",
            "TENANTRY_TOKEN_TTL": "600",
            "TENANTRY_RESOLUTION_ORDER": " JWT , header ",
            "TENANTRY_BASE_DOMAINS": "Example.com, app.example.net",
            "TENANTRY_TENANT_CACHE_TTL": "5",
            "TENANTRY_SPARE_SCHEMAS": "8",
            "TENANTRY_SPARE_SYNCHRONOUS_CLAIMS": "off",
        }
    )
    db = settings.database
    assert db.url == "postgresql://owner:pw@db.internal:5433/saas"
    assert db.app_url == "postgresql://app@pgbouncer:6432/saas"
    assert (db.app_role, db.app_password) == ("saas_app", "s3cret")
    assert (db.pool_min, db.pool_max) == (2, 40)
    assert settings.redis.url == "redis://cache:6379/1"
    assert settings.auth.jwt_secret == "k" * 32
    assert settings.auth.required is True
    assert settings.auth.token_ttl_seconds == 600
    assert settings.resolution.order == ("jwt", "header")
    assert settings.resolution.base_domains == ("example.com", "app.example.net")
    assert settings.resolution.cache_ttl_seconds == 5.0
    assert settings.provisioning.spare_schemas == 8
    assert settings.provisioning.synchronous_claims is False
    assert Settings.from_env({}).provisioning.synchronous_claims is True


def test_the_relay_interval_is_read_in_seconds_and_never_negative() -> None:
    """``TENANTRY_EVENTS_RELAY_INTERVAL``: 10 ms unless set; a negative value is refused."""
    assert Settings.from_env({}).events.relay_interval == 0.01
    read = Settings.from_env({"TENANTRY_EVENTS_RELAY_INTERVAL": "0.05"}).events
    assert read.relay_interval == 0.05
    with pytest.raises(ConfigurationError, match="TENANTRY_EVENTS_RELAY_INTERVAL"):
        Settings.from_env({"TENANTRY_EVENTS_RELAY_INTERVAL": "-1"})


def test_empty_values_mean_unset() -> None:
    """An empty variable falls back to the default instead of failing or meaning ''."""
    settings = Settings.from_env(
        {
            "TENANTRY_APP_DATABASE_URL": "",
            "TENANTRY_APP_DB_PASSWORD": "",
            "TENANTRY_DB_POOL_MAX": "",
            "REDIS_URL": "",
            "TENANTRY_JWT_SECRET": "",
            "TENANTRY_AUTH_REQUIRED": "",
            "TENANTRY_RESOLUTION_ORDER": "",
            "TENANTRY_BASE_DOMAINS": " , ",
        }
    )
    assert settings.database.app_url is None
    assert settings.database.app_password is None
    assert settings.database.pool_max == 10
    assert settings.redis.url is None
    assert settings.auth.jwt_secret is None
    assert settings.auth.required is False
    assert settings.resolution.order == RESOLVERS
    assert settings.resolution.base_domains == ("localhost",)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("TRUE", True),
        ("on", True),
        ("0", False),
        ("False", False),
        ("off", False),
        ("no", False),
    ],
)
def test_booleans_accept_the_usual_spellings(raw: str, expected: bool) -> None:
    """true/false, yes/no, on/off and 1/0 are accepted in any case."""
    assert Settings.from_env({"TENANTRY_AUTH_REQUIRED": raw}).auth.required is expected


@pytest.mark.parametrize("raw", ["maybe", "2", "y", "enabled"])
def test_bad_booleans_are_rejected(raw: str) -> None:
    """An unrecognised boolean names the variable instead of silently meaning false."""
    with pytest.raises(ConfigurationError, match="TENANTRY_AUTH_REQUIRED"):
        Settings.from_env({"TENANTRY_AUTH_REQUIRED": raw})


@pytest.mark.parametrize(
    "name",
    [
        "TENANTRY_DB_POOL_MIN",
        "TENANTRY_DB_POOL_MAX",
        "TENANTRY_TOKEN_TTL",
        "TENANTRY_TENANT_CACHE_TTL",
        "TENANTRY_SPARE_SCHEMAS",
    ],
)
@pytest.mark.parametrize("raw", ["ten", "1.5", "0x10", "3 apples"])
def test_bad_ints_are_rejected(name: str, raw: str) -> None:
    """A non-integer value raises ConfigurationError naming the variable and the value."""
    with pytest.raises(ConfigurationError, match=name) as info:
        Settings.from_env({name: raw})
    assert repr(raw) in str(info.value)


@pytest.mark.parametrize("order", ["header,cookie", "subdomain,JWT,path", "magic"])
def test_unknown_resolvers_are_rejected(order: str) -> None:
    """TENANTRY_RESOLUTION_ORDER may only name known resolvers."""
    with pytest.raises(ConfigurationError, match="TENANTRY_RESOLUTION_ORDER"):
        Settings.from_env({"TENANTRY_RESOLUTION_ORDER": order})


def test_from_env_reads_os_environ_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no mapping the process environment is read; an explicit mapping ignores it."""
    monkeypatch.setenv("TENANTRY_APP_ROLE", "from_os")
    assert Settings.from_env().database.app_role == "from_os"
    assert Settings.from_env({}).database.app_role == "tenantry_app"


def test_settings_are_frozen() -> None:
    """Settings cannot be changed after construction."""
    settings = Settings.from_env({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.database = DatabaseSettings()  # type: ignore[misc]


def test_with_database_url_changes_only_the_url() -> None:
    """with_database_url returns a copy pointing elsewhere and leaves the original alone."""
    original = Settings.from_env({"DATABASE_URL": "postgresql://a@h/one", "TENANTRY_APP_ROLE": "r"})
    moved = original.with_database_url("postgresql://a@h/two")
    assert moved.database.url == "postgresql://a@h/two"
    assert moved.database.app_role == "r"
    assert original.database.url == "postgresql://a@h/one"


def test_resolved_app_url_swaps_user_and_drops_owner_password() -> None:
    """The app URL keeps host, port, database and query but uses the app role, not the owner."""
    db = DatabaseSettings(
        url="postgresql://owner:ownerpw@db.internal:5433/saas?sslmode=require",
        app_role="tenantry_app",
    )
    app_url = db.resolved_app_url()
    assert app_url == "postgresql://tenantry_app@db.internal:5433/saas?sslmode=require"
    assert "owner" not in app_url


def test_resolved_app_url_uses_the_app_password_quoted() -> None:
    """The app password is added and URL-quoted, so ':', '@' and '/' survive."""
    db = DatabaseSettings(
        url="postgresql://postgres@127.0.0.1:54329/tenantry",
        app_role="app role",
        app_password="p@ss:w/rd#1",
    )
    parts = urlsplit(db.resolved_app_url())
    assert unquote(parts.username or "") == "app role"
    assert unquote(parts.password or "") == "p@ss:w/rd#1"
    assert (parts.hostname, parts.port, parts.path) == ("127.0.0.1", 54329, "/tenantry")


def test_resolved_app_url_without_port_and_with_ipv6_host() -> None:
    """No port stays no port; an IPv6 host keeps its brackets."""
    assert (
        DatabaseSettings(url="postgresql://o@db/x").resolved_app_url()
        == "postgresql://tenantry_app@db/x"
    )
    assert (
        DatabaseSettings(url="postgresql://o:pw@[::1]:5432/x").resolved_app_url()
        == "postgresql://tenantry_app@[::1]:5432/x"
    )


def test_explicit_app_url_wins() -> None:
    """TENANTRY_APP_DATABASE_URL (e.g. a PgBouncer) is used as given."""
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://owner@db/x",
            "TENANTRY_APP_DATABASE_URL": "postgresql://other@bouncer:6432/x",
            "TENANTRY_APP_ROLE": "ignored_here",
        }
    )
    assert settings.database.resolved_app_url() == "postgresql://other@bouncer:6432/x"


def test_app_role_and_password_from_env_reach_the_resolved_url() -> None:
    """TENANTRY_APP_ROLE / TENANTRY_APP_DB_PASSWORD shape the derived app URL."""
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://owner:x@db:5432/saas",
            "TENANTRY_APP_ROLE": "saas_app",
            "TENANTRY_APP_DB_PASSWORD": "pw",
        }
    )
    assert settings.database.resolved_app_url() == "postgresql://saas_app:pw@db:5432/saas"
