"""``tenantry alerts``, ``tenantry slo`` and ``tenantry usage``: SLO alert rules,
per-tenant objectives and usage metering from the command line."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from tenantry.cli.runtime import guarded, open_platform, resolve_data_dir
from tenantry.observability.rules import (
    BurnWindow,
    RuleWindows,
    render_rules,
    to_yaml,
    write_rules,
)
from tenantry.observability.slo import (
    AVAILABILITY,
    LATENCY_P99,
    InvalidObjectiveError,
    validate_objective,
)

console = Console()
_DURATION = re.compile(r"^\d+(ms|s|m|h|d|w|y)$")


def _burn_windows(text: str, option: str) -> tuple[BurnWindow, ...]:
    """``"1h:5m:14.4,6h:30m:6"`` -> burn windows."""
    out = []
    for part in text.split(","):
        pieces = part.strip().split(":")
        if len(pieces) != 3 or not all(_DURATION.match(p) for p in pieces[:2]):
            raise click.BadParameter(f"expected LONG:SHORT:FACTOR, got {part!r}", param_hint=option)
        try:
            factor = float(pieces[2])
        except ValueError:
            raise click.BadParameter(f"{pieces[2]!r} is not a number", param_hint=option) from None
        out.append(BurnWindow(pieces[0], pieces[1], factor))
    return tuple(out)


@click.group()
def alerts() -> None:
    """Prometheus rules for per-tenant SLOs."""


@alerts.command("render")
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="write the rule file into DIR (default: print it)",
)
@click.option(
    "--page",
    default="1h:5m:14.4,6h:30m:6",
    show_default=True,
    help="paging burn windows LONG:SHORT:FACTOR,...",
)
@click.option("--ticket", default="1d:2h:3,3d:6h:1", show_default=True, help="ticket burn windows")
@click.option("--interval", default="30s", show_default=True, help="rule evaluation interval")
@click.option("--page-for", default="2m", show_default=True)
@click.option("--ticket-for", default="15m", show_default=True)
@click.option("--latency-window", default="5m", show_default=True)
@click.option("--latency-for", default="10m", show_default=True)
@guarded
def render(
    out: str | None,
    page: str,
    ticket: str,
    interval: str,
    page_for: str,
    ticket_for: str,
    latency_window: str,
    latency_for: str,
) -> None:
    """Write the recording rules and multi-window burn-rate alerts (thresholds are joined
    from the exported objective series, so the file does not change with tenants)."""
    for name, value in (
        ("--interval", interval),
        ("--page-for", page_for),
        ("--ticket-for", ticket_for),
        ("--latency-window", latency_window),
        ("--latency-for", latency_for),
    ):
        if not _DURATION.match(value):
            raise click.BadParameter(f"{value!r} is not a Prometheus duration", param_hint=name)
    windows = RuleWindows(
        page=_burn_windows(page, "--page"),
        ticket=_burn_windows(ticket, "--ticket"),
        interval=interval,
        page_for=page_for,
        ticket_for=ticket_for,
        latency_window=latency_window,
        latency_for=latency_for,
    )
    if out is None:
        click.echo(to_yaml(render_rules(windows)))
        return
    path = write_rules(Path(out), windows)
    click.echo(f"wrote {path}")


@click.group()
def slo() -> None:
    """Per-tenant SLO objectives (tier defaults, catalog overrides)."""


def _slo_view(platform: Any, tenant: Any) -> dict[str, Any]:
    catalog = platform.observability.slo
    return {
        "tenant": tenant.slug,
        "tier": tenant.tier.value,
        "objectives": catalog.for_tenant(tenant.id, tenant.tier.value).as_dict(),
        "tier_defaults": catalog.for_tier(tenant.tier.value).as_dict(),
        "overrides": catalog.overrides(tenant.id),
    }


def _print_slo(view: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(view))
        return
    table = Table(title=f"SLOs of {view['tenant']} ({view['tier']})")
    for column in ("slo", "objective", "tier default", "source"):
        table.add_column(column)
    for name, value in view["objectives"].items():
        source = "override" if name in view["overrides"] else "tier"
        table.add_row(name, f"{value:g}", f"{view['tier_defaults'][name]:g}", source)
    console.print(table)


@slo.command("show")
@click.argument("tenant")
@click.option("--data-dir", envvar="TENANTRY_DATA_DIR", default=None)
@click.option("--json", "as_json", is_flag=True)
@guarded
def slo_show(tenant: str, data_dir: str | None, as_json: bool) -> None:
    """A tenant's objectives: effective, tier default, and where each comes from."""

    async def run() -> dict[str, Any]:
        async with open_platform(resolve_data_dir(data_dir)) as platform:
            return _slo_view(platform, await platform.tenants.get(tenant))

    _print_slo(asyncio.run(run()), as_json)


