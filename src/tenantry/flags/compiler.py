"""Compiling a flag version into one Python function ``evaluate(ctx) -> Resolution``.

A generic interpreter (loop over rules, call a closure per condition) spends most of its
time on calls. Instead, like :mod:`dataclasses` does for ``__init__``, each flag version
gets its own small function, generated once and then called for every evaluation: the
kill switch, the target lookup and every rule inlined as ``if`` statements over frozensets,
a bucket memo and precomputed, shared :class:`~tenantry.flags.resolution.Resolution`
results. The generated source contains only generated names and validated integers; every
value (tiers, targets, constraint values, results) is passed in the function's namespace,
never spliced into source.

The function for::

    targets {T: true}; rules [enterprise-first: tiers [enterprise]; canary: rollout 25]

reads::

    def evaluate(ctx):
        i = ctx.id.int
        hit = TARGETS.get(i)
        if hit is not None:
            return hit
        if ctx.tier in TIERS_0:
            return HIT_0
        if (BUCKETS_1.get(i) or FILL_1(ctx)) <= 25:
            return HIT_1
        return DEFAULT
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from tenantry.context import TenantContext
from tenantry.flags.bucketing import bucket_cache
from tenantry.flags.model import Constraint, Flag, FlagType, FlagValue, Operator
from tenantry.flags.resolution import ErrorCode, Reason, Resolution, error_resolution

Check = Callable[[TenantContext], bool]
Evaluate = Callable[[TenantContext], Resolution]

_MISSING: Any = object()
_BUILTIN: dict[str, Callable[[TenantContext], Any]] = {
    "slug": attrgetter("slug"),
    "tier": attrgetter("tier"),
    "ring": attrgetter("ring"),
    "cell": attrgetter("cell"),
    "isolation": attrgetter("isolation"),
    "id": lambda ctx: str(ctx.id),
}


@dataclass(frozen=True, slots=True)
class BrokenFlag:
    """A stored flag whose definition no longer parses: it evaluates to the caller's default."""

    key: str
    version: int
    message: str
    definition: object = None


def _getter(attribute: str) -> Callable[[TenantContext], Any]:
    builtin = _BUILTIN.get(attribute)
    if builtin is not None:
        return builtin
    return lambda ctx: ctx.attributes.get(attribute, _MISSING)


def compile_constraint(constraint: Constraint) -> Check:
    """A predicate for one constraint (a missing attribute matches only ``not_in``)."""
    get = _getter(constraint.attribute)
    op = constraint.operator
    if op is Operator.EXISTS:
        return lambda ctx: get(ctx) not in (_MISSING, None)
    if op in (Operator.IN, Operator.NOT_IN):
        members = frozenset(constraint.values)
        scalar = (str, int, float, bool)
        if op is Operator.IN:
            return lambda ctx: isinstance(v := get(ctx), scalar) and v in members
        return lambda ctx: not (isinstance(v := get(ctx), scalar) and v in members)
    if op in (Operator.CONTAINS, Operator.STARTS_WITH, Operator.ENDS_WITH):
        texts = tuple(str(value) for value in constraint.values)
        if op is Operator.CONTAINS:
            return lambda ctx: isinstance(v := get(ctx), str) and any(t in v for t in texts)
        if op is Operator.STARTS_WITH:
            return lambda ctx: isinstance(v := get(ctx), str) and v.startswith(texts)
        return lambda ctx: isinstance(v := get(ctx), str) and v.endswith(texts)
    limit = constraint.values[0]
    compare: Callable[[Any, Any], bool] = {
        Operator.GT: lambda a, b: a > b,
        Operator.GTE: lambda a, b: a >= b,
        Operator.LT: lambda a, b: a < b,
        Operator.LTE: lambda a, b: a <= b,
    }[op]
    return lambda ctx: (
        isinstance(v := get(ctx), int | float) and not isinstance(v, bool) and compare(v, limit)
    )


def variant_of(flag_type: FlagType, value: FlagValue) -> str | None:
    """The OpenFeature variant name of a value: ``on``/``off``, the string, or the number."""
    if flag_type is FlagType.BOOLEAN:
        return "on" if value else "off"
    if flag_type is FlagType.JSON:
        return None
    return str(value)


def _generate(flag: Flag) -> Evaluate:
    def result(value: FlagValue, reason: Reason, rule: str | None) -> Resolution:
        return Resolution(flag.key, value, reason, variant_of(flag.type, value), rule, flag.version)

    namespace: dict[str, Any] = {"DEFAULT": result(flag.default, Reason.DEFAULT, None)}
    body: list[str] = []
    if not flag.enabled:
        namespace["KILLED"] = result(flag.default, Reason.DISABLED, None)
        body.append("return KILLED")
    else:
        rollouts = any(r.rollout is not None and 0 < r.rollout < 100 for r in flag.rules)
        if flag.targets or rollouts:
            body.append("i = ctx.id.int")
        if flag.targets:
            namespace["TARGETS"] = {
                tenant.int: result(value, Reason.TARGET, "target")
                for tenant, value in flag.targets.items()
            }
            body += ["hit = TARGETS.get(i)", "if hit is not None:", "    return hit"]
        for n, rule in enumerate(flag.rules):
            if rule.rollout is not None and rule.rollout <= 0:
                continue  # matches nobody
            reason = Reason.RULE if rule.rollout is None else Reason.ROLLOUT
            namespace[f"HIT_{n}"] = result(rule.serve, reason, rule.name)
            conditions: list[str] = []
            if rule.tiers:
                namespace[f"TIERS_{n}"] = frozenset(rule.tiers)
                conditions.append(f"ctx.tier in TIERS_{n}")
            if rule.rings:
                namespace[f"RINGS_{n}"] = frozenset(rule.rings)
                conditions.append(f"ctx.ring in RINGS_{n}")
            if rule.rollout is not None and rule.rollout < 100:
                namespace[f"BUCKETS_{n}"], namespace[f"FILL_{n}"] = bucket_cache(
                    rule.group or flag.key
                )
                # Buckets are 1-100, never 0, so "or" falls back to computing on a miss.
                conditions.append(f"(BUCKETS_{n}.get(i) or FILL_{n}(ctx)) <= {int(rule.rollout)}")
            for m, constraint in enumerate(rule.constraints):
                namespace[f"C_{n}_{m}"] = compile_constraint(constraint)
                conditions.append(f"C_{n}_{m}(ctx)")
            if conditions:
                body += [f"if {' and '.join(conditions)}:", f"    return HIT_{n}"]
            else:
                body.append(f"return HIT_{n}")
                break  # an unconditional rule ends the chain
        else:
            body.append("return DEFAULT")
    source = "def evaluate(ctx):\n" + "".join(f"    {line}\n" for line in body)
    exec(compile(source, "<tenantry flag>", "exec"), namespace)  # noqa: S102 - see module doc
    evaluate: Evaluate = namespace["evaluate"]
    return evaluate


class CompiledFlag:
    """One flag version, ready to evaluate: ``compiled.evaluate(ctx)``."""

    __slots__ = ("broken", "evaluate", "flag", "key", "type", "version")

    def __init__(self, flag: Flag | BrokenFlag) -> None:
        self.flag = flag
        self.key = flag.key
        self.version = flag.version
        if isinstance(flag, BrokenFlag):
            self.type: FlagType | None = None
            broken = error_resolution(
                flag.key, None, ErrorCode.PARSE_ERROR, flag.message, flag.version
            )
            self.broken: Resolution | None = broken
            self.evaluate: Evaluate = lambda ctx: broken
        else:
            self.type = flag.type
            self.broken = None
            self.evaluate = _generate(flag)
