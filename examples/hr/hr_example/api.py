"""The HR JSON API under ``/api``. Every handler runs as the request's tenant.

SQL is unqualified: ``search_path`` points at the tenant's schema and row-level
security admits only the tenant's rows, so nothing here mentions a tenant at all.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from psycopg import errors as pg_errors
from psycopg.rows import dict_row

from hr_example.models import (
    Department,
    DepartmentIn,
    Employee,
    EmployeeIn,
    EmployeePatch,
    LeaveRequest,
    LeaveRequestIn,
    Page,
)
from tenantry.web import HTTPProblem, TenantConnection

router = APIRouter(prefix="/api", tags=["hr"])

Limit = Annotated[int, Query(ge=1, le=200, description="page size")]
After = Annotated[int, Query(ge=0, description="return items with id greater than this")]


def _not_found(kind: str, item_id: int) -> HTTPProblem:
    return HTTPProblem(404, "not_found", f"{kind} {item_id} does not exist")


def _unprocessable(field: str, message: str) -> HTTPProblem:
    return HTTPProblem(
        422, "validation_error", message, fields=[{"loc": ["body", field], "message": message}]
    )


async def _page(
    conn: TenantConnection, query: str, params: tuple[Any, ...], limit: int
) -> tuple[list[dict[str, Any]], int | None]:
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, (*params, limit + 1))
        rows = await cur.fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1]["id"] if more else None)


# -- departments ------------------------------------------------------------------------
_DEPARTMENT = (
    "SELECT d.id, d.name, d.created_at, "
    "(SELECT count(*) FROM employees e WHERE e.department_id = d.id) AS headcount "
    "FROM departments d"
)


@router.get("/departments")
async def list_departments(
    conn: TenantConnection, limit: Limit = 50, after: After = 0
) -> Page[Department]:
    """Departments with their headcount, by id."""
    rows, nxt = await _page(
        conn,
        f"{_DEPARTMENT} WHERE d.id > %s ORDER BY d.id LIMIT %s",
        (after,),
        limit,
    )
    return Page[Department](items=[Department(**row) for row in rows], next=nxt)


@router.post("/departments", status_code=201)
async def create_department(body: DepartmentIn, conn: TenantConnection) -> Department:
    """Create a department (names are unique within a tenant)."""
    try:
        async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "INSERT INTO departments (name) VALUES (%s) RETURNING id, name, created_at",
                (body.name,),
            )
            row = await cur.fetchone()
    except pg_errors.UniqueViolation:
        raise HTTPProblem(409, "conflict", f"a department named {body.name!r} exists") from None
    assert row is not None
    return Department(**row)


@router.get("/departments/{department_id}")
async def get_department(department_id: int, conn: TenantConnection) -> Department:
    """One department with its headcount."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"{_DEPARTMENT} WHERE d.id = %s", (department_id,))
        row = await cur.fetchone()
    if row is None:
        raise _not_found("department", department_id)
    return Department(**row)


# -- employees --------------------------------------------------------------------------
_EMPLOYEE = (
    "id, first_name, last_name, email, title, department_id, hired_on, created_at, updated_at"
)


@router.get("/employees")
async def list_employees(
    conn: TenantConnection,
    limit: Limit = 50,
    after: After = 0,
    department_id: Annotated[int | None, Query(gt=0)] = None,
) -> Page[Employee]:
    """Employees by id, optionally of one department."""
    if department_id is None:
        query = f"SELECT {_EMPLOYEE} FROM employees WHERE id > %s ORDER BY id LIMIT %s"
        params: tuple[Any, ...] = (after,)
    else:
        query = (
            f"SELECT {_EMPLOYEE} FROM employees WHERE id > %s AND department_id = %s "
            "ORDER BY id LIMIT %s"
        )
        params = (after, department_id)
    rows, nxt = await _page(conn, query, params, limit)
    return Page[Employee](items=[Employee(**row) for row in rows], next=nxt)


async def _write_employee(
    conn: TenantConnection, query: str, params: tuple[Any, ...]
) -> dict[str, Any] | None:
    try:
        async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query, params)
            return await cur.fetchone()
    except pg_errors.ForeignKeyViolation:
        raise _unprocessable("department_id", "no such department") from None
    except pg_errors.UniqueViolation:
        raise HTTPProblem(409, "conflict", "an employee with this email exists") from None