@slo.command("set")
@click.argument("tenant")
@click.option("--availability", type=float, default=None, help="e.g. 0.9999")
@click.option("--latency-p99", type=float, default=None, help="seconds, e.g. 0.2")
@click.option(
    "--clear",
    "clear",
    multiple=True,
    type=click.Choice([AVAILABILITY, LATENCY_P99]),
    help="back to the tier default",
)
@click.option("--data-dir", envvar="TENANTRY_DATA_DIR", default=None)
@click.option("--json", "as_json", is_flag=True)
@guarded
def slo_set(
    tenant: str,
    availability: float | None,
    latency_p99: float | None,
    clear: tuple[str, ...],
    data_dir: str | None,
    as_json: bool,
) -> None:
    """Override a tenant's objectives (exported on the app's next scrape: no rule change)."""
    changes: dict[str, float | None] = {name: None for name in clear}
    if availability is not None:
        changes[AVAILABILITY] = availability
    if latency_p99 is not None:
        changes[LATENCY_P99] = latency_p99
    if not changes:
        raise click.UsageError("give --availability, --latency-p99 or --clear")
    try:  # refuse bad values before opening the platform
        for name, value in changes.items():
            if value is not None:
                validate_objective(name, value)
    except InvalidObjectiveError as exc:
        raise click.BadParameter(str(exc)) from None

    async def run() -> dict[str, Any]:
        async with open_platform(resolve_data_dir(data_dir)) as platform:
            found = await platform.tenants.get(tenant)
            async with platform.db.transaction() as conn:
                for name, value in changes.items():
                    await platform.observability.slo.set_override(
                        conn, found.id, name, value, actor="cli"
                    )
            return _slo_view(platform, found)

    try:
        view = asyncio.run(run())
    except InvalidObjectiveError as exc:
        raise click.BadParameter(str(exc)) from None
    _print_slo(view, as_json)


def _since(value: str | None) -> date | None:
    if not value:
        return None
    match = re.fullmatch(r"(\d+)d", value)
    if match:
        return datetime.now(UTC).date() - timedelta(days=int(match.group(1)))
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("use YYYY-MM-DD or Nd (days back)", param_hint="--since") from None


@click.command()
@click.option("--tenant", default=None, help="one tenant (slug or id)")
@click.option("--since", default=None, help="first UTC day counted: YYYY-MM-DD or Nd [today]")
@click.option("--data-dir", envvar="TENANTRY_DATA_DIR", default=None)
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
@guarded
def usage(tenant: str | None, since: str | None, data_dir: str | None, as_json: bool) -> None:
    """Requests, events, active users and storage per tenant."""
    first_day = _since(since)

    async def run() -> list[dict[str, Any]]:
        async with open_platform(resolve_data_dir(data_dir)) as platform:
            tenant_id = (await platform.tenants.get(tenant)).id if tenant else None
            return await platform.observability.usage.report(since=first_day, tenant_id=tenant_id)

    items = asyncio.run(run())
    if as_json:
        click.echo(
            json.dumps({"since": str(first_day or datetime.now(UTC).date()), "items": items})
        )
        return
    table = Table(title="usage")
    for column in ("tenant", "tier", "requests", "events", "active users", "storage"):
        table.add_column(column, justify="left" if column in ("tenant", "tier") else "right")
    for item in items:
        table.add_row(
            item["slug"],
            item["tier"],
            f"{item['requests']:,}",
            f"{item['events']:,}",
            f"{item['active_users']:,}",
            f"{item['storage_bytes'] / 1024:,.0f} KiB",
        )
    console.print(table)
