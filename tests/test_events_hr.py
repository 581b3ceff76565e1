"""The HR example on events: hiring, transfers, departures and leave decisions publish
events; its ``hr`` consumer (in the app process, reading the outbox) keeps department
headcounts and the activity feed."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from hr_example import create_app
from tenantry import Platform, Settings
from tests.cache_helpers import tenant_headers
from tests.conftest import unique_slug
from tests.events_helpers import wait_for


@pytest.fixture
async def hr_app(
    settings: Settings, make_database: Callable[[str], str]
) -> AsyncIterator[tuple[Platform, httpx.AsyncClient]]:
    """The HR app on a database of its own: its in-process ``hr`` consumer is the only
    member of the group there (apps of other tests, with other caches, are not)."""
    app = create_app(settings.with_database_url(make_database("tenantry_hrev")))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield app.state.tenantry, http


async def test_hr_consumer_keeps_headcounts_and_the_activity_feed(
    hr_app: tuple[Platform, httpx.AsyncClient],
) -> None:
    """Hire two, move one, let one go, request and approve leave: the department's
    event-kept headcount follows, the activity feed lists each step, the audit trail
    holds every event, and another tenant sees none of it."""
    platform, client = hr_app
    tenant = await platform.tenants.create(unique_slug("hrev"))
    other = await platform.tenants.create(unique_slug("hrev"))
    headers = tenant_headers(tenant)
    eng = (await client.post("/api/departments", json={"name": "Eng"}, headers=headers)).json()
    ops = (await client.post("/api/departments", json={"name": "Ops"}, headers=headers)).json()

    async def hire(name: str) -> dict[str, Any]:
        body = {
            "first_name": name,
            "last_name": "Doe",
            "email": f"{name.lower()}@{tenant.slug}.example",
            "department_id": eng["id"],
            "hired_on": "2025-03-01",
            "title": "Engineer",
        }
        response = await client.post("/api/employees", json=body, headers=headers)
        assert response.status_code == 201, response.text
        return response.json()  # type: ignore[no-any-return]

    ada, bob = await hire("Ada"), await hire("Bob")

    async def headcounts(expected: dict[int, int]) -> bool:
        got = {}
        for dept in expected:
            response = await client.get(f"/api/departments/{dept}", headers=headers)
            got[dept] = response.json()["event_headcount"]
        return got == expected

    await wait_for(lambda: headcounts({eng["id"]: 2}), seconds=15, what="headcount 2")
    moved = await client.patch(
        f"/api/employees/{bob['id']}", json={"department_id": ops["id"]}, headers=headers
    )
    assert moved.status_code == 200, moved.text
    await wait_for(lambda: headcounts({eng["id"]: 1, ops["id"]: 1}), seconds=15, what="moved")
    assert (await client.delete(f"/api/employees/{ada['id']}", headers=headers)).status_code == 204
    await wait_for(lambda: headcounts({eng["id"]: 0, ops["id"]: 1}), seconds=15, what="left")
    leave = await client.post(
        "/api/leave-requests",
        json={
            "employee_id": bob["id"],
            "starts_on": "2025-07-01",
            "ends_on": "2025-07-05",
            "kind": "vacation",
        },
        headers=headers,
    )
    assert leave.status_code == 201, leave.text
    approved = await client.post(
        f"/api/leave-requests/{leave.json()['id']}/approve", headers=headers
    )
    assert approved.status_code == 200, approved.text

    async def feed_complete() -> bool:
        items = (await client.get("/api/activity", headers=headers)).json()["items"]
        return len(items) >= 6

    await wait_for(feed_complete, seconds=15, what="6 activity entries")
    items = (await client.get("/api/activity", headers=headers)).json()["items"]
    assert [i["kind"] for i in items] == [
        "employee.hired",
        "employee.hired",
        "employee.transferred",
        "employee.left",
        "leave.requested",
        "leave.approved",
    ]
    assert items[2]["summary"] == f"moved from department {eng['id']} to {ops['id']}"
    bob_feed = (await client.get(f"/api/activity?employee_id={bob['id']}", headers=headers)).json()[
        "items"
    ]
    assert [i["kind"] for i in bob_feed] == [
        "employee.hired",
        "employee.transferred",
        "leave.requested",
        "leave.approved",
    ]
    trail = await platform.events.audit.entries(tenant.id)
    assert [e.type for e in trail] == [
        "employee.hired",
        "employee.hired",
        "employee.transferred",
        "employee.left",
        "leave.requested",
        "leave.approved",
    ]
    assert (await platform.events.audit.verify(tenant.id)).ok
    theirs = await client.get("/api/activity", headers=tenant_headers(other))
    assert theirs.json()["items"] == []
