"""Two tenants, every HR endpoint: tenant A's rows are never visible, modifiable or
deletable as tenant B, whichever way B is resolved (X-Tenant-ID slug or uuid, subdomain
host, bearer token).

Row ids are per-schema identities, so B usually has rows with the same ids as A's. The
assertions are therefore on content: none of A's markers (its slug, which every A name and
email contains, and its leave dates) ever appears in a response to B, and A's rows, read
back as A, are exactly as they were.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tenantry.catalog import Tenant

MODES = ("header", "uuid-header", "host", "token")
A_LEAVE_START = "2031-03-01"
B_LEAVE_START = "2032-04-01"


def tenant_headers(app: FastAPI, tenant: Tenant, mode: str) -> dict[str, str]:
    """Headers that make a request act as ``tenant``, resolved the way ``mode`` says."""
    if mode == "header":
        return {"X-Tenant-ID": tenant.slug}
    if mode == "uuid-header":
        return {"X-Tenant-ID": str(tenant.id)}
    if mode == "host":
        return {"Host": f"{tenant.slug}.localhost"}
    token = app.state.tenantry_tokens.issue(
        subject=f"admin@{tenant.slug}", tenant=tenant.slug, role="admin"
    )
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Seeded:
    """One tenant's seeded rows, as the API returned them at creation."""

    tenant: Tenant
    headers: dict[str, str]
    leave_start: str
    departments: dict[int, dict[str, Any]] = field(default_factory=dict)
    employees: dict[int, dict[str, Any]] = field(default_factory=dict)
    leave: dict[int, dict[str, Any]] = field(default_factory=dict)

    @property
    def markers(self) -> tuple[str, ...]:
        """Strings that appear in this tenant's data and nowhere else."""
        return (self.tenant.slug, self.leave_start)


async def _seed(
    client: httpx.AsyncClient, seeded: Seeded, departments: int, employees: int, leave: int
) -> Seeded:
    slug, start = seeded.tenant.slug, seeded.leave_start
    for n in range(departments):
        r = await client.post(
            "/api/departments", json={"name": f"dept-{n}-{slug}"}, headers=seeded.headers
        )
        assert r.status_code == 201, r.text
        seeded.departments[r.json()["id"]] = r.json()
    dept_ids = sorted(seeded.departments)
    for n in range(employees):
        body = {
            "first_name": f"first{n}",
            "last_name": f"last-{slug}",
            "email": f"person{n}@{slug}.example",
            "title": f"title-{slug}",
            "department_id": dept_ids[n % len(dept_ids)],
            "hired_on": "2024-01-15",
        }
        r = await client.post("/api/employees", json=body, headers=seeded.headers)
        assert r.status_code == 201, r.text
        seeded.employees[r.json()["id"]] = r.json()
    emp_ids = sorted(seeded.employees)
    for n in range(leave):
        body = {
            "employee_id": emp_ids[n % len(emp_ids)],
            "starts_on": start,
            "ends_on": start,
            "kind": "vacation",
        }
        r = await client.post("/api/leave-requests", json=body, headers=seeded.headers)
        assert r.status_code == 201, r.text
        seeded.leave[r.json()["id"]] = r.json()
    return seeded


