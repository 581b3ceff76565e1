"""A sample HR SaaS: departments, employees and leave requests, one schema per tenant.

Built only on tenantry's public API; if it needed something private, that would be a gap
in the API.
"""

from hr_example.app import create_app
from hr_example.schema import HR_SCHEMA

__all__ = ["HR_SCHEMA", "create_app"]
