"""The FastAPI dependency that hands a handler the flags of the request's tenant::

    @router.post("/leave-requests/{id}/approve")
    async def approve(id: int, conn: TenantConnection, flags: CurrentFlags) -> ...:
        if flags.is_enabled("approval-workflow-v2"):
            ...

Evaluations read the process's in-memory snapshot (no I/O) and never raise.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from tenantry.context import current_tenant
from tenantry.flags import TenantFlags
from tenantry.web.dependencies import platform_of


async def get_tenant_flags(request: Request) -> TenantFlags:
    """The platform's flag evaluator bound to the request's tenant."""
    return platform_of(request).flags.for_tenant(current_tenant())


CurrentFlags = Annotated[TenantFlags, Depends(get_tenant_flags)]
