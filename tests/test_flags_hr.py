"""The HR example's ``approval-workflow-v2`` flag: on for enterprise tenants first, it
changes how leave is approved, per tenant, from one request to the next."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from hr_example.flags import APPROVAL_WORKFLOW_FLAG, APPROVAL_WORKFLOW_V2, ensure_flags
from tenantry import Platform
from tenantry.catalog import Tenant

MakeTenant = Callable[..., Awaitable[Tenant]]


async def _employee(client: httpx.AsyncClient, headers: dict[str, str]) -> int:
    dept = await client.post("/api/departments", json={"name": "Ops"}, headers=headers)
    assert dept.status_code == 201, dept.text
    body = {
        "first_name": "Lea",
        "last_name": "Ve",
        "email": "lea@example.com",
        "department_id": dept.json()["id"],
        "hired_on": "2024-06-01",
    }
    created = await client.post("/api/employees", json=body, headers=headers)
    assert created.status_code == 201, created.text
    return int(created.json()["id"])


async def _leave(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    employee: int,
    kind: str,
    start: str,
    end: str,
) -> httpx.Response:
    body = {"employee_id": employee, "starts_on": start, "ends_on": end, "kind": kind}
    return await client.post("/api/leave-requests", json=body, headers=headers)


async def _scenario(client: httpx.AsyncClient, tenant: Tenant) -> dict[str, Any]:
    """Short sick leave, then two overlapping vacations approved one after the other."""
    headers = {"x-tenant-id": tenant.slug}
    employee = await _employee(client, headers)
    sick = await _leave(client, headers, employee, "sick", "2031-02-02", "2031-02-03")
    assert sick.status_code == 201, sick.text
    first = await _leave(client, headers, employee, "vacation", "2031-07-01", "2031-07-10")
    second = await _leave(client, headers, employee, "vacation", "2031-07-08", "2031-07-12")
    approved = await client.post(
        f"/api/leave-requests/{first.json()['id']}/approve", headers=headers
    )
    assert approved.status_code == 200, approved.text
    overlapping = await client.post(
        f"/api/leave-requests/{second.json()['id']}/approve", headers=headers
    )
    return {
        "workflow": sick.headers["x-approval-workflow"],
        "sick": sick.json()["status"],
        "sick_decided": sick.json()["decided_at"] is not None,
        "overlap": overlapping.status_code,
        "overlap_code": overlapping.json().get("error", {}).get("code"),
    }


V1 = {
    "workflow": "v1",
    "sick": "pending",
    "sick_decided": False,
    "overlap": 200,
    "overlap_code": None,
}
V2 = {
    "workflow": "v2",
    "sick": "approved",
    "sick_decided": True,
    "overlap": 409,
    "overlap_code": "leave_overlap",
}


async def test_approval_workflow_v2_is_on_for_enterprise_tenants_first(
    client: httpx.AsyncClient, platform: Platform, make_tenant: MakeTenant
) -> None:
    """With the flag as the HR product ships it, enterprise tenants get v2 and the others
    v1; targeting a free tenant moves it to v2 and the kill switch moves everyone back."""
    await ensure_flags(platform)  # may already exist (tenantry up seeds it): then reset it
    await platform.flags.put(
        APPROVAL_WORKFLOW_V2, APPROVAL_WORKFLOW_FLAG.definition(), actor="test"
    )
    try:
        enterprise = await make_tenant("hre", tier="enterprise")
        pro = await make_tenant("hrp", tier="pro")
        early = await make_tenant("hrf", tier="free")
        assert await _scenario(client, enterprise) == V2
        assert await _scenario(client, pro) == V1

        await platform.flags.set_target(APPROVAL_WORKFLOW_V2, early.slug, True, actor="test")
        assert await _scenario(client, early) == V2

        await platform.flags.kill(APPROVAL_WORKFLOW_V2, actor="test")
        assert await _scenario(client, await make_tenant("hrk", tier="enterprise")) == V1
    finally:
        await platform.flags.kill(APPROVAL_WORKFLOW_V2, actor="test")
