"""``tenantry flags ...``: feature flags from the command line.

Every command calls the same :class:`~tenantry.flags.FeatureFlags` operation as the admin
API; changes are versioned and audited as ``cli:<user>``.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from tenantry.cli.runtime import guarded, open_platform, resolve_data_dir
from tenantry.flags import (
    BrokenFlag,
    FeatureFlags,
    Flag,
    FlagChange,
    FlagType,
    InvalidFlagError,
    Resolution,
    Rule,
    parse_value,
)

console = Console()
data_dir_option = click.option(
    "--data-dir", envvar="TENANTRY_DATA_DIR", default=None, help="folder of 'tenantry up' state"
)
json_option = click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
T = TypeVar("T")


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no login name in this environment
        return "cli"


def _run(data_dir: str | None, action: Callable[[FeatureFlags], Awaitable[T]]) -> T:
    async def run() -> T:
        async with open_platform(resolve_data_dir(data_dir)) as platform:
            return await action(platform.flags)

    return asyncio.run(run())


def _json_text(text: str, what: str) -> Any:
    """JSON given inline, as ``@file`` or as ``-`` (standard input)."""
    if text == "-":
        text = sys.stdin.read()
    elif text.startswith("@"):
        text = Path(text[1:]).read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidFlagError(f"{what} is not valid JSON: {exc}") from None


def _rules(text: str, flag_type: FlagType) -> list[Rule]:
    data = _json_text(text, "--rules")
    if not isinstance(data, list):
        raise InvalidFlagError("--rules must be a JSON list of rules")
    return [Rule.from_dict(rule, flag_type, i) for i, rule in enumerate(data)]


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _print_flag(flag: Flag, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(flag.as_dict()))
        return
    table = Table(show_header=False, box=None)
    for name, value in (
        ("key", flag.key),
        ("type", flag.type.value),
        ("version", str(flag.version)),
        ("enabled", "yes" if flag.enabled else "no (killed: everyone gets the default)"),
        ("default", _show(flag.default)),
        ("description", flag.description),
        ("updated", f"{flag.updated_at:%Y-%m-%d %H:%M:%S} by {flag.updated_by}"),
    ):
        table.add_row(f"[bold]{name}[/]", value)
    console.print(table)
    if flag.targets:
        targets = Table("target tenant", "serves", title="targets (before any rule)")
        for tenant, value in flag.targets.items():
            targets.add_row(str(tenant), _show(value))
        console.print(targets)
    if flag.rules:
        rules = Table("#", "rule", "tiers", "rings", "constraints", "rollout", "serves")
        for i, rule in enumerate(flag.rules, 1):
            rules.add_row(
                str(i),
                rule.name,
                ",".join(rule.tiers) or "any",
                ",".join(map(str, rule.rings)) or "any",
                "; ".join(
                    f"{c.attribute} {c.operator.value} {list(c.values)}" for c in rule.constraints
                )
                or "-",
                "-" if rule.rollout is None else f"{rule.rollout}% of {rule.group or flag.key}",
                _show(rule.serve),
            )
        console.print(rules)


@click.group()
def flags() -> None:
    """Per-tenant feature flags: define, target, roll out, kill, audit."""


@flags.command(name="list")
@data_dir_option
@json_option
@guarded
def list_(data_dir: str | None, as_json: bool) -> None:
    """List every flag."""
    found = _run(data_dir, lambda f: f.list())
    if as_json:
        click.echo(
            json.dumps(
                [
                    x.as_dict() if isinstance(x, Flag) else {"key": x.key, "error": x.message}
                    for x in found
                ]
            )
        )
        return
    table = Table("key", "type", "enabled", "default", "targets", "rules", "version", "updated by")
    for flag in found:
        if isinstance(flag, BrokenFlag):
            table.add_row(flag.key, "[red]invalid[/]", "", "", "", "", str(flag.version), "")
            continue
        table.add_row(
            flag.key,
            flag.type.value,
            "yes" if flag.enabled else "[red]killed[/]",
            _show(flag.default),
            str(len(flag.targets)),
            str(len(flag.rules)),
            str(flag.version),
            flag.updated_by or "",
        )
    console.print(table)
    console.print(f"{len(found)} flag(s)")


@flags.command()
@click.argument("key")
@data_dir_option
@json_option
@guarded
def show(key: str, data_dir: str | None, as_json: bool) -> None:
    """Show one flag: targets and rules in evaluation order."""
    _print_flag(_run(data_dir, lambda f: f.get(key)), as_json)


@flags.command()
@click.argument("key")
@click.option("--type", "flag_type", type=click.Choice([t.value for t in FlagType]), required=True)
@click.option("--default", "default", default=None, help="value when nothing matches [false]")
@click.option("--description", default="", help="what the flag is for")
@click.option("--disabled", is_flag=True, help="create it killed")
@click.option("--rules", default=None, help="JSON list of rules, @file or - for stdin")
@click.option("--exist-ok", is_flag=True, help="succeed if the flag already exists")
@data_dir_option
@json_option
@guarded
def create(
    key: str,
    flag_type: str,
    default: str | None,
    description: str,
    disabled: bool,
    rules: str | None,
    exist_ok: bool,
    data_dir: str | None,
    as_json: bool,
) -> None:
    """Create flag KEY (version 1)."""
    kind = FlagType(flag_type)
    if default is None and kind is not FlagType.BOOLEAN:
        raise click.UsageError(f"a {kind} flag needs --default")
    flag = Flag(
        key,
        kind,
        False if default is None else parse_value(kind, default),
        description=description,
        enabled=not disabled,
        rules=tuple(_rules(rules, kind)) if rules else (),
    )
    _print_flag(
        _run(data_dir, lambda f: f.create(flag, actor=_actor(), exist_ok=exist_ok)), as_json
    )


@flags.command(name="set")
@click.argument("key")
@click.option("--default", "default", default=None, help="new default value")
@click.option("--description", default=None)
@click.option("--enable/--disable", "enabled", default=None, help="kill switch off / on")
@click.option("--rules", default=None, help="replace the rules: JSON list, @file or -")
@click.option("--definition", default=None, help="replace everything: JSON object, @file or -")
@click.option("--expect-version", type=int, default=None, help="fail unless at this version")
@data_dir_option
@json_option
@guarded
def set_(
    key: str,
    default: str | None,
    description: str | None,
    enabled: bool | None,
    rules: str | None,
    definition: str | None,
    expect_version: int | None,
    data_dir: str | None,
    as_json: bool,
) -> None:
    """Change flag KEY's default, description, kill switch or rules."""

    async def change(f: FeatureFlags) -> Flag:
        if definition is not None:
            return await f.put(
                key,
                _json_text(definition, "--definition"),
                actor=_actor(),
                expected_version=expect_version,
            )
        current = await f.get(key)
        changes: dict[str, Any] = {}
        if default is not None:
            changes["default"] = parse_value(current.type, default)
        return await f.update(
            key,
            actor=_actor(),
            description=description,
            enabled=enabled,
            rules=None if rules is None else _rules(rules, current.type),
            expected_version=expect_version,
            **changes,
        )

    _print_flag(_run(data_dir, change), as_json)


@flags.command()
@click.argument("key")
@click.argument("tenant")
@click.option("--serve", default=None, help="value to serve this tenant")
@click.option("--allow", "mode", flag_value="allow", help="serve true (boolean flags)")
@click.option("--deny", "mode", flag_value="deny", help="serve false (boolean flags)")
@click.option("--remove", "mode", flag_value="remove", help="stop targeting the tenant")
@data_dir_option
@json_option
@guarded
def target(
    key: str,
    tenant: str,
    serve: str | None,
    mode: str | None,
    data_dir: str | None,
    as_json: bool,
) -> None:
    """Target TENANT (slug or id) explicitly: ahead of every rule."""

    async def change(f: FeatureFlags) -> Flag:
        if mode == "remove":
            return await f.remove_target(key, tenant, actor=_actor())
        current = await f.get(key)
        if serve is not None:
            value = parse_value(current.type, serve)
        elif current.type is FlagType.BOOLEAN:
            value = mode != "deny"
        else:
            raise InvalidFlagError(f"a {current.type} flag's target needs --serve VALUE")
        return await f.set_target(key, tenant, value, actor=_actor())

    _print_flag(_run(data_dir, change), as_json)


@flags.command()
@click.argument("key")
@click.argument("percentage", type=click.IntRange(0, 100))
@click.option("--rule", default="rollout", show_default=True, help="rule to set (new: last)")
@click.option("--serve", default=None, help="value the rule serves [true]")
@click.option("--tier", "tiers", multiple=True, help="limit the rule to tier(s)")
@click.option("--ring", "rings", type=click.IntRange(min=0), multiple=True, help="ring(s)")
@click.option("--group", default=None, help="stickiness group id [the flag key]")
@data_dir_option
@json_option
@guarded
def rollout(
    key: str,
    percentage: int,
    rule: str,
    serve: str | None,
    tiers: tuple[str, ...],
    rings: tuple[int, ...],
    group: str | None,
    data_dir: str | None,
    as_json: bool,
) -> None:
    """Serve PERCENTAGE % of the matching tenants (sticky; raising it never drops anyone)."""

    async def change(f: FeatureFlags) -> Flag:
        extra: dict[str, Any] = {}
        if serve is not None:
            extra["serve"] = parse_value((await f.get(key)).type, serve)
        return await f.rollout(
            key,
            percentage,
            actor=_actor(),
            rule=rule,
            tiers=tiers or None,
            rings=rings or None,
            group=group,
            **extra,
        )

    _print_flag(_run(data_dir, change), as_json)


@flags.command()
@click.argument("key")
@click.option("--undo", is_flag=True, help="turn the flag back on")
@data_dir_option
@json_option
@guarded
def kill(key: str, undo: bool, data_dir: str | None, as_json: bool) -> None:
    """Kill switch: every tenant gets the default, in every process, within milliseconds."""
    if undo:
        _print_flag(_run(data_dir, lambda f: f.revive(key, actor=_actor())), as_json)
    else:
        _print_flag(_run(data_dir, lambda f: f.kill(key, actor=_actor())), as_json)


def _summary(change: FlagChange) -> str:
    if change.before is None:
        return "created"
    before, after = change.before, change.after
    parts = [
        f"{name}: {_show(before.get(name))} -> {_show(after.get(name))}"
        for name in ("type", "default", "enabled", "description")
        if before.get(name) != after.get(name)
    ]
    parts += [
        f"{name} changed" for name in ("targets", "rules") if before.get(name) != after.get(name)
    ]
    return "; ".join(parts) or "no change"


@flags.command()
@click.argument("key")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@data_dir_option
@json_option
@guarded
def history(key: str, limit: int, data_dir: str | None, as_json: bool) -> None:
    """Every change of flag KEY, newest first: who, when, before and after."""
    changes = _run(data_dir, lambda f: f.history(key, limit=limit))
    if as_json:
        click.echo(json.dumps([change.as_dict() for change in changes]))
        return
    table = Table("version", "at", "actor", "action", "change")
    for change in changes:
        table.add_row(
            str(change.version),
            f"{change.at:%Y-%m-%d %H:%M:%S}",
            change.actor,
            change.action,
            _summary(change),
        )
    console.print(table)


@flags.command(name="eval")
@click.argument("key")
@click.argument("tenant")
@data_dir_option
@json_option
@guarded
def eval_(key: str, tenant: str, data_dir: str | None, as_json: bool) -> None:
    """What flag KEY serves TENANT (slug or id), and why."""

    async def evaluate(f: FeatureFlags) -> Resolution:
        await f.refresh()
        return await f.evaluate_for(key, tenant)

    result = _run(data_dir, evaluate)
    if as_json:
        click.echo(json.dumps(result.as_dict()))
        return
    why = result.reason.value + (f" ({result.rule})" if result.rule else "")
    if result.error_code:
        why += f": {result.error_code.value} {result.error_message}"
    console.print(f"{key} = [bold]{_show(result.value)}[/]  because {why}")
