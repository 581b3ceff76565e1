"""An OpenFeature provider backed by tenantry's in-memory evaluator.

Application code uses the vendor-neutral API::

    from openfeature import api
    api.set_provider(TenantryProvider(platform.flags))
    client = api.get_client()
    if client.get_boolean_value("approval-workflow-v2", False):
        ...

The evaluation context is filled from the tenant bound to the current context: targeting
key = tenant id, plus ``slug``, ``tier``, ``ring`` and the tenant's attributes. Attributes
passed in the evaluation context are laid over the tenant's; an explicit targeting key
evaluates for that tenant id instead (with ``tier`` / ``ring`` / ``slug`` and other
attributes taken from the context), for code that runs outside any tenant scope.

Every resolution carries a reason (``TARGETING_MATCH``, ``RULE_MATCH``, ``SPLIT``,
``DEFAULT``, ``DISABLED`` or ``ERROR`` with an error code) and ``flag_metadata`` with the
flag version and the rule that decided.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode as OpenFeatureErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails, FlagValueType
from openfeature.provider import AbstractProvider, Metadata

from tenantry.context import TenantContext, current_tenant_or_none
from tenantry.flags.evaluator import FlagEvaluator
from tenantry.flags.model import FlagType
from tenantry.flags.resolution import ErrorCode, Resolution, error_resolution

ObjectValue = Sequence[FlagValueType] | Mapping[str, FlagValueType]

_ERROR_CODES = {
    ErrorCode.FLAG_NOT_FOUND: OpenFeatureErrorCode.FLAG_NOT_FOUND,
    ErrorCode.TYPE_MISMATCH: OpenFeatureErrorCode.TYPE_MISMATCH,
    ErrorCode.TARGETING_KEY_MISSING: OpenFeatureErrorCode.TARGETING_KEY_MISSING,
    ErrorCode.INVALID_CONTEXT: OpenFeatureErrorCode.INVALID_CONTEXT,
    ErrorCode.PARSE_ERROR: OpenFeatureErrorCode.PARSE_ERROR,
    ErrorCode.GENERAL: OpenFeatureErrorCode.GENERAL,
}
_BUILTIN_ATTRIBUTES = frozenset({"slug", "tier", "ring", "cell", "isolation"})


def tenant_evaluation_context(tenant: TenantContext) -> EvaluationContext:
    """The OpenFeature evaluation context for a tenant (what the provider evaluates
    against when none is given): targeting key = tenant id, plus tier, ring and attributes."""
    return EvaluationContext(
        targeting_key=str(tenant.id),
        attributes={
            **tenant.attributes,
            "slug": tenant.slug,
            "tier": tenant.tier,
            "ring": tenant.ring,
            "cell": tenant.cell,
            "isolation": tenant.isolation,
        },
    )


class TenantryProvider(AbstractProvider):
    """OpenFeature provider evaluating from a :class:`FlagEvaluator` (e.g. ``platform.flags``)."""

    def __init__(self, evaluator: FlagEvaluator) -> None:
        super().__init__()
        self.evaluator = evaluator
        self._metadata = Metadata(name="tenantry")

    def get_metadata(self) -> Metadata:
        """The provider's name, ``tenantry``."""
        return self._metadata

    def resolve_boolean_details(
        self,
        flag_key: str,
        default_value: bool,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[bool]:
        """Evaluate a boolean flag."""
        return self._details(
            self._resolve(flag_key, FlagType.BOOLEAN, default_value, evaluation_context)
        )

    def resolve_string_details(
        self, flag_key: str, default_value: str, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[str]:
        """Evaluate a string flag."""
        return self._details(
            self._resolve(flag_key, FlagType.STRING, default_value, evaluation_context)
        )

    def resolve_integer_details(
        self, flag_key: str, default_value: int, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[int]:
        """Evaluate a number flag whose value must be a whole number."""
        resolution = self._resolve(flag_key, FlagType.NUMBER, default_value, evaluation_context)
        value = resolution.value
        if resolution.ok and not isinstance(value, int):
            if not float(value).is_integer():
                return self._details(
                    error_resolution(
                        flag_key,
                        default_value,
                        ErrorCode.TYPE_MISMATCH,
                        f"flag {flag_key!r} serves {value!r}, not a whole number",
                        resolution.version,
                    )
                )
            resolution = dataclasses.replace(resolution, value=int(value))
        return self._details(resolution)

    def resolve_float_details(
        self,
        flag_key: str,
        default_value: float,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[float]:
        """Evaluate a number flag as a float."""
        resolution = self._resolve(flag_key, FlagType.NUMBER, default_value, evaluation_context)
        if resolution.ok and not isinstance(resolution.value, float):
            resolution = dataclasses.replace(resolution, value=float(resolution.value))
        return self._details(resolution)

    def resolve_object_details(
        self,
        flag_key: str,
        default_value: ObjectValue,
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[ObjectValue]:
        """Evaluate a JSON flag."""
        return self._details(
            self._resolve(flag_key, FlagType.JSON, default_value, evaluation_context)
        )

    def _resolve(
        self,
        key: str,
        flag_type: FlagType,
        default: Any,
        context: EvaluationContext | None,
    ) -> Resolution:
        if context is None or (context.targeting_key is None and not context.attributes):
            tenant = current_tenant_or_none()  # the common case: a request's tenant
        else:
            try:
                tenant = _tenant_from(context)
            except (TypeError, ValueError) as exc:
                return error_resolution(
                    key, default, ErrorCode.INVALID_CONTEXT, f"unusable evaluation context: {exc}"
                )
        return self.evaluator.resolve(key, flag_type, default, tenant)

    @staticmethod
    def _details(resolution: Resolution) -> FlagResolutionDetails[Any]:
        code = resolution.error_code
        return FlagResolutionDetails(
            value=resolution.value,
            error_code=None if code is None else _ERROR_CODES[code],
            error_message=resolution.error_message,
            reason=resolution.reason,
            variant=resolution.variant,
            flag_metadata={"version": resolution.version, "rule": resolution.rule or ""},
        )


def _tenant_from(context: EvaluationContext) -> TenantContext | None:
    """The tenant an evaluation context describes (the bound tenant, with its attributes
    overlaid, when the context has no targeting key)."""
    attributes = dict(context.attributes)
    bound = current_tenant_or_none()
    if context.targeting_key is None:
        if bound is None:
            return None
        base = bound
    else:
        tenant_id = UUID(context.targeting_key)
        if bound is not None and bound.id == tenant_id:
            base = bound
        else:
            base = TenantContext(id=tenant_id, slug="", tier="", schema="")
    return TenantContext(
        id=base.id,
        slug=str(attributes.pop("slug", base.slug)),
        tier=str(attributes.pop("tier", base.tier)),
        schema=base.schema,
        ring=_ring(attributes.pop("ring", base.ring)),
        cell=str(attributes.pop("cell", base.cell)),
        isolation=str(attributes.pop("isolation", base.isolation)),
        attributes={**base.attributes, **attributes},
    )


def _ring(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"ring must be a whole number, got {value!r}")
    return int(value)


__all__ = ["TenantryProvider", "tenant_evaluation_context"]
