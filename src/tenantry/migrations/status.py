"""``tenantry migrate status``: is anything to do? One query, whatever the fleet size."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from psycopg import AsyncConnection

STATUS_QUERY = """
SELECT c.version,
       (SELECT count(*) FROM tenantry.migration_failures),
       v.schema_version,
       v.tenants
FROM tenantry.control_plane_version c
LEFT JOIN (
    SELECT schema_version, count(*) AS tenants FROM tenantry.tenants
    WHERE status <> 'deleted' GROUP BY schema_version
) v ON true
"""


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    """The ledger at a glance: versions of the control plane and of the tenant schemas."""

    head: str | None
    control_head: str | None
    control_version: str | None
    versions: dict[str | None, int] = field(default_factory=dict)
    failures: int = 0

    @property
    def tenants(self) -> int:
        """Tenants that are not offboarded."""
        return sum(self.versions.values())

    @property
    def behind(self) -> int:
        """Tenants not at head."""
        return sum(n for version, n in self.versions.items() if version != self.head)

    @property
    def up_to_date(self) -> bool:
        """Nothing to do: the control plane and every tenant are at head."""
        return self.behind == 0 and self.control_version == self.control_head

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, as ``tenantry migrate status --json`` prints it."""
        return {
            "up_to_date": self.up_to_date,
            "head": self.head,
            "control_plane": {"version": self.control_version, "head": self.control_head},
            "tenants": self.tenants,
            "behind": self.behind,
            "failures": self.failures,
            "versions": [
                {"version": version, "tenants": n, "at_head": version == self.head}
                for version, n in sorted(self.versions.items(), key=lambda kv: str(kv[0]))
            ],
        }


async def migration_status(
    conn: AsyncConnection[Any], *, head: str | None, control_head: str | None = None
) -> MigrationStatus:
    """Read the ledger with a single query (an index-free aggregate over the catalog)."""
    cur = await conn.execute(STATUS_QUERY)
    rows = await cur.fetchall()
    versions = {version: int(n) for _, _, version, n in rows if n is not None}
    control, failures = (rows[0][0], int(rows[0][1])) if rows else (None, 0)
    return MigrationStatus(head, control_head, control, versions, failures)
