"""Flags in the control plane: every change is a new version with an audit row (who,
when, before, after), writers see their change at once, and the application role may
read current flags but not change them or read the audit trail."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from tenantry import Platform
from tenantry.catalog import Tenant, TenantNotFoundError
from tenantry.flags import (
    ErrorCode,
    Flag,
    FlagExistsError,
    FlagNotFoundError,
    FlagType,
    FlagVersionConflictError,
    InvalidFlagError,
    Reason,
    Rule,
)
from tests.flag_helpers import tenant

MakeTenant = Callable[..., Awaitable[Tenant]]


def new_key(prefix: str = "flag") -> str:
    """A fresh flag key."""
    return f"{prefix}-{secrets.token_hex(4)}"


def _boolean(key: str, **kwargs: object) -> Flag:
    return Flag(key, FlagType.BOOLEAN, False, **kwargs)  # type: ignore[arg-type]


async def test_every_change_is_versioned_and_audited(platform: Platform) -> None:
    """create, set, rollout, kill and enable each add a version; history lists them newest
    first with actor, time, and the definition before and after."""
    key = new_key()
    started = datetime.now(UTC) - timedelta(seconds=5)
    created = await platform.flags.create(_boolean(key, description="v1"), actor="alice")
    assert (created.version, created.updated_by) == (1, "alice")
    await platform.flags.update(key, actor="bob", description="v2", default=True)
    await platform.flags.rollout(key, 10, actor="carol")
    await platform.flags.rollout(key, 40, actor="carol")
    await platform.flags.kill(key, actor="dave")
    final = await platform.flags.revive(key, actor="erin")
    assert final.version == 6

    history = await platform.flags.history(key)
    assert [(c.version, c.action, c.actor) for c in history] == [
        (6, "enable", "erin"),
        (5, "kill", "dave"),
        (4, "rollout", "carol"),
        (3, "rollout", "carol"),
        (2, "set", "bob"),
        (1, "create", "alice"),
    ]
    assert all(started <= c.at <= datetime.now(UTC) for c in history)
    create, set_ = history[-1], history[-2]
    assert create.before is None
    assert create.after["description"] == "v1"
    assert set_.before == create.after
    assert (set_.after["description"], set_.after["default"]) == ("v2", True)
    assert history[3].after["rules"] == [{"name": "rollout", "rollout": 10, "serve": True}]
    assert history[2].before == history[3].after
    assert history[2].after["rules"][0]["rollout"] == 40
    assert (history[1].before["enabled"], history[1].after["enabled"]) == (True, False)
    assert await platform.flags.get(key) == final


async def test_a_change_that_changes_nothing_is_not_a_version(platform: Platform) -> None:
    """Setting a field to its current value records nothing."""
    key = new_key()
    await platform.flags.create(_boolean(key, description="same"), actor="t")
    unchanged = await platform.flags.update(key, actor="t", description="same")
    assert unchanged.version == 1
    assert len(await platform.flags.history(key)) == 1


async def test_the_writing_process_sees_its_change_immediately(
    platform: Platform, make_tenant: MakeTenant
) -> None:
    """After each write returns, this process's evaluations already reflect it."""
    key = new_key()
    acme = (await make_tenant("fx", tier="enterprise")).context()
    await platform.flags.create(_boolean(key), actor="t")
    assert platform.flags.evaluate(key, acme).reason is Reason.DEFAULT
    await platform.flags.update(
        key, actor="t", rules=[Rule("enterprise", True, tiers=("enterprise",))]
    )
    assert platform.flags.is_enabled(key, tenant=acme) is True
    await platform.flags.kill(key, actor="t")
    assert platform.flags.evaluate(key, acme).reason is Reason.DISABLED
    await platform.flags.revive(key, actor="t")
    assert platform.flags.is_enabled(key, tenant=acme) is True


async def test_targets_are_stored_by_tenant_id_and_named_by_slug_or_id(
    platform: Platform, make_tenant: MakeTenant
) -> None:
    """A target given by slug is stored under the tenant's id and wins over rules; it can be
    removed again; an unknown tenant is refused."""
    key = new_key()
    tenant = await make_tenant("tg", tier="enterprise")
    await platform.flags.create(
        _boolean(key, rules=(Rule("enterprise", True, tiers=("enterprise",)),)), actor="t"
    )
    flag = await platform.flags.set_target(key, tenant.slug, False, actor="t")
    assert dict(flag.targets) == {tenant.id: False}
    resolution = platform.flags.evaluate(key, tenant.context())
    assert (resolution.value, resolution.reason) == (False, Reason.TARGET)
    flag = await platform.flags.remove_target(key, str(tenant.id), actor="t")
    assert dict(flag.targets) == {}
    assert platform.flags.is_enabled(key, tenant=tenant.context()) is True
    with pytest.raises(TenantNotFoundError):
        await platform.flags.set_target(key, "nosuchtenant", True, actor="t")
    with pytest.raises(InvalidFlagError, match="true or false"):
        await platform.flags.set_target(key, tenant.slug, "yes", actor="t")


