"""``tenantry flags list|show|create|set|target|rollout|kill|history|eval`` against a
database of its own: ``--json`` output, the audit trail under ``cli:<user>``, and the
documented exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from tenantry.cli import cli

TENANTRY = Path(sys.executable).with_name("tenantry")
EXIT_USAGE, EXIT_EXISTS, EXIT_NOT_FOUND, EXIT_STATE = 2, 3, 4, 5

Run = Callable[..., Result]


@pytest.fixture(scope="module")
def cli_env(
    make_database: Callable[[str], str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """A fresh control database and no ``tenantry up`` state."""
    folder = tmp_path_factory.mktemp("flags-cli")
    return {
        "DATABASE_URL": make_database("tenantry_flags_cli"),
        "TENANTRY_DATA_DIR": str(folder / "no-up-state"),
        "COLUMNS": "200",
    }


@pytest.fixture(scope="module")
def run(cli_env: dict[str, str]) -> Run:
    """Invoke the CLI in-process (in a worker thread: commands run their own event loop)."""
    runner = CliRunner()

    def invoke(*args: str, stdin: str | None = None) -> Result:
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(runner.invoke, cli, list(args), input=stdin, env=cli_env).result()

    return invoke


def ok_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_flag_from_creation_to_kill_switch_on_the_command_line(run: Run) -> None:
    """Create, roll out, target, replace rules, kill and evaluate; history shows each step
    with its actor, newest first."""
    tenant = ok_json(run("tenants", "create", "clienterp", "--tier", "enterprise", "--json"))
    created = ok_json(
        run("flags", "create", "cli-flag", "--type", "boolean", "--description", "demo", "--json")
    )
    assert (created["version"], created["default"], created["enabled"]) == (1, False, True)
    assert created["updated_by"].startswith("cli")

    rolled = ok_json(run("flags", "rollout", "cli-flag", "30", "--tier", "pro", "--json"))
    assert rolled["rules"] == [{"name": "rollout", "tiers": ["pro"], "rollout": 30, "serve": True}]
    targeted = ok_json(run("flags", "target", "cli-flag", "clienterp", "--allow", "--json"))
    assert targeted["targets"] == {tenant["id"]: True}
    rules = '[{"name": "enterprise-first", "tiers": ["enterprise"]}]'
    replaced = ok_json(run("flags", "set", "cli-flag", "--rules", "-", "--json", stdin=rules))
    assert replaced["rules"] == [
        {"name": "enterprise-first", "tiers": ["enterprise"], "serve": True}
    ]
    untargeted = ok_json(run("flags", "target", "cli-flag", "clienterp", "--remove", "--json"))
    assert untargeted["targets"] == {}

    live = ok_json(run("flags", "eval", "cli-flag", "clienterp", "--json"))
    assert (live["value"], live["reason"], live["rule"]) == (True, "RULE_MATCH", "enterprise-first")
    killed = ok_json(run("flags", "kill", "cli-flag", "--json"))
    assert killed["enabled"] is False
    dead = ok_json(run("flags", "eval", "cli-flag", "clienterp", "--json"))
    assert (dead["value"], dead["reason"]) == (False, "DISABLED")

    history = ok_json(run("flags", "history", "cli-flag", "--json"))
    assert [h["action"] for h in history] == [
        "kill",
        "untarget",
        "set",
        "target",
        "rollout",
        "create",
    ]
    assert {h["actor"] for h in history} == {created["updated_by"]}
    assert history[0]["before"]["enabled"] is True
    assert history[0]["after"]["enabled"] is False
    table = run("flags", "history", "cli-flag")
    assert table.exit_code == 0, table.output
    assert "enabled: true -> false" in table.output

    listed = ok_json(run("flags", "list", "--json"))
    assert [(f["key"], f["version"]) for f in listed] == [("cli-flag", 6)]
    shown = run("flags", "show", "cli-flag")
    assert shown.exit_code == 0, shown.output
    assert "enterprise-first" in shown.output
    assert "killed" in shown.output


def test_typed_values_and_documented_exit_codes(run: Run) -> None:
    """Values parse by flag type; unknown flag 4, duplicate 3, bad value 2, stale version 5."""
    created = ok_json(
        run(
            "flags",
            "create",
            "cli-limits",
            "--type",
            "json",
            "--default",
            '{"uploads": 5}',
            "--json",
        )
    )
    assert created["default"] == {"uploads": 5}
    changed = ok_json(
        run(
            "flags",
            "set",
            "cli-limits",
            "--default",
            '{"uploads": 9}',
            "--expect-version",
            "1",
            "--json",
        )
    )
    assert changed["version"] == 2
    assert run("flags", "show", "no-such-flag").exit_code == EXIT_NOT_FOUND
    assert run("flags", "create", "cli-limits", "--type", "json", "--default", "[]").exit_code == (
        EXIT_EXISTS
    )
    assert run("flags", "set", "cli-limits", "--default", "{oops").exit_code == EXIT_USAGE
    assert run("flags", "create", "Bad Key", "--type", "boolean").exit_code == EXIT_USAGE
    stale = run("flags", "set", "cli-limits", "--description", "x", "--expect-version", "1")
    assert stale.exit_code == EXIT_STATE
    assert run("flags", "target", "cli-limits", "nosuchtenant", "--serve", "[]").exit_code == (
        EXIT_NOT_FOUND
    )
    assert run("flags", "target", "cli-limits", "nosuchtenant").exit_code == EXIT_USAGE


def test_the_installed_command_has_the_flags_group(cli_env: dict[str, str]) -> None:
    """The console script itself (not only the click object) runs ``tenantry flags``."""
    done = subprocess.run(
        [str(TENANTRY), "flags", "list", "--json"],
        env={**os.environ, **cli_env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert isinstance(json.loads(done.stdout), list)