@router.post("/employees", status_code=201)
async def create_employee(body: EmployeeIn, conn: TenantConnection) -> Employee:
    """Hire someone into a department."""
    row = await _write_employee(
        conn,
        "INSERT INTO employees (first_name, last_name, email, title, department_id, hired_on) "
        f"VALUES (%s, %s, %s, %s, %s, %s) RETURNING {_EMPLOYEE}",
        (
            body.first_name,
            body.last_name,
            str(body.email),
            body.title,
            body.department_id,
            body.hired_on,
        ),
    )
    assert row is not None
    return Employee(**row)


@router.get("/employees/{employee_id}")
async def get_employee(employee_id: int, conn: TenantConnection) -> Employee:
    """One employee."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(f"SELECT {_EMPLOYEE} FROM employees WHERE id = %s", (employee_id,))
        row = await cur.fetchone()
    if row is None:
        raise _not_found("employee", employee_id)
    return Employee(**row)


@router.patch("/employees/{employee_id}")
async def update_employee(
    employee_id: int, body: EmployeePatch, conn: TenantConnection
) -> Employee:
    """Change some of an employee's fields."""
    changes = body.model_dump(exclude_unset=True)
    if any(value is None for value in changes.values()):
        raise _unprocessable(next(k for k, v in changes.items() if v is None), "may not be null")
    if not changes:
        return await get_employee(employee_id, conn)
    # Column names come from the model's own field names, never from the request.
    assignments = ", ".join(f"{column} = %s" for column in changes)
    values = tuple(str(v) if column == "email" else v for column, v in changes.items())
    row = await _write_employee(
        conn,
        f"UPDATE employees SET {assignments}, updated_at = now() WHERE id = %s "
        f"RETURNING {_EMPLOYEE}",
        (*values, employee_id),
    )
    if row is None:
        raise _not_found("employee", employee_id)
    return Employee(**row)


@router.delete("/employees/{employee_id}", status_code=204)
async def delete_employee(employee_id: int, conn: TenantConnection) -> Response:
    """Remove an employee (and their leave requests)."""
    cur = await conn.execute("DELETE FROM employees WHERE id = %s", (employee_id,))
    if cur.rowcount == 0:
        raise _not_found("employee", employee_id)
    return Response(status_code=204)


# -- leave requests ---------------------------------------------------------------------
_LEAVE = "id, employee_id, starts_on, ends_on, kind, status, created_at, decided_at"


@router.get("/leave-requests")
async def list_leave_requests(
    conn: TenantConnection, limit: Limit = 50, after: After = 0
) -> Page[LeaveRequest]:
    """Leave requests by id."""
    rows, nxt = await _page(
        conn,
        f"SELECT {_LEAVE} FROM leave_requests WHERE id > %s ORDER BY id LIMIT %s",
        (after,),
        limit,
    )
    return Page[LeaveRequest](items=[LeaveRequest(**row) for row in rows], next=nxt)


@router.post("/leave-requests", status_code=201)
async def create_leave_request(body: LeaveRequestIn, conn: TenantConnection) -> LeaveRequest:
    """Ask for leave."""
    try:
        async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "INSERT INTO leave_requests (employee_id, starts_on, ends_on, kind) "
                f"VALUES (%s, %s, %s, %s) RETURNING {_LEAVE}",
                (body.employee_id, body.starts_on, body.ends_on, body.kind),
            )
            row = await cur.fetchone()
    except pg_errors.ForeignKeyViolation:
        raise _unprocessable("employee_id", "no such employee") from None
    assert row is not None
    return LeaveRequest(**row)


@router.post("/leave-requests/{request_id}/approve")
async def approve_leave_request(request_id: int, conn: TenantConnection) -> LeaveRequest:
    """Approve a pending leave request."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_LEAVE} FROM leave_requests WHERE id = %s FOR UPDATE", (request_id,)
        )
        row = await cur.fetchone()
        if row is None:
            raise _not_found("leave request", request_id)
        if row["status"] != "pending":
            raise HTTPProblem(409, "conflict", f"leave request {request_id} is {row['status']}")
        await cur.execute(
            "UPDATE leave_requests SET status = 'approved', decided_at = now() WHERE id = %s "
            f"RETURNING {_LEAVE}",
            (request_id,),
        )
        row = await cur.fetchone()
    assert row is not None
    return LeaveRequest(**row)
