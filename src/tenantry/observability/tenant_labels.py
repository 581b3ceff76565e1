"""The bounded ``tenant`` label: per-tenant metrics that stay cheap at 10,000 tenants.

A Prometheus series exists for every distinct label set, so a raw tenant label multiplies
every metric by the fleet size. :class:`TenantLabeler` hands out at most ``cap`` tenant
labels per process:

* tenants on the allow-list get their own label at once;
* the others are counted, and a tenant gets its own label once it has served
  ``promote_after`` requests while slots remain, so the busiest tenants get labels first
  (an approximate top-N by traffic);
* everything else is reported as ``_other`` (with its real ``tier`` label, so tier SLO
  defaults still apply to it).

A label, once given, is kept for the life of the process: a series that flipped between a
tenant's name and ``_other`` would break ``rate()``. The counts of not-yet-labelled tenants
are kept for up to ``max_tracked`` tenants (100,000 by default, a few MB) and halved
when more are tracked (lossy counting), so memory stays bounded too.
"""

from __future__ import annotations

from collections.abc import Iterable
from uuid import UUID

OTHER = "_other"


class TenantLabeler:
    """Maps tenants to the ``tenant`` label value of their metrics (see the module doc)."""

    def __init__(
        self,
        *,
        cap: int = 200,
        allow: Iterable[str] = (),
        promote_after: int = 20,
        max_tracked: int = 100_000,
    ) -> None:
        self.cap = cap
        self.max_tracked = max(max_tracked, 16 * cap)
        self.allow = frozenset(allow)
        self.promote_after = max(1, promote_after)
        self._labels: dict[UUID, str] = {}
        self._pending: dict[UUID, int] = {}
        self._tiers: dict[UUID, str] = {}

    def label(self, tenant_id: UUID, slug: str, tier: str) -> str:
        """The label for one request of this tenant (counts it towards promotion)."""
        found = self._labels.get(tenant_id)
        if found is not None:
            return found
        if len(self._labels) >= self.cap:
            return OTHER
        if slug in self.allow:
            return self._assign(tenant_id, slug, tier)
        seen = self._pending.get(tenant_id, 0) + 1
        if seen >= self.promote_after:
            self._pending.pop(tenant_id, None)
            return self._assign(tenant_id, slug, tier)
        self._pending[tenant_id] = seen
        if len(self._pending) > self.max_tracked:
            self._decay()
        return OTHER

    def peek(self, tenant_id: UUID) -> str:
        """The tenant's current label, without counting anything."""
        return self._labels.get(tenant_id, OTHER)

    def labelled(self) -> dict[UUID, tuple[str, str]]:
        """Tenants with a label of their own: id -> (label, tier)."""
        return {tid: (label, self._tiers[tid]) for tid, label in self._labels.items()}

    def _assign(self, tenant_id: UUID, slug: str, tier: str) -> str:
        self._labels[tenant_id] = slug
        self._tiers[tenant_id] = tier
        return slug

    def _decay(self) -> None:
        # Lossy counting: halve every count and forget the tenants that fall to zero.
        self._pending = {tid: n // 2 for tid, n in self._pending.items() if n > 1}
