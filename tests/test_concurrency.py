"""Many tenants at once: over a thousand interleaved reads and writes across two dozen
tenants, through one app and one small connection pool, and not one response, row or
pooled connection carries another tenant's context."""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from psycopg import sql

from tenantry import Platform
from tenantry.catalog import Tenant
from tenantry.context import current_tenant_or_none

TENANTS = 24
REQUESTS = 1200
PARALLEL = 50
SEEDED_EMPLOYEES = 3
PREFIX = "conc"
SLUG_RE = re.compile(PREFIX + r"[0-9a-f]{10}")


@dataclass
class Subject:
    """One tenant under load and what it has written."""

    tenant: Tenant
    marker: date  # the start date of every leave request this tenant files
    department_id: int = 0
    employee_ids: list[int] = field(default_factory=list)
    created_employees: int = 0
    created_leave: int = 0

    @property
    def slug(self) -> str:
        return self.tenant.slug

    def headers(self, app: FastAPI, how: str) -> dict[str, str]:
        if how == "header":
            return {"X-Tenant-ID": self.slug}
        if how == "host":
            return {"Host": f"{self.slug}.localhost:8000"}
        token = app.state.tenantry_tokens.issue(subject=f"u@{self.slug}", tenant=self.slug)
        return {"Authorization": f"Bearer {token}"}


def _only_own_slug(subject: Subject, response: httpx.Response) -> None:
    slugs = set(SLUG_RE.findall(response.text))
    assert slugs <= {subject.slug}, f"{subject.slug} got {slugs - {subject.slug}}"


async def _seed(client: httpx.AsyncClient, app: FastAPI, subject: Subject) -> None:
    headers = subject.headers(app, "header")
    dept = await client.post("/api/departments", json={"name": subject.slug}, headers=headers)
    assert dept.status_code == 201, dept.text
    subject.department_id = dept.json()["id"]
    for n in range(SEEDED_EMPLOYEES):
        body = {
            "first_name": subject.slug,
            "last_name": f"seed{n}",
            "email": f"seed{n}.{subject.slug}@{subject.slug}.example",
            "department_id": dept.json()["id"],
            "hired_on": "2024-05-01",
        }
        r = await client.post("/api/employees", json=body, headers=headers)
        assert r.status_code == 201, r.text
        subject.employee_ids.append(r.json()["id"])


