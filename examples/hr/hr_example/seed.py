"""Sample data for the demo tenants that ``tenantry up`` creates."""

from __future__ import annotations

from datetime import date

from hr_example.flags import ensure_flags
from tenantry import Platform, TenantContext

_DEPARTMENTS = ("Engineering", "Sales", "People")
_PEOPLE = (
    ("Ada", "Lovelace", "Principal Engineer", 0),
    ("Grace", "Hopper", "Engineering Manager", 0),
    ("Linus", "Pauling", "Account Executive", 1),
    ("Mary", "Jackson", "HR Partner", 2),
)


async def seed_tenant(platform: Platform, ctx: TenantContext) -> None:
    """Give a fresh demo tenant departments, employees and a leave request (idempotent),
    and make sure the HR flags exist."""
    await ensure_flags(platform, actor="tenantry up")
    async with platform.db.tenant_transaction(ctx) as conn:
        cur = await conn.execute("SELECT count(*) FROM departments")
        row = await cur.fetchone()
        if row and row[0]:
            return
        ids: list[int] = []
        for name in _DEPARTMENTS:
            cur = await conn.execute(
                "INSERT INTO departments (name) VALUES (%s) RETURNING id", (name,)
            )
            got = await cur.fetchone()
            assert got is not None
            ids.append(got[0])
        for first, last, title, dept in _PEOPLE:
            email = f"{first.lower()}.{last.lower()}@{ctx.slug}.example"
            await conn.execute(
                "INSERT INTO employees (first_name, last_name, email, title, department_id, "
                "hired_on) VALUES (%s, %s, %s, %s, %s, %s)",
                (first, last, email, title, ids[dept], date(2024, 1, 15)),
            )
        await conn.execute(
            "INSERT INTO leave_requests (employee_id, starts_on, ends_on, kind) "
            "SELECT min(id), DATE '2026-12-22', DATE '2026-12-31', 'vacation' FROM employees"
        )
