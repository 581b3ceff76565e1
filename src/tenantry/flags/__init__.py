"""Per-tenant feature flags: definitions in the control plane, evaluation in memory.

``platform.flags`` (a :class:`FeatureFlags`) evaluates from an in-memory snapshot in about
a microsecond, with no I/O, and follows changes from every process through
``LISTEN tenantry_flags``. Application code can use it directly, through the FastAPI
dependency :data:`tenantry.web.CurrentFlags`, or through the OpenFeature API with
:class:`tenantry.flags.openfeature.TenantryProvider`.
"""

from tenantry.flags.bucketing import bucket, normalized_hash
from tenantry.flags.compiler import BrokenFlag
from tenantry.flags.errors import (
    FlagError,
    FlagExistsError,
    FlagNotFoundError,
    FlagVersionConflictError,
    InvalidFlagError,
)
from tenantry.flags.evaluator import FlagEvaluator, TenantFlags
from tenantry.flags.feature_flags import FeatureFlags
from tenantry.flags.model import (
    Constraint,
    Flag,
    FlagChange,
    FlagType,
    Operator,
    Rule,
    parse_value,
)
from tenantry.flags.resolution import ErrorCode, Reason, Resolution
from tenantry.flags.store import FLAGS_CHANNEL, FlagStore, bootstrap_flags

__all__ = [
    "FLAGS_CHANNEL",
    "BrokenFlag",
    "Constraint",
    "ErrorCode",
    "FeatureFlags",
    "Flag",
    "FlagChange",
    "FlagError",
    "FlagEvaluator",
    "FlagExistsError",
    "FlagNotFoundError",
    "FlagStore",
    "FlagType",
    "FlagVersionConflictError",
    "InvalidFlagError",
    "Operator",
    "Reason",
    "Resolution",
    "Rule",
    "TenantFlags",
    "bootstrap_flags",
    "bucket",
    "normalized_hash",
    "parse_value",
]