@dataclass
class World:
    """Tenant A (more rows) and tenant B (fewer rows, some with A's ids)."""

    a: Seeded
    b: Seeded

    def shared(self, kind: str) -> set[int]:
        """A's ids that B also has (its own, different rows)."""
        ids = set(getattr(self.a, kind)) & set(getattr(self.b, kind))
        assert ids, f"the scenario needs {kind} ids that both tenants have"
        return ids

    def a_only(self, kind: str) -> set[int]:
        """A's ids that B does not have."""
        ids = set(getattr(self.a, kind)) - set(getattr(self.b, kind))
        assert ids, f"the scenario needs {kind} ids that only A has"
        return ids

    def assert_no_trace_of_a(self, response: httpx.Response) -> None:
        """Nothing of A's data is in a response given to B."""
        for marker in self.a.markers:
            assert marker not in response.text, (marker, response.text)


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    """How the tenants are resolved in a test (the same for A and B)."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def world(
    app: FastAPI,
    client: httpx.AsyncClient,
    make_tenant: Callable[..., Awaitable[Tenant]],
    mode: str,
) -> World:
    """A with 3 departments, 5 employees, 3 leave requests; B with 1, 2 and 1."""
    a, b = await make_tenant("leaka"), await make_tenant("leakb")
    return World(
        a=await _seed(client, Seeded(a, tenant_headers(app, a, mode), A_LEAVE_START), 3, 5, 3),
        b=await _seed(client, Seeded(b, tenant_headers(app, b, mode), B_LEAVE_START), 1, 2, 1),
    )


async def _assert_a_unchanged(client: httpx.AsyncClient, world: World) -> None:
    """Read every A row back as A: all present, all exactly as created."""
    a = world.a
    for path, rows in (
        ("/api/employees", a.employees),
        ("/api/leave-requests", a.leave),
    ):
        listed = await client.get(path, params={"limit": 200}, headers=a.headers)
        assert listed.status_code == 200, listed.text
        assert {item["id"]: item for item in listed.json()["items"]} == rows
    for emp_id, row in a.employees.items():
        got = await client.get(f"/api/employees/{emp_id}", headers=a.headers)
        assert got.status_code == 200, got.text
        assert got.json() == row
    departments = await client.get("/api/departments", headers=a.headers)
    assert [d["name"] for d in departments.json()["items"]] == [
        row["name"] for _, row in sorted(a.departments.items())
    ]


async def test_lists_as_b_show_none_of_a_rows(client: httpx.AsyncClient, world: World) -> None:
    """Every list endpoint, as B, returns exactly B's rows and nothing of A's."""
    b = world.b
    expectations = {
        "/api/departments": set(b.departments),
        "/api/employees": set(b.employees),
        "/api/leave-requests": set(b.leave),
    }
    for path, ids in expectations.items():
        for params in ({}, {"limit": 200}, {"after": 0, "limit": 1}):
            r = await client.get(path, params=params, headers=b.headers)
            assert r.status_code == 200, r.text
            world.assert_no_trace_of_a(r)
            got = {item["id"] for item in r.json()["items"]}
            assert got <= ids if params.get("limit") == 1 else got == ids
    for dept_id in world.a.departments:
        r = await client.get("/api/employees", params={"department_id": dept_id}, headers=b.headers)
        assert r.status_code == 200, r.text
        world.assert_no_trace_of_a(r)
        assert all(
            item["email"] in {e["email"] for e in b.employees.values()}
            for item in r.json()["items"]
        )


async def test_get_by_id_as_b_never_returns_a_rows(client: httpx.AsyncClient, world: World) -> None:
    """GET of A's department and employee ids as B: 404, or B's own row with that id."""
    b = world.b
    for kind, path in (("departments", "/api/departments"), ("employees", "/api/employees")):
        own = getattr(b, kind)
        for item_id in world.a_only(kind):
            r = await client.get(f"{path}/{item_id}", headers=b.headers)
            assert r.status_code == 404, r.text
            assert r.json()["error"]["code"] == "not_found"
            world.assert_no_trace_of_a(r)
        for item_id in world.shared(kind):
            r = await client.get(f"{path}/{item_id}", headers=b.headers)
            assert r.status_code == 200, r.text
            world.assert_no_trace_of_a(r)
            assert (
                r.json()["name" if kind == "departments" else "email"]
                == own[item_id]["name" if kind == "departments" else "email"]
            )


async def test_patch_as_b_never_changes_a_employees(
    client: httpx.AsyncClient, world: World
) -> None:
    """PATCH with A's employee ids as B changes no A row (B's same-id row is B's business)."""
    b = world.b
    for emp_id in sorted(world.a.employees):
        body = {"title": "pwned", "last_name": "pwned", "email": f"pwned{emp_id}@evil.example"}
        r = await client.patch(f"/api/employees/{emp_id}", json=body, headers=b.headers)
        world.assert_no_trace_of_a(r)
        if emp_id in b.employees:
            assert r.status_code == 200, r.text
            assert r.json()["first_name"] == b.employees[emp_id]["first_name"]
            assert r.json()["title"] == "pwned"
        else:
            assert r.status_code == 404, r.text
    await _assert_a_unchanged(client, world)


async def test_patch_as_b_cannot_move_its_employee_into_an_a_department(
    client: httpx.AsyncClient, world: World
) -> None:
    """A department id that only A has is no department for B (422, nothing changed)."""
    b = world.b
    emp_id = min(b.employees)
    for dept_id in world.a_only("departments"):
        r = await client.patch(
            f"/api/employees/{emp_id}", json={"department_id": dept_id}, headers=b.headers
        )
        assert r.status_code == 422, r.text
        assert r.json()["error"]["fields"][0]["loc"] == ["body", "department_id"]
    again = await client.get(f"/api/employees/{emp_id}", headers=b.headers)
    assert again.json() == b.employees[emp_id]
    await _assert_a_unchanged(client, world)


