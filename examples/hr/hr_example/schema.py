"""The HR product's schema chains, loaded from ``migrations/`` once per process.

``migrations/tenant`` builds each tenant's schema (tenantry adds tenant_id, RLS and grants
to every table); ``migrations/control`` evolves the product's shared, control-plane
tables. ``tenantry migrations new "message"`` adds a revision to the tenant chain.
"""

from pathlib import Path

from tenantry.migrations import load_schema

MIGRATIONS = Path(__file__).resolve().parent / "migrations"

HR_SCHEMA = load_schema(MIGRATIONS / "tenant")
HR_CONTROL_PLANE = load_schema(MIGRATIONS / "control")
