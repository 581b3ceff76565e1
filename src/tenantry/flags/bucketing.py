"""Sticky percentage buckets, bit for bit the way Unleash normalises them.

Unleash puts an identifier in bucket ``murmur3_32("<group>:<identifier>", seed 0) % 100 + 1``
(1-100) and serves a rollout of ``p`` percent to buckets ``<= p``. tenantry does the same
with the tenant id as identifier and the flag key as default group, so:

* a tenant's bucket is the one Unleash computes for the same group id (a flag can move
  between tenantry and Unleash without reshuffling who has it);
* the bucket depends only on (group, tenant id): sticky across processes and restarts;
* raising the percentage only adds buckets: nobody who was in drops out (monotonic).
"""

from __future__ import annotations

from collections.abc import Callable
from uuid import UUID

import mmh3

from tenantry.context import TenantContext

BUCKETS = 100
CACHE_LIMIT = 65_536


def normalized_hash(identifier: str, group: str, normalizer: int = BUCKETS, seed: int = 0) -> int:
    """Unleash's normalisation: ``murmur3("<group>:<identifier>") % normalizer + 1``."""
    return mmh3.hash(f"{group}:{identifier}", seed=seed, signed=False) % normalizer + 1


def bucket(tenant_id: UUID, group: str) -> int:
    """The tenant's bucket (1-100) in ``group``."""
    return normalized_hash(str(tenant_id), group)


def bucket_cache(group: str) -> tuple[dict[int, int], Callable[[TenantContext], int]]:
    """A per-tenant memo of buckets in ``group``, and the function that fills it.

    Formatting a uuid costs more than the rest of an evaluation, so the compiled flag looks
    the bucket up by ``tenant.id.int`` first and calls the filler only on a miss (the memo
    is bounded: it is dropped whole when it fills up).
    """
    buckets: dict[int, int] = {}

    def fill(ctx: TenantContext) -> int:
        if len(buckets) >= CACHE_LIMIT:
            buckets.clear()
        found = buckets[ctx.id.int] = normalized_hash(str(ctx.id), group)
        return found

    return buckets, fill
