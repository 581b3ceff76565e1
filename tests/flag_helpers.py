"""Shared helpers of the feature-flag tests: deterministic tenants and an offline Unleash
client (bootstrapped from a dict, no server, no metrics) to compare against."""

from __future__ import annotations

import random
from typing import Any
from uuid import UUID

from bench._unleash import MemoryCache, offline_unleash
from tenantry import TenantContext

__all__ = ["MemoryCache", "offline_unleash", "tenant", "tenant_ids"]


def tenant(
    tier: str = "free", ring: int = 0, *, seed: int | None = None, **attributes: Any
) -> TenantContext:
    """A tenant context with a random (or seeded) uuid."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test ids, not secrets
    tenant_id = UUID(int=rng.getrandbits(128), version=4)
    return TenantContext(
        id=tenant_id,
        slug=f"t{tenant_id.hex[:8]}",
        tier=tier,
        schema=f"t_{tenant_id.hex[:8]}",
        ring=ring,
        attributes=attributes,
    )


def tenant_ids(count: int, seed: int = 20240601) -> list[UUID]:
    """``count`` distinct, reproducible uuid4 tenant ids."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test ids, not secrets
    return [UUID(int=rng.getrandbits(128), version=4) for _ in range(count)]
