"""The ``tenantry`` command."""

from __future__ import annotations

import click

from tenantry.cli.events import audit, consume, relay
from tenantry.cli.flags import flags
from tenantry.cli.migrate import migrate, migrations
from tenantry.cli.observability import alerts, slo, usage
from tenantry.cli.spares import spares
from tenantry.cli.tenants import tenants
from tenantry.cli.token import token
from tenantry.cli.up import up


@click.group()
@click.version_option(package_name="tenantry")
def cli() -> None:
    """tenantry: multi-tenant SaaS platform tools."""


cli.add_command(up)
cli.add_command(token)
cli.add_command(tenants)
cli.add_command(spares)
cli.add_command(flags)
cli.add_command(migrate)
cli.add_command(migrations)
cli.add_command(alerts)
cli.add_command(slo)
cli.add_command(usage)
cli.add_command(relay)
cli.add_command(consume)
cli.add_command(audit)


def main() -> None:
    """Console-script entry point."""
    cli()


__all__ = ["cli", "main"]
