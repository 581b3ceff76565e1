"""``tenantry migrate`` and ``tenantry migrations``: fleet schema evolution."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as Bar
from rich.table import Table

from tenantry.cli.runtime import (
    EXIT_ERROR,
    control_plane_schema,
    guarded,
    load_environment,
    open_platform,
    resolve_data_dir,
    tenant_schema,
)
from tenantry.migrations import FleetReport, MigrationSettings, MigrationStatus, Progress
from tenantry.migrations import command as commands

console = Console(stderr=True)
data_dir_option = click.option(
    "--data-dir", envvar="TENANTRY_DATA_DIR", default=None, help="folder of 'tenantry up' state"
)
json_option = click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")


@click.group(invoke_without_command=True)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=None,
    help="tenants migrated at once [default: owner pool size - 1]",
)
@click.option("--dry-run", is_flag=True, help="print the SQL that would run; change nothing")
@click.option("--tenant", default=None, help="migrate only this tenant (slug)")
@click.option("--canary", multiple=True, help="tenant slug(s) to migrate first (repeatable)")
@click.option("--lock-timeout-ms", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option(
    "--statement-timeout-ms", type=click.IntRange(min=1), default=300_000, show_default=True
)
@click.option("--retries", type=click.IntRange(min=0), default=5, show_default=True)
@data_dir_option
@json_option
@click.pass_context
@guarded
def migrate(
    ctx: click.Context,
    concurrency: int | None,
    dry_run: bool,
    tenant: str | None,
    canary: tuple[str, ...],
    lock_timeout_ms: int,
    statement_timeout_ms: int,
    retries: int,
    data_dir: str | None,
    as_json: bool,
) -> None:
    """Bring the control plane, then every tenant schema, to head: canary first, then the
    fleet in waves. Safe to kill and run again. Exit code 1 if any tenant failed."""
    if ctx.invoked_subcommand is not None:
        return
    settings = MigrationSettings(
        concurrency=concurrency,
        lock_timeout_ms=lock_timeout_ms,
        statement_timeout_ms=statement_timeout_ms,
        retries=retries,
        canary=canary,
        tenant=tenant,
        actor="cli",
    )
    report = asyncio.run(_migrate(data_dir, settings, dry_run=dry_run, quiet=as_json))
    if dry_run and not as_json:
        click.echo(report.dry_run_sql)
    elif as_json:
        payload = report.as_dict()
        if dry_run:
            payload["sql"] = report.dry_run_sql
        click.echo(json.dumps(payload))
    else:
        _print_report(report)
    if not report.ok:
        sys.exit(EXIT_ERROR)


async def _migrate(
    data_dir: str | None, settings: MigrationSettings, *, dry_run: bool, quiet: bool
) -> FleetReport:
    folder = resolve_data_dir(data_dir)
    control = control_plane_schema(load_environment(folder))
    async with open_platform(folder) as platform:
        with Bar(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]} tenants/s"),
            TextColumn("failed {task.fields[failed]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            disable=quiet or dry_run,
            transient=False,
        ) as bar:
            tasks: dict[str, TaskID] = {}

            def advance(p: Progress) -> None:
                if p.wave not in tasks:
                    tasks[p.wave] = bar.add_task(p.wave, total=p.total, rate="-", failed=0)
                task = tasks[p.wave]
                bar.update(task, completed=p.done, failed=p.failed)
                speed = next(t.speed for t in bar.tasks if t.id == task)
                bar.update(task, rate=f"{speed:,.0f}" if speed else "-")

            return await commands.upgrade(
                platform, control=control, settings=settings, dry_run=dry_run, on_progress=advance
            )


def _print_report(report: FleetReport) -> None:
    out = Console()
    if report.control_from != report.control_to:
        out.print(f"control plane: {report.control_from or 'base'} -> {report.control_to}")
    out.print(
        f"head {report.head}: {report.migrated} tenant(s) migrated, {report.skipped} skipped "
        f"(already moved by another run), {len(report.failed)} failed, {report.retried} "
        f"lock-timeout retries, in {report.elapsed_s:.2f} s"
    )
    if report.failed:
        table = Table("tenant", "from", "error", title="failed tenants (others continued)")
        for failure in report.failed:
            table.add_row(failure.slug, failure.from_version or "base", failure.error)
        out.print(table)
    if report.stopped:
        out.print(f"[red]stopped: {report.stopped}[/]")
    if not report.ok:
        out.print("fix the cause, then run 'tenantry migrate' again: it resumes where it stopped")


@migrate.command()
@data_dir_option
@json_option
@guarded
def status(data_dir: str | None, as_json: bool) -> None:
    """Is anything to do? One query on the ledger, however large the fleet."""

    async def run() -> MigrationStatus:
        folder = resolve_data_dir(data_dir)
        control = control_plane_schema(load_environment(folder))
        async with open_platform(folder) as platform:
            return await commands.status(platform, control=control)

    result = asyncio.run(run())
    if as_json:
        click.echo(json.dumps(result.as_dict()))
        return
    out = Console()
    out.print(
        f"control plane: {result.control_version or 'base'} (head {result.control_head or '-'})"
    )
    table = Table("schema version", "tenants", "")
    for item in result.as_dict()["versions"]:
        table.add_row(
            item["version"] or "base", f"{item['tenants']:,}", "head" if item["at_head"] else ""
        )
    out.print(table)
    verdict = (
        "up to date: nothing to do"
        if result.up_to_date
        else f"{result.behind:,} of {result.tenants:,} tenant(s) behind head {result.head}"
    )
    out.print(verdict + (f"; {result.failures} failed last run" if result.failures else ""))


@click.group()
def migrations() -> None:
    """Author migration revisions."""


@migrations.command()
@click.argument("message")
@click.option("--control", is_flag=True, help="a control-plane revision (default: tenant)")
@click.option(
    "--dir",
    "folder",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="the migration folder [default: where the configured chain was loaded from]",
)
@click.option(
    "--non-transactional",
    is_flag=True,
    help="for CREATE INDEX CONCURRENTLY: runs outside a transaction",
)
@data_dir_option
@guarded
def new(
    message: str, control: bool, folder: Path | None, non_transactional: bool, data_dir: str | None
) -> None:
    """Scaffold the next revision: NNNN_<message>.py with an upgrade(op) to fill in."""
    env = load_environment(resolve_data_dir(data_dir))
    schema = control_plane_schema(env) if control else tenant_schema(env)
    path = commands.revision(schema, message, folder=folder, transactional=not non_transactional)
    click.echo(str(path))
