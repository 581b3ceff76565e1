"""``tenantry relay``, ``tenantry consume APP`` and ``tenantry audit ...``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from tenantry.catalog.errors import TenantNotFoundError
from tenantry.cli.runtime import guarded, load_object, open_platform, resolve_data_dir
from tenantry.errors import ConfigurationError
from tenantry.events import AuditReport, EventHandlers
from tenantry.observability.logging import configure_logging
from tenantry.platform import Platform
from tenantry.process import freeze_startup_heap
from tenantry.settings import Settings

console = Console()
T = TypeVar("T")
data_dir_option = click.option(
    "--data-dir", envvar="TENANTRY_DATA_DIR", default=None, help="folder of 'tenantry up' state"
)


def _run(data_dir: str | None, action: Callable[[Platform], Awaitable[T]]) -> T:
    async def run() -> T:
        async with open_platform(resolve_data_dir(data_dir)) as platform:
            return await action(platform)

    return asyncio.run(run())


async def _until_signalled(work: Awaitable[None]) -> None:
    """Run ``work`` until it ends or SIGTERM/SIGINT arrives (then cancel it cleanly)."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _logging() -> None:
    # Long-running: JSON lines (tenant and correlation fields included), like the app's.
    configure_logging(Settings.from_env().log)


@click.command()
@data_dir_option
@guarded
def relay(data_dir: str | None) -> None:
    """Relay committed events from the outbox to Kafka (runs until stopped; several may
    run at once)."""
    _logging()

    async def action(platform: Platform) -> None:
        if platform.events.embedded:
            raise ConfigurationError(
                "TENANTRY_KAFKA_BOOTSTRAP is not set: with no Kafka, consumers read the "
                "outbox directly and no relay is needed"
            )
        platform.observability.serve_metrics()  # TENANTRY_METRICS_PORT: outbox lag et al.
        relay = platform.events.relay()
        freeze_startup_heap()  # start-up is done: full collections skip its objects
        await _until_signalled(relay.run())

    _run(data_dir, action)


def _handlers(spec: str, platform: Platform) -> EventHandlers:
    target = load_object(spec, "APP")
    if not isinstance(target, EventHandlers) and callable(target):
        target = target(platform)
    if not isinstance(target, EventHandlers):
        raise ConfigurationError(
            f"APP {spec!r} must name a tenantry.events.EventHandlers, or a function taking "
            "the platform and returning one"
        )
    return target


@click.command()
@click.argument("app")
@click.option("--group", default=None, help="consumer group [the handlers' own group]")
@data_dir_option
@guarded
def consume(app: str, group: str | None, data_dir: str | None) -> None:
    """Run APP's event handlers (APP is 'module:name' of an EventHandlers registry, or of
    a function taking the platform and returning one), from Kafka or the outbox."""
    _logging()

    async def action(platform: Platform) -> None:
        handlers = _handlers(app, platform)
        name = group or handlers.group
        if not name:
            raise ConfigurationError("the handlers name no group; pass --group NAME")
        consumer = platform.events.consumer(name, handlers)
        click.echo(
            f"consuming {sorted(handlers.types)} as group {name!r} from "
            f"{'the outbox' if platform.events.embedded else 'Kafka'}",
            err=True,
        )
        platform.observability.serve_metrics()  # TENANTRY_METRICS_PORT: consumer lag et al.
        freeze_startup_heap()  # start-up is done: full collections skip its objects
        await _until_signalled(consumer.run())

    _run(data_dir, action)


@click.group()
def audit() -> None:
    """Tenants' hash-chained audit trails of published events."""


async def _tenant_id(platform: Platform, slug: str) -> Any:
    tenant = await platform.directory.get(slug)
    if tenant is None:
        raise TenantNotFoundError(f"no tenant {slug!r}; 'tenantry tenants list' shows them")
    return tenant.id


@audit.command("show")
@click.argument("slug")
@click.option("--after", type=int, default=0, show_default=True, help="start after position")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
@data_dir_option
@guarded
def audit_show(slug: str, after: int, limit: int, as_json: bool, data_dir: str | None) -> None:
    """List a tenant's audit entries, oldest first."""

    async def action(platform: Platform) -> list[dict[str, Any]]:
        tenant_id = await _tenant_id(platform, slug)
        entries = await platform.events.audit.entries(tenant_id, after=after, limit=limit)
        return [entry.as_dict() for entry in entries]

    rows = _run(data_dir, action)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table("#", "time", "type", "event id", "hash")
    for row in rows:
        table.add_row(
            str(row["position"]),
            row["occurred_at"],
            row["type"],
            row["event_id"],
            row["hash"][:16],
        )
    console.print(table)


@audit.command("verify")
@click.argument("slug")
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
@data_dir_option
@guarded
def audit_verify(slug: str, as_json: bool, data_dir: str | None) -> None:
    """Recompute a tenant's audit chain; exit 1 and name each altered, deleted or
    reordered entry if it was tampered with."""

    async def action(platform: Platform) -> AuditReport:
        return await platform.events.audit.verify(await _tenant_id(platform, slug))

    report = _run(data_dir, action)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "tenant_id": str(report.tenant_id),
                    "ok": report.ok,
                    "entries": report.entries,
                    "head": report.head_position,
                    "problems": [
                        {"position": p.position, "kind": p.kind, "message": p.message}
                        for p in report.problems
                    ],
                }
            )
        )
    elif report.ok:
        click.echo(f"{slug}: audit chain intact ({report.entries} entries)")
    else:
        for problem in report.problems:
            click.secho(f"{slug}: {problem.kind}: {problem.message}", fg="red")
    if not report.ok:
        sys.exit(1)
