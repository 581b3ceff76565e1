"""Shared fixtures: real PostgreSQL and Valkey (started by ``scripts/services``), one
throw-away database per test session, and the HR example app served in-process."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest
import redis
from fastapi import FastAPI
from psycopg import sql

from hr_example import create_app
from tenantry import Platform, Settings
from tenantry.catalog import Tenant
from tenantry.devstack.kafka import api_versions_ok as kafka_answers
from tenantry.events.kafka import TopicAdmin

PG_ADMIN_URL = os.environ.get(
    "TENANTRY_TEST_PG_URL",
    f"postgresql://postgres@127.0.0.1:{os.environ.get('TENANTRY_TEST_PG_PORT', '54329')}/postgres",
)
REDIS_URL = os.environ.get(
    "TENANTRY_TEST_REDIS_URL",
    f"redis://127.0.0.1:{os.environ.get('TENANTRY_TEST_VALKEY_PORT', '63799')}/0",
)
_CLUSTER_PORTS = os.environ.get("TENANTRY_TEST_VALKEY_CLUSTER_PORTS", "7101,7102,7103")
REDIS_CLUSTER_URL = os.environ.get(
    "TENANTRY_TEST_REDIS_CLUSTER_URL",
    "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in _CLUSTER_PORTS.split(",")),
)
KAFKA_BOOTSTRAP = os.environ.get(
    "TENANTRY_TEST_KAFKA_BOOTSTRAP",
    f"127.0.0.1:{os.environ.get('TENANTRY_TEST_KAFKA_PORT', '19092')}",
)
JWT_SECRET = "test-secret-" + "x" * 40


def _require(service: str, check: Callable[[], Any]) -> None:
    # A missing service is a failure, never a skip: in CI (CI=true) and locally alike.
    try:
        check()
    except Exception as exc:
        pytest.fail(
            f"{service} is not reachable ({exc}); start it with 'scripts/services start' "
            "(make test does this for you)",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    """Superuser URL of the test PostgreSQL server."""
    _require("PostgreSQL", lambda: psycopg.connect(PG_ADMIN_URL, connect_timeout=5).close())
    return PG_ADMIN_URL


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the test Valkey server."""
    _require("Valkey", lambda: redis.Redis.from_url(REDIS_URL, socket_timeout=5).ping())
    return REDIS_URL


def _check_cluster(url: str) -> None:
    seeds = url.split("://", 1)[1].split(",")
    for seed in seeds:
        client = redis.Redis.from_url(f"redis://{seed}", socket_timeout=5)
        try:
            info = client.execute_command("CLUSTER INFO")
        finally:
            client.close()
        state = info.get("cluster_state") if isinstance(info, dict) else None
        if state != "ok":
            raise RuntimeError(f"{seed} reports cluster_state {state!r}")


@pytest.fixture(scope="session")
def redis_cluster_url() -> str:
    """Seed-list URL of the test Valkey cluster (three masters)."""
    _require("The Valkey cluster", lambda: _check_cluster(REDIS_CLUSTER_URL))
    return REDIS_CLUSTER_URL


def _check_kafka(bootstrap: str) -> None:
    host, port = bootstrap.split(",")[0].rsplit(":", 1)
    if not kafka_answers(host, int(port)):
        raise RuntimeError(f"no Kafka broker answers ApiVersions at {bootstrap}")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Bootstrap servers of the test Kafka broker (single-node KRaft)."""
    _require("Kafka", lambda: _check_kafka(KAFKA_BOOTSTRAP))
    return KAFKA_BOOTSTRAP


@pytest.fixture
async def topic_prefix(kafka_bootstrap: str) -> AsyncIterator[str]:
    """A topic prefix of the test's own; its topics are deleted afterwards, so the shared
    broker does not pile up partitions run after run."""
    prefix = f"t{secrets.token_hex(4)}."
    yield prefix
    await TopicAdmin(kafka_bootstrap, partitions=1).drop(prefix)


def _fresh_database(admin_url: str, prefix: str) -> tuple[str, str]:
    name = f"{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name, admin_url.rsplit("/", 1)[0] + "/" + name


def _drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(scope="session")
def make_database(pg_admin_url: str) -> Iterator[Callable[[str], str]]:
    """Factory of throw-away databases, all dropped at the end of the session."""
    created: list[str] = []

    def make(prefix: str = "tenantry_test") -> str:
        name, url = _fresh_database(pg_admin_url, prefix)
        created.append(name)
        return url

    yield make
    for name in created:
        _drop_database(pg_admin_url, name)


@pytest.fixture(scope="session")
def database_url(make_database: Callable[[str], str]) -> str:
    """The session's control database (owner/superuser URL)."""
    return make_database("tenantry_test")


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str) -> Settings:
    """Settings pointing at the session's database and Valkey."""
    return Settings.from_env(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "TENANTRY_JWT_SECRET": JWT_SECRET,
            "TENANTRY_DB_POOL_MAX": "12",
            # The shared app serves load tests of other capabilities; rate limits are
            # tested on apps of their own (tests/test_cache_*.py).
            "TENANTRY_RATE_LIMIT": "off",
        }
    )


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The HR example app, started (lifespan run) once per session."""
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(scope="session")
def platform(app: FastAPI) -> Platform:
    """The app's platform (database, catalog, lifecycle)."""
    return app.state.tenantry  # type: ignore[no-any-return]


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client speaking to the app in-process."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


def unique_slug(prefix: str = "t") -> str:
    """A fresh, valid tenant slug."""
    return f"{prefix}{secrets.token_hex(5)}"


@pytest.fixture
def make_tenant(platform: Platform) -> Callable[..., Awaitable[Tenant]]:
    """Create a tenant with a unique slug (keyword arguments go to ``create``)."""

    async def make(prefix: str = "t", **kwargs: Any) -> Tenant:
        return await platform.tenants.create(unique_slug(prefix), **kwargs)

    return make