async def _one_request(
    client: httpx.AsyncClient, app: FastAPI, subject: Subject, op: str, how: str, n: int
) -> None:
    """Send one request as ``subject`` and check it saw only ``subject``'s data."""
    headers = subject.headers(app, how)
    slug = subject.slug
    if op == "list-employees":
        r = await client.get("/api/employees", params={"limit": 200}, headers=headers)
        assert r.status_code == 200, r.text
        items = r.json()["items"]
        assert len(items) >= SEEDED_EMPLOYEES
        assert all(item["email"].endswith(f".{slug}@{slug}.example") for item in items), r.text
    elif op == "list-departments":
        r = await client.get("/api/departments", headers=headers)
        assert r.status_code == 200, r.text
        assert [d["name"] for d in r.json()["items"]] == [slug]
    elif op == "get-employee":
        emp_id = subject.employee_ids[n % SEEDED_EMPLOYEES]
        r = await client.get(f"/api/employees/{emp_id}", headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["first_name"] == slug
    elif op == "patch-employee":
        emp_id = subject.employee_ids[n % SEEDED_EMPLOYEES]
        title = f"{slug}-title-{n}"
        r = await client.patch(f"/api/employees/{emp_id}", json={"title": title}, headers=headers)
        assert r.status_code == 200, r.text
        assert (r.json()["first_name"], r.json()["title"]) == (slug, title)
    elif op == "create-employee":
        body = {
            "first_name": slug,
            "last_name": f"new{n}",
            "email": f"new{n}.{slug}@{slug}.example",
            "department_id": subject.department_id,
            "hired_on": "2025-01-01",
        }
        r = await client.post("/api/employees", json=body, headers=headers)
        assert r.status_code == 201, r.text
        assert r.json()["email"] == body["email"]
        subject.created_employees += 1
    elif op == "create-leave":
        body = {
            "employee_id": subject.employee_ids[n % SEEDED_EMPLOYEES],
            "starts_on": subject.marker.isoformat(),
            "ends_on": (subject.marker + timedelta(days=2)).isoformat(),
            "kind": "vacation",
        }
        r = await client.post("/api/leave-requests", json=body, headers=headers)
        assert r.status_code == 201, r.text
        subject.created_leave += 1
    else:
        assert op == "list-leave"
        r = await client.get("/api/leave-requests", params={"limit": 200}, headers=headers)
        assert r.status_code == 200, r.text
        assert {item["starts_on"] for item in r.json()["items"]} <= {subject.marker.isoformat()}
    _only_own_slug(subject, r)
    # The middleware's binding is scoped to the request: nothing stays behind in the task.
    assert current_tenant_or_none() is None


OPERATIONS = (
    ("list-employees", 25),
    ("list-departments", 10),
    ("get-employee", 15),
    ("patch-employee", 15),
    ("create-employee", 15),
    ("create-leave", 10),
    ("list-leave", 10),
)


@pytest.fixture
async def subjects(
    app: FastAPI, client: httpx.AsyncClient, make_tenant: Callable[..., Awaitable[Tenant]]
) -> list[Subject]:
    """Two dozen seeded tenants, each with its own leave-date marker."""
    tenants = [await make_tenant(PREFIX) for _ in range(TENANTS)]
    out = [Subject(t, date(2030, 1, 1) + timedelta(days=i)) for i, t in enumerate(tenants)]
    await asyncio.gather(*(_seed(client, app, s) for s in out))
    return out


async def test_interleaved_requests_see_only_their_own_tenant(
    app: FastAPI, client: httpx.AsyncClient, platform: Platform, subjects: list[Subject]
) -> None:
    """1,200 mixed requests over 24 tenants, 50 in flight, resolved by header, host or
    token at random: every response holds only its own tenant's data."""
    rng = random.Random(20_240_601)  # noqa: S311 - a reproducible interleaving, not security
    names, weights = zip(*OPERATIONS, strict=True)
    plan = [
        (
            rng.choice(subjects),
            rng.choices(names, weights)[0],
            rng.choice(("header", "host", "jwt")),
        )
        for _ in range(REQUESTS)
    ]
    assert len({s.slug for s, _, _ in plan}) == TENANTS
    gate = asyncio.Semaphore(PARALLEL)
    in_flight = 0
    peak = 0

    async def run(n: int, subject: Subject, op: str, how: str) -> None:
        nonlocal in_flight, peak
        async with gate:
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                await _one_request(client, app, subject, op, how, n)
            finally:
                in_flight -= 1

    await asyncio.gather(*(run(n, *step) for n, step in enumerate(plan)))
    assert peak > platform.settings.database.pool_max  # more requests than connections
    assert current_tenant_or_none() is None


async def test_rows_written_under_load_landed_in_their_own_schema(
    app: FastAPI, client: httpx.AsyncClient, platform: Platform, subjects: list[Subject]
) -> None:
    """After concurrent writes, each schema holds exactly its tenant's rows, counted and
    stamped with its tenant id (checked as the owner, bypassing the app)."""

    async def write(subject: Subject, n: int) -> None:
        op = "create-employee" if n % 2 else "create-leave"
        await _one_request(client, app, subject, op, ("header", "host", "jwt")[n % 3], n)

    gate = asyncio.Semaphore(PARALLEL)

    async def bounded(subject: Subject, n: int) -> None:
        async with gate:
            await write(subject, n)

    await asyncio.gather(*(bounded(s, n) for n in range(12) for s in subjects))
    async with platform.db.transaction() as conn:
        for s in subjects:
            schema = sql.Identifier(s.tenant.schema_name)
            cur = await conn.execute(
                sql.SQL(
                    "SELECT count(*), count(*) FILTER (WHERE tenant_id = %s AND email LIKE %s) "
                    "FROM {}.employees"
                ).format(schema),
                (s.tenant.id, f"%.{s.slug}@{s.slug}.example"),
            )
            total, own = await cur.fetchone() or (None, None)
            assert total == own == SEEDED_EMPLOYEES + s.created_employees == 9
            cur = await conn.execute(
                sql.SQL(
                    "SELECT count(*), count(*) FILTER (WHERE tenant_id = %s AND starts_on = %s) "
                    "FROM {}.leave_requests"
                ).format(schema),
                (s.tenant.id, s.marker),
            )
            total, own = await cur.fetchone() or (None, None)
            assert total == own == s.created_leave == 6


async def test_pooled_connections_keep_no_tenant_setting(
    platform: Platform, subjects: list[Subject], client: httpx.AsyncClient, app: FastAPI
) -> None:
    """Once requests are done, every pooled app connection is back to no tenant: no
    search_path and no app.tenant_id survive the transactions that set them."""
    await asyncio.gather(
        *(_one_request(client, app, s, "list-employees", "header", 0) for s in subjects * 2)
    )
    pool = platform.db.cell().app_pool
    size = pool.get_stats().get("pool_size", 1)
    seen: list[tuple[Any, ...]] = []
    all_seen = asyncio.Event()
    hold = asyncio.Event()

    async def inspect() -> None:
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT current_setting('search_path'), "
                "coalesce(current_setting('app.tenant_id', true), ''), pg_backend_pid()"
            )
            row = await cur.fetchone()
            assert row is not None
            seen.append(tuple(row))
            if len(seen) == size:
                all_seen.set()
            await hold.wait()  # keep it checked out so the others get distinct connections

    tasks = [asyncio.create_task(inspect()) for _ in range(size)]
    await asyncio.wait_for(all_seen.wait(), timeout=30)
    hold.set()
    await asyncio.gather(*tasks)
    assert len({pid for _, _, pid in seen}) == size > 1
    for search_path, tenant_id, _ in seen:
        assert tenant_id == ""
        assert not SLUG_RE.search(search_path), search_path