async def test_rollout_creates_its_rule_last_and_then_adjusts_it(platform: Platform) -> None:
    """The first rollout appends a rule; later ones change its percentage in place."""
    key = new_key()
    await platform.flags.create(
        _boolean(key, rules=(Rule("enterprise", True, tiers=("enterprise",)),)), actor="t"
    )
    await platform.flags.rollout(key, 5, actor="t", tiers=["pro"])
    flag = await platform.flags.rollout(key, 50, actor="t")
    assert [r.as_dict() for r in flag.rules] == [
        {"name": "enterprise", "tiers": ["enterprise"], "serve": True},
        {"name": "rollout", "tiers": ["pro"], "rollout": 50, "serve": True},
    ]
    string_key = new_key()
    await platform.flags.create(Flag(string_key, FlagType.STRING, "old"), actor="t")
    with pytest.raises(InvalidFlagError, match="serves"):
        await platform.flags.rollout(string_key, 10, actor="t")
    flag = await platform.flags.rollout(string_key, 10, actor="t", serve="new")
    assert flag.rules[0].serve == "new"


async def test_conflicts_duplicates_and_unknown_flags(platform: Platform) -> None:
    """A stale expected version, a second create and an unknown key are distinct errors."""
    key = new_key()
    first = await platform.flags.create(_boolean(key), actor="t")
    with pytest.raises(FlagExistsError):
        await platform.flags.create(_boolean(key, description="again"), actor="t")
    assert await platform.flags.create(_boolean(key), actor="t", exist_ok=True) == first
    await platform.flags.update(key, actor="t", description="newer", expected_version=1)
    with pytest.raises(FlagVersionConflictError, match="version 2"):
        await platform.flags.update(key, actor="t", description="lost", expected_version=1)
    with pytest.raises(FlagNotFoundError):
        await platform.flags.get(new_key("absent"))
    with pytest.raises(FlagNotFoundError):
        await platform.flags.kill(new_key("absent"), actor="t")
    with pytest.raises(FlagNotFoundError):
        await platform.flags.history(new_key("absent"))
    with pytest.raises(InvalidFlagError):
        await platform.flags.update(key, actor="t", default="not a boolean")
    assert (await platform.flags.get(key)).description == "newer"


async def test_a_stored_definition_that_no_longer_parses_serves_defaults_until_replaced(
    platform: Platform, database_url: str
) -> None:
    """A row edited by hand into nonsense does not break the snapshot: that flag answers
    with the caller's default (PARSE_ERROR) and ``put`` repairs it, audited."""
    key, healthy = new_key(), new_key()
    await platform.flags.create(_boolean(key), actor="t")
    await platform.flags.create(Flag(healthy, FlagType.BOOLEAN, True), actor="t")
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE tenantry.flags SET version = version + 1, "
            'definition = \'{"type": "boolean", "default": 7}\' WHERE key = %s',
            (key,),
        )
    await platform.flags.refresh()
    assert platform.flags.is_enabled(healthy, tenant=tenant()) is True
    broken = platform.flags.resolve(key, FlagType.BOOLEAN, True, tenant())
    assert (broken.value, broken.error_code) == (True, ErrorCode.PARSE_ERROR)
    with pytest.raises(InvalidFlagError, match="replace it whole"):
        await platform.flags.kill(key, actor="t")
    repaired = await platform.flags.put(key, {"type": "boolean", "default": True}, actor="fixer")
    assert repaired.version == 3
    assert platform.flags.is_enabled(key, tenant=tenant()) is True
    latest = (await platform.flags.history(key))[0]
    assert (latest.action, latest.actor, latest.before) == (
        "put",
        "fixer",
        {"type": "boolean", "default": 7},
    )


async def test_the_application_role_reads_flags_but_cannot_write_or_read_history(
    platform: Platform,
) -> None:
    """Snapshots load as the app role; flag writes and the audit trail stay with the owner."""
    key = new_key()
    await platform.flags.create(_boolean(key), actor="t")
    app_url = platform.db.cell().app_url
    async with await psycopg.AsyncConnection.connect(app_url, autocommit=True) as conn:
        cur = await conn.execute("SELECT version FROM tenantry.flags WHERE key = %s", (key,))
        assert await cur.fetchone() == (1,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("UPDATE tenantry.flags SET version = 99 WHERE key = %s", (key,))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await conn.execute("SELECT count(*) FROM tenantry.flag_versions")
