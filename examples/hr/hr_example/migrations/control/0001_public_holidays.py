"""public holiday calendars shared by every tenant"""

from __future__ import annotations

import sqlalchemy as sa
from alembic.operations import Operations

revision = "0001"
down_revision = None
transactional = True


def upgrade(op: Operations) -> None:
    """Reference data the whole fleet reads: one calendar per region, kept centrally."""
    op.execute("CREATE SCHEMA IF NOT EXISTS hr_shared")
    op.create_table(
        "public_holidays",
        sa.Column("region", sa.Text, primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("name", sa.Text, nullable=False),
        schema="hr_shared",
    )
