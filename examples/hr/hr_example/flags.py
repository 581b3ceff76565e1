"""The HR product's feature flags.

``approval-workflow-v2`` changes how leave is approved, and is on for enterprise tenants
first (any tenant can be targeted in or out, and the rest rolled out by percentage):

* v1: every request starts ``pending``; approving it just approves it.
* v2: short sick leave (up to 3 days) is approved on submission, and approving a request
  that overlaps leave the employee already has approved is refused (409 ``leave_overlap``).
"""

from __future__ import annotations

from tenantry import Platform
from tenantry.flags import Flag, FlagType, Rule

APPROVAL_WORKFLOW_V2 = "approval-workflow-v2"
SICK_LEAVE_AUTO_APPROVE_DAYS = 3

APPROVAL_WORKFLOW_FLAG = Flag(
    key=APPROVAL_WORKFLOW_V2,
    type=FlagType.BOOLEAN,
    default=False,
    description="Leave approval v2: short sick leave approved at once, overlapping leave refused",
    rules=(Rule(name="enterprise-first", tiers=("enterprise",), serve=True),),
)


async def ensure_flags(platform: Platform, *, actor: str = "hr_example") -> None:
    """Define the HR flags if they do not exist yet (an existing flag is left as it is)."""
    await platform.flags.create(APPROVAL_WORKFLOW_FLAG, actor=actor, exist_ok=True)
