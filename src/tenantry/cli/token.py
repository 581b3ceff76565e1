"""``tenantry token``: print a signed bearer token for local use."""

from __future__ import annotations

import click

from tenantry.catalog.identifiers import parse_tenant_key
from tenantry.cli.runtime import guarded, load_environment, resolve_data_dir
from tenantry.settings import Settings
from tenantry.web.auth import TokenService


@click.command()
@click.argument("slug", required=False)
@click.option("--role", type=click.Choice(["admin", "member"]), default="member", show_default=True)
@click.option("--platform-admin", is_flag=True, help="a token for the control-plane admin API")
@click.option("--subject", default=None, help="the token's sub claim")
@click.option("--ttl", type=click.IntRange(min=60), default=None, help="lifetime in seconds")
@click.option("--data-dir", envvar="TENANTRY_DATA_DIR", default=None)
@guarded
def token(
    slug: str | None,
    role: str,
    platform_admin: bool,
    subject: str | None,
    ttl: int | None,
    data_dir: str | None,
) -> None:
    """Print a JWT for tenant SLUG, or with --platform-admin one for the admin API."""
    if platform_admin == (slug is not None):
        raise click.UsageError("give either a tenant SLUG or --platform-admin")
    if slug is not None:
        parse_tenant_key(slug)
    settings = Settings.from_env(load_environment(resolve_data_dir(data_dir)))
    tokens = TokenService(settings.auth)
    if platform_admin:
        click.echo(
            tokens.issue(subject=subject or "platform-admin", platform_admin=True, ttl_seconds=ttl)
        )
    else:
        click.echo(
            tokens.issue(
                subject=subject or f"{role}@{slug}", tenant=slug, role=role, ttl_seconds=ttl
            )
        )
