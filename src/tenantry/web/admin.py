"""The control-plane admin API (``/admin/api``), for platform operators only.

The same lifecycle coroutines as the CLI, behind a platform-admin bearer token.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from tenantry.catalog.models import Tier
from tenantry.web.dependencies import PlatformAdmin, PlatformDep
from tenantry.web.validation import PgText

router = APIRouter(prefix="/admin/api", tags=["admin"])


class TenantCreate(BaseModel):
    """Body of ``POST /admin/api/tenants``."""

    slug: str = Field(min_length=2, max_length=39)
    tier: Tier = Tier.FREE
    name: PgText | None = Field(default=None, max_length=200)
    ring: int = Field(default=0, ge=0, le=100)


class SuspendBody(BaseModel):
    """Body of ``POST /admin/api/tenants/{key}/suspend``."""

    reason: PgText = Field(default="", max_length=500)


@router.get("/tenants")
async def list_tenants(platform: PlatformDep, admin: PlatformAdmin) -> dict[str, Any]:
    """Every tenant (tombstones excluded)."""
    tenants = await platform.tenants.list()
    return {"items": [tenant.as_dict() for tenant in tenants], "count": len(tenants)}


@router.post("/tenants", status_code=201)
async def create_tenant(
    body: TenantCreate, platform: PlatformDep, admin: PlatformAdmin
) -> dict[str, Any]:
    """Provision a tenant."""
    tenant = await platform.tenants.create(
        body.slug, tier=body.tier, name=body.name, ring=body.ring, actor=admin.subject
    )
    return tenant.as_dict()


@router.get("/tenants/{key}")
async def show_tenant(key: str, platform: PlatformDep, admin: PlatformAdmin) -> dict[str, Any]:
    """One tenant by slug or id."""
    return (await platform.tenants.get(key)).as_dict()


@router.post("/tenants/{key}/suspend")
async def suspend_tenant(
    key: str, platform: PlatformDep, admin: PlatformAdmin, body: SuspendBody | None = None
) -> dict[str, Any]:
    """Suspend a tenant: its requests get 403 until resumed."""
    reason = body.reason if body else ""
    return (await platform.tenants.suspend(key, actor=admin.subject, reason=reason)).as_dict()


@router.post("/tenants/{key}/resume")
async def resume_tenant(key: str, platform: PlatformDep, admin: PlatformAdmin) -> dict[str, Any]:
    """Resume a suspended tenant."""
    return (await platform.tenants.resume(key, actor=admin.subject)).as_dict()
