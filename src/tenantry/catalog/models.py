"""The catalog's records: tenants, their tier, status and placement."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from tenantry.context import TenantContext


class Tier(enum.StrEnum):
    """Commercial tier; drives limits, rollout rings and SLOs."""

    FREE = "free"
    PRO = "pro"
    ENTERPRISE = "enterprise"


class TenantStatus(enum.StrEnum):
    """Lifecycle state. Only ``active`` tenants are served."""

    PROVISIONING = "provisioning"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    OFFBOARDING = "offboarding"
    DELETED = "deleted"


class Isolation(enum.StrEnum):
    """Where a tenant's rows live (see DESIGN.md, "Isolation tiers")."""

    SCHEMA = "schema"
    POOL = "pool"
    SILO = "silo"


@dataclass(frozen=True, slots=True)
class Tenant:
    """One row of the tenant catalog."""

    id: UUID
    slug: str
    name: str
    tier: Tier
    status: TenantStatus
    schema_name: str
    ring: int = 0
    isolation: Isolation = Isolation.SCHEMA
    cell: str = "default"
    schema_version: str | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    domains: tuple[str, ...] = ()
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def context(self) -> TenantContext:
        """The :class:`TenantContext` that binds work to this tenant."""
        return TenantContext(
            id=self.id,
            slug=self.slug,
            tier=self.tier.value,
            schema=self.schema_name,
            ring=self.ring,
            cell=self.cell,
            isolation=self.isolation.value,
            attributes=self.attributes,
        )

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view, as the CLI's ``--json`` and the admin API print it."""
        return {
            "id": str(self.id),
            "slug": self.slug,
            "name": self.name,
            "tier": self.tier.value,
            "status": self.status.value,
            "ring": self.ring,
            "isolation": self.isolation.value,
            "cell": self.cell,
            "schema": self.schema_name,
            "schema_version": self.schema_version,
            "domains": list(self.domains),
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }
