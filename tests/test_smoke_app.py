"""The HR app answers as a tenant through the whole stack."""

from __future__ import annotations


async def test_tenant_can_create_and_read_a_department(client, make_tenant) -> None:
    """A department written as a tenant reads back as that tenant."""
    tenant = await make_tenant()
    headers = {"X-Tenant-ID": tenant.slug}
    created = await client.post("/api/departments", json={"name": "R&D"}, headers=headers)
    assert created.status_code == 201, created.text
    listed = await client.get("/api/departments", headers=headers)
    assert [d["name"] for d in listed.json()["items"]] == ["R&D"]
