"""The HR JSON API under ``/api``. Every handler runs as the request's tenant.

SQL is unqualified: ``search_path`` points at the tenant's schema and row-level
security admits only the tenant's rows, so nothing here mentions a tenant at all.

Department reads are cached per tenant (``tenantry.web.TenantCacheDep``): a hit costs no
database connection. Every write that changes what they show (a department, or an
employee, who counts in a headcount) invalidates the tenant's ``departments`` namespace
*after* its transaction commits, so a concurrent read cannot re-cache the old rows.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from psycopg import AsyncConnection
from psycopg import errors as pg_errors
from psycopg.rows import dict_row

from hr_example.events import (
    EMPLOYEE_HIRED,
    EMPLOYEE_LEFT,
    EMPLOYEE_TRANSFERRED,
    LEAVE_APPROVED,
    LEAVE_REQUESTED,
)
from hr_example.flags import APPROVAL_WORKFLOW_V2, SICK_LEAVE_AUTO_APPROVE_DAYS
from hr_example.models import (
    Activity,
    Department,
    DepartmentIn,
    Employee,
    EmployeeIn,
    EmployeePatch,
    LeaveRequest,
    LeaveRequestIn,
    Page,
)
from tenantry.web import (
    CurrentFlags,
    HTTPProblem,
    PlatformDep,
    TenantCacheDep,
    TenantConnection,
)

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
DEPARTMENTS_CACHE = "departments"
DEPARTMENTS_TTL = 60.0
_DEPARTMENT = (
    "SELECT d.id, d.name, d.created_at, "
    "(SELECT count(*) FROM employees e WHERE e.department_id = d.id) AS headcount "
    "FROM departments d"
)


@router.get("/departments")
async def list_departments(
    platform: PlatformDep, cache: TenantCacheDep, limit: Limit = 50, after: After = 0
) -> Page[Department]:
    """Departments with their headcount, by id (cached)."""

    async def load() -> Page[Department]:
        async with platform.db.tenant_transaction(readonly=True) as conn:
            rows, nxt = await _page(
                conn,
                f"{_DEPARTMENT} WHERE d.id > %s ORDER BY d.id LIMIT %s",
                (after,),
                limit,
            )
        return Page[Department](items=[Department(**row) for row in rows], next=nxt)

    cached = await cache.get_or_load(
        DEPARTMENTS_CACHE, f"list:{after}:{limit}", load, ttl=DEPARTMENTS_TTL
    )
    return Page[Department].model_validate(cached)


@router.post("/departments", status_code=201)
async def create_department(
    body: DepartmentIn, platform: PlatformDep, cache: TenantCacheDep
) -> Department:
    """Create a department (names are unique within a tenant)."""
    try:
        async with (
            platform.db.tenant_transaction() as conn,
            conn.cursor(row_factory=dict_row) as cur,
        ):
            await cur.execute(
                "INSERT INTO departments (name) VALUES (%s) RETURNING id, name, created_at",
                (body.name,),
            )
            row = await cur.fetchone()
    except pg_errors.UniqueViolation:
        raise HTTPProblem(409, "conflict", f"a department named {body.name!r} exists") from None
    assert row is not None
    await cache.invalidate_namespace(DEPARTMENTS_CACHE)
    return Department(**row)


@router.get("/departments/{department_id}")
async def get_department(
    department_id: int, platform: PlatformDep, cache: TenantCacheDep
) -> Department:
    """One department with its headcount (cached, misses included)."""

    async def load() -> Department | None:
        async with (
            platform.db.tenant_transaction(readonly=True) as conn,
            conn.cursor(row_factory=dict_row) as cur,
        ):
            await cur.execute(
                "SELECT d.id, d.name, d.created_at, "
                "(SELECT count(*) FROM employees e WHERE e.department_id = d.id) AS headcount, "
                "(SELECT coalesce(h.headcount, 0) FROM department_headcounts h "
                "WHERE h.department_id = d.id) AS event_headcount "
                "FROM departments d WHERE d.id = %s",
                (department_id,),
            )
            row = await cur.fetchone()
        return None if row is None else Department(**row)

    cached = await cache.get_or_load(DEPARTMENTS_CACHE, department_id, load, ttl=DEPARTMENTS_TTL)
    if cached is None:
        raise _not_found("department", department_id)
    return Department.model_validate(cached)


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


Written = Callable[[AsyncConnection[Any], dict[str, Any]], Awaitable[None]]


async def _write_employee(
    platform: PlatformDep,
    cache: TenantCacheDep,
    query: str,
    params: tuple[Any, ...],
    written: Written | None = None,
) -> dict[str, Any] | None:
    try:
        async with (
            platform.db.tenant_transaction() as conn,
            conn.cursor(row_factory=dict_row) as cur,
        ):
            await cur.execute(query, params)
            row = await cur.fetchone()
            if row is not None and written is not None:
                await written(conn, row)  # its events commit with the write
    except pg_errors.ForeignKeyViolation:
        raise _unprocessable("department_id", "no such department") from None
    except pg_errors.UniqueViolation:
        raise HTTPProblem(409, "conflict", "an employee with this email exists") from None
    if row is not None:  # committed: headcounts changed
        await cache.invalidate_namespace(DEPARTMENTS_CACHE)
    return row


@router.post("/employees", status_code=201)
async def create_employee(
    body: EmployeeIn, platform: PlatformDep, cache: TenantCacheDep
) -> Employee:
    """Hire someone into a department (publishes ``employee.hired``)."""

    async def hired(conn: AsyncConnection[Any], row: dict[str, Any]) -> None:
        await platform.events.publish(
            EMPLOYEE_HIRED,
            {
                "employee_id": row["id"],
                "department_id": row["department_id"],
                "title": row["title"],
            },
            key=f"employee:{row['id']}",
            conn=conn,
        )

    row = await _write_employee(
        platform,
        cache,
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
        hired,
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
    employee_id: int, body: EmployeePatch, platform: PlatformDep, cache: TenantCacheDep
) -> Employee:
    """Change some of an employee's fields (a new department publishes
    ``employee.transferred``)."""
    changes = body.model_dump(exclude_unset=True)
    if any(value is None for value in changes.values()):
        raise _unprocessable(next(k for k, v in changes.items() if v is None), "may not be null")
    if not changes:
        async with platform.db.tenant_transaction(readonly=True) as conn:
            return await get_employee(employee_id, conn)
    # Column names come from the model's own field names, never from the request.
    assignments = ", ".join(f"{column} = %s" for column in changes)
    values = tuple(str(v) if column == "email" else v for column, v in changes.items())
    returning = ", ".join(f"e.{column}" for column in _EMPLOYEE.split(", "))

    async def transferred(conn: AsyncConnection[Any], row: dict[str, Any]) -> None:
        if row["previous_department_id"] != row["department_id"]:
            await platform.events.publish(
                EMPLOYEE_TRANSFERRED,
                {
                    "employee_id": row["id"],
                    "from_department_id": row["previous_department_id"],
                    "to_department_id": row["department_id"],
                },
                key=f"employee:{row['id']}",
                conn=conn,
            )

    row = await _write_employee(
        platform,
        cache,
        "WITH before AS (SELECT id, department_id FROM employees WHERE id = %s FOR UPDATE) "
        f"UPDATE employees e SET {assignments}, updated_at = now() FROM before "
        f"WHERE e.id = before.id RETURNING {returning}, "
        "before.department_id AS previous_department_id",
        (employee_id, *values),
        transferred,
    )
    if row is None:
        raise _not_found("employee", employee_id)
    return Employee(**row)


@router.delete("/employees/{employee_id}", status_code=204)
async def delete_employee(
    employee_id: int, platform: PlatformDep, cache: TenantCacheDep
) -> Response:
    """Remove an employee and their leave requests (publishes ``employee.left``)."""
    async with platform.db.tenant_transaction() as conn:
        cur = await conn.execute(
            "DELETE FROM employees WHERE id = %s RETURNING department_id", (employee_id,)
        )
        gone = await cur.fetchone()
        if gone is not None:
            await platform.events.publish(
                EMPLOYEE_LEFT,
                {"employee_id": employee_id, "department_id": gone[0]},
                key=f"employee:{employee_id}",
            )
    if gone is None:
        raise _not_found("employee", employee_id)
    await cache.invalidate_namespace(DEPARTMENTS_CACHE)
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


def _workflow(flags: CurrentFlags, response: Response) -> bool:
    """Whether the tenant is on approval workflow v2 (reported in ``x-approval-workflow``)."""
    v2 = flags.is_enabled(APPROVAL_WORKFLOW_V2)
    response.headers["x-approval-workflow"] = "v2" if v2 else "v1"
    return v2


@router.post("/leave-requests", status_code=201)
async def create_leave_request(
    body: LeaveRequestIn,
    conn: TenantConnection,
    flags: CurrentFlags,
    response: Response,
    platform: PlatformDep,
) -> LeaveRequest:
    """Ask for leave. Under approval workflow v2, short sick leave is approved at once."""
    days = (body.ends_on - body.starts_on).days + 1
    auto = (
        _workflow(flags, response) and body.kind == "sick" and days <= SICK_LEAVE_AUTO_APPROVE_DAYS
    )
    try:
        async with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                "INSERT INTO leave_requests (employee_id, starts_on, ends_on, kind, status, "
                "decided_at) VALUES (%s, %s, %s, %s, %s, CASE WHEN %s THEN now() END) "
                f"RETURNING {_LEAVE}",
                (
                    body.employee_id,
                    body.starts_on,
                    body.ends_on,
                    body.kind,
                    "approved" if auto else "pending",
                    auto,
                ),
            )
            row = await cur.fetchone()
            assert row is not None
            await _leave_event(platform, conn, LEAVE_REQUESTED, row)
            if auto:
                await _leave_event(platform, conn, LEAVE_APPROVED, row)
    except pg_errors.ForeignKeyViolation:
        raise _unprocessable("employee_id", "no such employee") from None
    return LeaveRequest(**row)


async def _leave_event(
    platform: PlatformDep, conn: AsyncConnection[Any], kind: str, row: dict[str, Any]
) -> None:
    await platform.events.publish(
        kind,
        {
            "leave_request_id": row["id"],
            "employee_id": row["employee_id"],
            "kind": row["kind"],
            "starts_on": row["starts_on"].isoformat(),
            "ends_on": row["ends_on"].isoformat(),
        },
        key=f"employee:{row['employee_id']}",
        conn=conn,
    )


@router.post("/leave-requests/{request_id}/approve")
async def approve_leave_request(
    request_id: int,
    conn: TenantConnection,
    flags: CurrentFlags,
    response: Response,
    platform: PlatformDep,
) -> LeaveRequest:
    """Approve a pending leave request. Under approval workflow v2 a request that overlaps
    leave the employee already has approved is refused (409 ``leave_overlap``)."""
    v2 = _workflow(flags, response)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_LEAVE} FROM leave_requests WHERE id = %s FOR UPDATE", (request_id,)
        )
        row = await cur.fetchone()
        if row is None:
            raise _not_found("leave request", request_id)
        if row["status"] != "pending":
            raise HTTPProblem(409, "conflict", f"leave request {request_id} is {row['status']}")
        if v2:
            await cur.execute(
                "SELECT id FROM leave_requests WHERE employee_id = %s AND id <> %s "
                "AND status = 'approved' AND starts_on <= %s AND ends_on >= %s LIMIT 1",
                (row["employee_id"], request_id, row["ends_on"], row["starts_on"]),
            )
            clash = await cur.fetchone()
            if clash is not None:
                raise HTTPProblem(
                    409,
                    "leave_overlap",
                    f"leave request {request_id} overlaps approved leave request {clash['id']}",
                )
        await cur.execute(
            "UPDATE leave_requests SET status = 'approved', decided_at = now() WHERE id = %s "
            f"RETURNING {_LEAVE}",
            (request_id,),
        )
        row = await cur.fetchone()
    assert row is not None
    await _leave_event(platform, conn, LEAVE_APPROVED, row)
    return LeaveRequest(**row)


# -- activity (kept by the hr events consumer) ------------------------------------------
@router.get("/activity")
async def list_activity(
    conn: TenantConnection,
    limit: Limit = 50,
    after: After = 0,
    employee_id: Annotated[int | None, Query(gt=0)] = None,
) -> Page[Activity]:
    """The activity feed (hirings, transfers, departures, leave), oldest first; it is
    written by the ``hr`` events consumer, so it trails the writes by milliseconds."""
    query = "SELECT id, event_id, employee_id, kind, summary, occurred_at FROM activity "
    if employee_id is None:
        query += "WHERE id > %s ORDER BY id LIMIT %s"
        params: tuple[Any, ...] = (after,)
    else:
        query += "WHERE id > %s AND employee_id = %s ORDER BY id LIMIT %s"
        params = (after, employee_id)
    rows, nxt = await _page(conn, query, params, limit)
    return Page[Activity](items=[Activity(**row) for row in rows], next=nxt)