async def test_delete_as_b_never_deletes_a_employees(
    client: httpx.AsyncClient, world: World
) -> None:
    """DELETE with A's employee ids as B deletes no A row (nor, by cascade, A's leave)."""
    b = world.b
    for emp_id in sorted(world.a.employees):
        r = await client.delete(f"/api/employees/{emp_id}", headers=b.headers)
        world.assert_no_trace_of_a(r)
        assert r.status_code == (204 if emp_id in b.employees else 404), r.text
    left = await client.get("/api/employees", headers=b.headers)
    assert left.json()["items"] == []
    await _assert_a_unchanged(client, world)


async def test_approve_as_b_never_approves_a_leave(client: httpx.AsyncClient, world: World) -> None:
    """Approving A's leave ids as B leaves A's requests pending."""
    b = world.b
    for leave_id in sorted(world.a.leave):
        r = await client.post(f"/api/leave-requests/{leave_id}/approve", headers=b.headers)
        world.assert_no_trace_of_a(r)
        if leave_id in b.leave:
            assert r.status_code == 200, r.text
            assert r.json()["starts_on"] == B_LEAVE_START
            assert r.json()["status"] == "approved"
        else:
            assert r.status_code == 404, r.text
    assert all(row["status"] == "pending" for row in world.a.leave.values())
    await _assert_a_unchanged(client, world)


async def test_employee_with_a_department_id_is_refused_in_b_unless_b_has_it(
    client: httpx.AsyncClient, world: World
) -> None:
    """Hiring into A's department id as B: 422 when B lacks the id, B's own department
    when B has it; A's headcounts never move."""
    b = world.b
    for dept_id in sorted(world.a.departments):
        body = {
            "first_name": "New",
            "last_name": "Hire",
            "email": f"hire{dept_id}@b-side.example",
            "department_id": dept_id,
            "hired_on": "2025-02-01",
        }
        r = await client.post("/api/employees", json=body, headers=b.headers)
        world.assert_no_trace_of_a(r)
        if dept_id in b.departments:
            assert r.status_code == 201, r.text
            dept = await client.get(f"/api/departments/{dept_id}", headers=b.headers)
            assert dept.json()["name"] == b.departments[dept_id]["name"]
        else:
            assert r.status_code == 422, r.text
            assert r.json()["error"]["code"] == "validation_error"
            assert r.json()["error"]["fields"][0]["loc"] == ["body", "department_id"]
    assert world.shared("departments")
    a_depts = await client.get("/api/departments", headers=world.a.headers)
    headcounts = {d["id"]: d["headcount"] for d in a_depts.json()["items"]}
    expected = {dept_id: 0 for dept_id in world.a.departments}
    for row in world.a.employees.values():
        expected[row["department_id"]] += 1
    assert headcounts == expected
    await _assert_a_unchanged(client, world)


async def test_leave_for_an_a_employee_id_is_refused_in_b(
    client: httpx.AsyncClient, world: World
) -> None:
    """A leave request naming an employee id only A has is refused as B (422)."""
    b = world.b
    for emp_id in world.a_only("employees"):
        body = {
            "employee_id": emp_id,
            "starts_on": "2033-01-01",
            "ends_on": "2033-01-02",
            "kind": "sick",
        }
        r = await client.post("/api/leave-requests", json=body, headers=b.headers)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["fields"][0]["loc"] == ["body", "employee_id"]
    listed = await client.get("/api/leave-requests", headers=b.headers)
    assert {item["id"] for item in listed.json()["items"]} == set(b.leave)
    await _assert_a_unchanged(client, world)


async def test_uniqueness_is_per_tenant_and_reveals_nothing(
    client: httpx.AsyncClient, world: World
) -> None:
    """B may reuse A's department names and employee emails: no 409 betrays A's data."""
    b = world.b
    dept_id = min(b.departments)
    for name in (row["name"] for row in world.a.departments.values()):
        r = await client.post("/api/departments", json={"name": name}, headers=b.headers)
        assert r.status_code == 201, r.text
    for row in world.a.employees.values():
        body = {
            "first_name": "Same",
            "last_name": "Email",
            "email": row["email"],
            "department_id": dept_id,
            "hired_on": "2025-03-01",
        }
        r = await client.post("/api/employees", json=body, headers=b.headers)
        assert r.status_code == 201, r.text
        assert r.json()["id"] not in world.a.employees or r.json() != row
    await _assert_a_unchanged(client, world)
