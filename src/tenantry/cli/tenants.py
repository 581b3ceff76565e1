"""``tenantry tenants ...``: the tenant lifecycle from the command line."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tenantry.catalog.models import Tenant, TenantStatus, Tier
from tenantry.cli.runtime import guarded, open_platform, resolve_data_dir
from tenantry.provisioning import ExportResult

console = Console()
data_dir_option = click.option(
    "--data-dir", envvar="TENANTRY_DATA_DIR", default=None, help="folder of 'tenantry up' state"
)
json_option = click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")


def _print_tenant(tenant: Tenant, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(tenant.as_dict()))
        return
    table = Table(show_header=False, box=None)
    for key, value in tenant.as_dict().items():
        table.add_row(f"[bold]{key}[/]", "" if value is None else str(value))
    console.print(table)


@click.group()
def tenants() -> None:
    """Create, inspect, suspend, resume, export and offboard tenants."""


@tenants.command()
@click.argument("slug")
@click.option(
    "--tier", type=click.Choice([t.value for t in Tier]), default="free", show_default=True
)
@click.option("--name", default=None, help="display name (default: the slug)")
@click.option("--ring", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--exist-ok", is_flag=True, help="succeed if the tenant already exists")
@data_dir_option
@json_option
@guarded
def create(
    slug: str,
    tier: str,
    name: str | None,
    ring: int,
    exist_ok: bool,
    data_dir: str | None,
    as_json: bool,
) -> None:
    """Provision tenant SLUG: catalog row, schema, tables, RLS and grants, atomically."""

    async def run() -> Tenant:
        async with open_platform(resolve_data_dir(data_dir)) as platform:
            return await platform.tenants.create(
                slug, tier=tier, name=name, ring=ring, actor="cli", exist_ok=exist_ok
            )

    _print_tenant(asyncio.run(run()), as_json)


@tenants.command(name="list")
@click.option("--status", type=click.Choice([s.value for s in TenantStatus]), default=None)
@click.option("--all", "include_deleted", is_flag=True, help="include offboarded tombstones")
@data_dir_option
@json_option
@guarded
def list_(status: str | None, include_deleted: bool, data_dir: str | None, as_json: bool) -> None:
    """List tenants."""

    async def run() -> list[Tenant]:
        async with open_platform(resolve_data_dir(data_dir)) as platform:
            return await platform.tenants.list(
                status=TenantStatus(status) if status else None, include_deleted=include_deleted
            )

    found = asyncio.run(run())
    if as_json:
        click.echo(json.dumps([tenant.as_dict() for tenant in found]))
        return
    table = Table("slug", "name", "tier", "status", "ring", "schema", "version", "id")
    for tenant in found:
        table.add_row(
            tenant.slug,
            tenant.name,
            tenant.tier.value,
            tenant.status.value,
            str(tenant.ring),
            tenant.schema_name,
            tenant.schema_version or "-",
            str(tenant.id),
        )
    console.print(table)
    console.print(f"{len(found)} tenant(s)")


@tenants.command()
@click.argument("slug")
@data_dir_option
@json_option
@guarded
def show(slug: str, data_dir: str | None, as_json: bool) -> None:
    """Show one tenant (by slug or id)."""

    async def run() -> Tenant:
        async with open_platform(resolve_data_dir(data_dir)) as platform:
            return await platform.tenants.get(slug)

    _print_tenant(asyncio.run(run()), as_json)


@tenants.command()
@click.argument("slug")
@click.option("--reason", default="", help="recorded in the lifecycle log")
@data_dir_option
@json_option
@guarded
def suspend(slug: str, reason: str, data_dir: str | None, as_json: bool) -> None:
    """Suspend a tenant: its requests get 403; data is untouched."""

    async def run() -> Tenant:
        async with open_platform(resolve_data_dir(data_dir)) as platform:
            return await platform.tenants.suspend(slug, actor="cli", reason=reason)

    _print_tenant(asyncio.run(run()), as_json)


@tenants.command()
@click.argument("slug")
@data_dir_option
@json_option
@guarded
def resume(slug: str, data_dir: str | None, as_json: bool) -> None:
    """Resume a suspended tenant."""

    async def run() -> Tenant:
        async with open_platform(resolve_data_dir(data_dir)) as platform:
            return await platform.tenants.resume(slug, actor="cli")

    _print_tenant(asyncio.run(run()), as_json)


@tenants.command()
@click.argument("slug")
@click.option("--out", type=click.Path(path_type=Path), default=Path("exports"), show_default=True)
@data_dir_option
@json_option
@guarded
def export(slug: str, out: Path, data_dir: str | None, as_json: bool) -> None:
    """Write the tenant's archive: JSON lines per table + manifest with checksums."""
    result = asyncio.run(_export(slug, out, data_dir, offboard=False, quiet=as_json))
    _print_export(result, as_json)


@tenants.command()
@click.argument("slug")
@click.option("--out", type=click.Path(path_type=Path), default=Path("exports"), show_default=True)
@click.option("--yes", is_flag=True, help="do not ask for confirmation")
@data_dir_option
@json_option
@guarded
def offboard(slug: str, out: Path, yes: bool, data_dir: str | None, as_json: bool) -> None:
    """Export the tenant, then drop its schema; the catalog keeps a tombstone."""
    if not yes:
        click.confirm(f"Offboard {slug!r}? Its schema is dropped after the export", abort=True)
    result = asyncio.run(_export(slug, out, data_dir, offboard=True, quiet=as_json))
    _print_export(result, as_json)


async def _export(
    slug: str, out: Path, folder: str | None, *, offboard: bool, quiet: bool
) -> ExportResult:
    async with open_platform(resolve_data_dir(folder)) as platform:
        tables = platform.compiled_schema.tables
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            console=console,
            disable=quiet,
            transient=True,
        ) as progress:
            task = progress.add_task(f"exporting {slug}", total=len(tables))

            def advance(table: str, rows: int) -> None:
                progress.update(
                    task, advance=1, description=f"exporting {slug}: {table} ({rows} rows)"
                )

            if offboard:
                return await platform.tenants.offboard(slug, out, actor="cli", on_table=advance)
            return await platform.tenants.export(slug, out, on_table=advance)


def _print_export(result: ExportResult, as_json: bool) -> None:
    summary: dict[str, Any] = {
        "archive": str(result.path),
        "rows": result.total_rows,
        "tables": {t["name"]: t["rows"] for t in result.manifest["tables"]},
    }
    if as_json:
        click.echo(json.dumps(summary))
    else:
        console.print(
            f"wrote [bold]{result.path}[/] ({result.total_rows} rows in "
            f"{len(result.manifest['tables'])} tables)"
        )
