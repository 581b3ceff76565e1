"""``tenantry spares``: inspect and fill the stock of spare tenant schemas."""

from __future__ import annotations

import asyncio
import json

import click
from rich.console import Console
from rich.progress import Progress

from tenantry.cli.runtime import guarded, open_platform, resolve_data_dir
from tenantry.provisioning import SparePool

console = Console()


@click.command()
@click.option("--fill", type=click.IntRange(min=0), default=None, help="build spares up to N")
@click.option("--data-dir", envvar="TENANTRY_DATA_DIR", default=None)
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
@guarded
def spares(fill: int | None, data_dir: str | None, as_json: bool) -> None:
    """Show (and with --fill N, build) spare tenant schemas that make creation instant."""

    async def run() -> dict[str, int]:
        async with open_platform(resolve_data_dir(data_dir)) as platform:
            pool = platform.spares or SparePool(platform.db, platform.compiled_schema, target=0)
            built = 0
            if fill is not None:
                with Progress(console=console, transient=True, disable=as_json) as progress:
                    task = progress.add_task("building spares", total=None)

                    def advance(done: int, total: int) -> None:
                        progress.update(task, completed=done, total=total)

                    built = await pool.fill(fill, on_built=advance)
            return {"spares": await pool.count(), "built": built}

    result = asyncio.run(run())
    if as_json:
        click.echo(json.dumps(result))
    else:
        console.print(f"{result['spares']} spare schema(s) in stock ({result['built']} built now)")
