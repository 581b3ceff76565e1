"""``tenantry up``: the whole platform on localhost with embedded defaults.

With no configuration it starts PostgreSQL and Valkey from their wheels (data under
``--data-dir``), creates the control plane, provisions the demo tenants with sample data
and serves the app. ``DATABASE_URL`` / ``REDIS_URL`` switch to servers you run. Ctrl-C
stops everything it started; data persists, and the next ``up`` reuses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
from pathlib import Path
from typing import Any

import click
import psycopg
from psycopg import sql
from rich.console import Console
from rich.progress import Progress

from tenantry.cli.runtime import (
    DEFAULT_APP,
    STATE_FILE,
    guarded,
    load_object,
    resolve_data_dir,
    tenant_schema,
)
from tenantry.devstack import PostgresService, ValkeyService
from tenantry.platform import Platform
from tenantry.process import freeze_startup_heap
from tenantry.settings import Settings
from tenantry.web.auth import TokenService

console = Console()
DEMO_TENANTS = (
    ("acme", "enterprise", "Acme Corp"),
    ("globex", "pro", "Globex"),
    ("initech", "free", "Initech"),
)


def _secret(folder: Path) -> str:
    path = folder / "jwt-secret"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(48))
        path.chmod(0o600)
    return path.read_text().strip()


def _ensure_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


async def _provision_demo(settings: Settings, env: dict[str, str], seed: bool) -> None:
    platform = Platform(settings, tenant_schema(env))
    await platform.start(listen=False)
    try:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("demo tenants", total=len(DEMO_TENANTS))
            for slug, tier, name in DEMO_TENANTS:
                tenant = await platform.tenants.create(
                    slug, tier=tier, name=name, actor="tenantry up", exist_ok=True
                )
                if seed:
                    seeder = load_object(
                        env.get("TENANTRY_SEED", "hr_example.seed:seed_tenant"), "TENANTRY_SEED"
                    )
                    await seeder(platform, tenant.context())
                progress.advance(task)
    finally:
        await platform.stop()


def _banner(port: int, tokens: TokenService) -> None:
    acme = tokens.issue(subject="demo-admin@acme", tenant="acme", role="admin")
    click.echo(
        f"""
tenantry is up — HR API on http://localhost:{port}  (docs: http://localhost:{port}/docs)

  curl -H 'X-Tenant-ID: acme' http://localhost:{port}/api/employees
  curl http://globex.localhost:{port}/api/departments
  curl -H 'Authorization: Bearer {acme}' http://localhost:{port}/api/leave-requests
  curl http://localhost:{port}/metrics        # Prometheus metrics, tenant label bounded

  tokens: .venv/bin/tenantry token acme --role admin   |   .venv/bin/tenantry token --platform-admin
  Ctrl-C stops everything; data stays in the data folder.
""",
        err=False,
    )


@click.command()
@click.option("--port", type=int, default=8000, show_default=True, help="HTTP port of the API")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--data-dir", default=None, help="where embedded services keep data [./.tenantry]")
@click.option(
    "--pg-port", type=int, default=54320, show_default=True, help="embedded PostgreSQL port"
)
@click.option(
    "--valkey-port", type=int, default=63790, show_default=True, help="embedded Valkey port"
)
@click.option("--app", "app_spec", default=None, help=f"app factory [{DEFAULT_APP}]")
@click.option("--no-demo", is_flag=True, help="do not create the demo tenants")
@guarded
def up(
    port: int,
    host: str,
    data_dir: str | None,
    pg_port: int,
    valkey_port: int,
    app_spec: str | None,
    no_demo: bool,
) -> None:
    """Run the platform locally: embedded PostgreSQL + Valkey, demo tenants, the HR API."""
    import uvicorn

    folder = resolve_data_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    started: list[PostgresService | ValkeyService] = []
    try:
        if not env.get("DATABASE_URL"):
            postgres = PostgresService(folder / "postgres", port=pg_port)
            console.print(f"starting embedded PostgreSQL on 127.0.0.1:{pg_port} ...")
            postgres.start()
            started.append(postgres)
            _ensure_database(postgres.url, "tenantry")
            env["DATABASE_URL"] = postgres.url.rsplit("/", 1)[0] + "/tenantry"
        if not env.get("REDIS_URL"):
            valkey = ValkeyService(folder / "valkey", port=valkey_port)
            console.print(f"starting embedded Valkey on 127.0.0.1:{valkey_port} ...")
            valkey.start()
            started.append(valkey)
            env["REDIS_URL"] = valkey.url
        env.setdefault("TENANTRY_JWT_SECRET", _secret(folder))
        settings = Settings.from_env(env)
        state = {k: env[k] for k in ("DATABASE_URL", "REDIS_URL", "TENANTRY_JWT_SECRET")}
        (folder / STATE_FILE).write_text(json.dumps(state))
        (folder / STATE_FILE).chmod(0o600)
        if not no_demo:
            asyncio.run(_provision_demo(settings, env, seed=True))
        factory: Any = load_object(app_spec or env.get("TENANTRY_APP", DEFAULT_APP), "--app")
        app = factory(settings)
        _banner(port, TokenService(settings.auth))
        # uvicorn logs through tenantry's JSON logging (the app factory configured it); the
        # access log is tenantry's own line, which names the tenant.
        server = uvicorn.Server(
            uvicorn.Config(
                app, host=host, port=port, log_level="info", log_config=None, access_log=False
            )
        )
        # Imports and the app are built: full collections skip them from now on (the API
        # process also runs the app's consumers when no Kafka is configured).
        freeze_startup_heap()
        # uvicorn re-raises Ctrl-C after a graceful shutdown; that is a clean stop.
        with contextlib.suppress(KeyboardInterrupt):
            server.run()
    finally:
        for service in reversed(started):
            service.stop()
        if started:
            console.print("embedded services stopped; data kept in " + str(folder))
