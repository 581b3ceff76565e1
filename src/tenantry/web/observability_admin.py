"""Admin API for usage metering and per-tenant SLO objectives (platform admins only)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from tenantry.observability.slo import SLO_KINDS, InvalidObjectiveError
from tenantry.web.dependencies import PlatformAdmin, PlatformDep
from tenantry.web.errors import HTTPProblem

router = APIRouter(prefix="/admin/api", tags=["admin"])


class SLOBody(BaseModel):
    """Body of ``PUT /admin/api/tenants/{key}/slo``: a number sets an override, ``null``
    removes it (back to the tier default), a missing field leaves it as it is."""

    availability: float | None = Field(default=None, gt=0, lt=1)
    latency_p99_seconds: float | None = Field(default=None, gt=0)


@router.get("/usage")
async def usage(
    platform: PlatformDep,
    admin: PlatformAdmin,
    tenant: str | None = None,
    since: Annotated[
        date | None, Query(description="first UTC day counted (default: today)")
    ] = None,
) -> dict[str, Any]:
    """Requests, events, active users and storage per tenant since ``since``."""
    tenant_id = (await platform.tenants.get(tenant)).id if tenant else None
    recorder = platform.observability.usage
    await recorder.flush()  # this process's latest counts are part of the answer
    items = await recorder.report(since=since, tenant_id=tenant_id)
    return {"since": str(since or date.today()), "items": items, "count": len(items)}


async def _slo_view(platform: Any, key: str) -> dict[str, Any]:
    tenant = await platform.tenants.get(key)
    catalog = platform.observability.slo
    return {
        "tenant": tenant.slug,
        "tier": tenant.tier.value,
        "objectives": catalog.for_tenant(tenant.id, tenant.tier.value).as_dict(),
        "tier_defaults": catalog.for_tier(tenant.tier.value).as_dict(),
        "overrides": catalog.overrides(tenant.id),
    }


@router.get("/tenants/{key}/slo")
async def show_slo(key: str, platform: PlatformDep, admin: PlatformAdmin) -> dict[str, Any]:
    """A tenant's SLO objectives: effective values, tier defaults, overrides."""
    return await _slo_view(platform, key)


@router.put("/tenants/{key}/slo")
async def set_slo(
    key: str, body: SLOBody, platform: PlatformDep, admin: PlatformAdmin
) -> dict[str, Any]:
    """Set or remove a tenant's SLO overrides; exported on the next scrape."""
    tenant = await platform.tenants.get(key)
    given = body.model_dump(exclude_unset=True)
    try:
        async with platform.db.transaction() as conn:
            for slo in SLO_KINDS:
                if slo in given:
                    await platform.observability.slo.set_override(
                        conn, tenant.id, slo, given[slo], actor=admin.subject
                    )
    except InvalidObjectiveError as exc:
        raise HTTPProblem(422, "invalid_objective", str(exc)) from None
    return await _slo_view(platform, key)
