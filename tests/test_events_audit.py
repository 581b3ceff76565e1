"""The audit trail: every published event in its tenant's hash chain; tampering with it
(an altered, deleted or reordered entry) is detected and located."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from click.testing import CliRunner

from tenantry import Platform, tenant_scope
from tenantry.catalog import Tenant
from tenantry.cli import cli
from tenantry.events import AuditReport
from tests.events_helpers import family

MakeTenant = Callable[..., Awaitable[Tenant]]


async def _tenant_with_events(platform: Platform, make_tenant: MakeTenant, n: int = 5) -> Tenant:
    tenant = await make_tenant("aud")
    kind = f"{family()}.happened"
    with tenant_scope(tenant.context()):
        for i in range(n):  # one transaction each: a chain across transactions
            async with platform.db.tenant_transaction():
                await platform.events.publish(kind, {"i": i, "text": "naïve ✓"})
    return tenant


async def _owner(platform: Platform, *statements: str) -> None:
    async with platform.db.transaction() as conn:
        for statement in statements:
            await conn.execute(statement)


def _kinds(report: AuditReport) -> list[tuple[int, str]]:
    return [(p.position, p.kind) for p in report.problems]


async def test_an_untouched_chain_verifies(platform: Platform, make_tenant: MakeTenant) -> None:
    """Five events in five transactions: five entries, chained, verified intact."""
    tenant = await _tenant_with_events(platform, make_tenant)
    report = await platform.events.audit.verify(tenant.id)
    assert report.ok
    assert report.entries == 5
    assert report.head_position == 5


async def test_an_altered_entry_is_detected(platform: Platform, make_tenant: MakeTenant) -> None:
    """Changing one entry's payload (as the owner could) is reported at that entry."""
    tenant = await _tenant_with_events(platform, make_tenant)
    await _owner(
        platform,
        "UPDATE tenantry.audit_log SET payload = jsonb_set(payload, '{i}', '99') "
        f"WHERE tenant_id = '{tenant.id}' AND position = 3",
    )
    report = await platform.events.audit.verify(tenant.id)
    assert _kinds(report) == [(3, "altered")]
    assert "entry 3" in report.problems[0].message


async def test_a_deleted_entry_is_detected(platform: Platform, make_tenant: MakeTenant) -> None:
    """Deleting an entry in the middle leaves a gap; deleting the last one leaves the head
    pointing past the end. Both are reported with their positions."""
    tenant = await _tenant_with_events(platform, make_tenant)
    await _owner(
        platform,
        f"DELETE FROM tenantry.audit_log WHERE tenant_id = '{tenant.id}' AND position = 2",
    )
    report = await platform.events.audit.verify(tenant.id)
    assert _kinds(report) == [(2, "missing")]
    await _owner(
        platform,
        f"DELETE FROM tenantry.audit_log WHERE tenant_id = '{tenant.id}' AND position = 5",
    )
    report = await platform.events.audit.verify(tenant.id)
    assert _kinds(report) == [(2, "missing"), (5, "truncated")]


async def test_swapped_entries_are_detected(platform: Platform, make_tenant: MakeTenant) -> None:
    """Swapping two entries' positions keeps each entry's own hash valid, but the links
    break: both are reported as reordered."""
    tenant = await _tenant_with_events(platform, make_tenant)
    where = f"tenant_id = '{tenant.id}'"
    await _owner(
        platform,
        f"UPDATE tenantry.audit_log SET position = -2 WHERE {where} AND position = 2",
        f"UPDATE tenantry.audit_log SET position = 2 WHERE {where} AND position = 4",
        f"UPDATE tenantry.audit_log SET position = 4 WHERE {where} AND position = -2",
    )
    report = await platform.events.audit.verify(tenant.id)
    assert _kinds(report) == [
        (2, "reordered"),
        (3, "reordered"),
        (4, "reordered"),
        (5, "reordered"),
    ]
    assert "entry 2 does not follow entry 1: it follows entry 3" in report.problems[0].message


async def test_audit_cli_shows_and_verifies(
    platform: Platform, make_tenant: MakeTenant, settings: object, database_url: str
) -> None:
    """``tenantry audit show`` lists the entries; ``audit verify`` exits 0 on an intact
    chain and 1, naming the entry, on a tampered one."""
    tenant = await _tenant_with_events(platform, make_tenant, n=3)
    env = {"DATABASE_URL": database_url}
    runner = CliRunner()
    shown = await asyncio.to_thread(
        runner.invoke, cli, ["audit", "show", tenant.slug, "--json"], env=env
    )
    assert shown.exit_code == 0, shown.output
    assert '"position": 3' in shown.output
    ok = await asyncio.to_thread(runner.invoke, cli, ["audit", "verify", tenant.slug], env=env)
    assert ok.exit_code == 0, ok.output
    assert "intact" in ok.output
    await _owner(
        platform,
        f"UPDATE tenantry.audit_log SET type = 'forged.event' WHERE tenant_id = '{tenant.id}' "
        "AND position = 2",
    )
    bad = await asyncio.to_thread(runner.invoke, cli, ["audit", "verify", tenant.slug], env=env)
    assert bad.exit_code == 1, bad.output
    assert "entry 2" in bad.output
    assert "altered" in bad.output
