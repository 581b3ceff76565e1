"""Flag definitions: key, type, default, kill switch, tenant targets and ordered rules.

A :class:`Flag` is immutable and valid by construction: every way in (the admin API, the
CLI, a row loaded from the control plane) goes through :meth:`Flag.from_definition` or the
dataclass constructor, both of which check types, limits and names, so the evaluator can
compile a flag without checking anything again.

The stored form (``definition``) is plain JSON::

    {"type": "boolean", "description": "...", "default": false, "enabled": true,
     "targets": {"<tenant uuid>": true},
     "rules": [{"name": "enterprise-first", "tiers": ["enterprise"], "serve": true},
               {"name": "rollout", "rollout": 25, "serve": true}]}
"""

from __future__ import annotations

import enum
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from tenantry.catalog.models import Tier
from tenantry.flags.errors import InvalidFlagError

FlagValue = Any
"""A flag's value: ``bool``, ``str``, ``int``/``float`` or a JSON object/array, per type."""

KEY_PATTERN = re.compile(r"[a-z][a-z0-9._-]{0,63}")
RULE_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
ATTRIBUTE_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
MAX_DESCRIPTION, MAX_STRING, MAX_JSON_BYTES = 500, 10_000, 65_536
MAX_RULES, MAX_TARGETS, MAX_CONSTRAINTS, MAX_CONSTRAINT_VALUES = 100, 10_000, 20, 1_000
MAX_RING = 100
TIERS = frozenset(tier.value for tier in Tier)


class FlagType(enum.StrEnum):
    """What a flag serves."""

    BOOLEAN = "boolean"
    STRING = "string"
    NUMBER = "number"
    JSON = "json"


class Operator(enum.StrEnum):
    """How a constraint compares a tenant attribute with its values."""

    IN = "in"
    NOT_IN = "not_in"
    CONTAINS = "contains"
    STARTS_WITH = "starts_with"
    ENDS_WITH = "ends_with"
    GT = "gt"
    GTE = "gte"
    LT = "lt"
    LTE = "lte"
    EXISTS = "exists"


_STRING_OPERATORS = {Operator.CONTAINS, Operator.STARTS_WITH, Operator.ENDS_WITH}
_NUMBER_OPERATORS = {Operator.GT, Operator.GTE, Operator.LT, Operator.LTE}


def _fail(where: str, message: str) -> InvalidFlagError:
    return InvalidFlagError(f"{where}: {message}")


def validate_key(key: object) -> str:
    """A flag key: lowercase letters, digits, ``.``, ``_`` and ``-``, at most 64 characters."""
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise InvalidFlagError(
            f"flag key {key!r} is invalid: use 1-64 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter (e.g. 'approval-workflow-v2')"
        )
    return key


def _check_text(value: object, where: str, limit: int) -> str:
    if not isinstance(value, str):
        raise _fail(where, f"must be a string, got {type(value).__name__}")
    if "\x00" in value:
        raise _fail(where, "must not contain NUL characters")
    if len(value) > limit:
        raise _fail(where, f"must be at most {limit} characters")
    return value


def check_value(flag_type: FlagType, value: object, where: str = "value") -> FlagValue:
    """``value`` if it is a valid value of ``flag_type``, else :class:`InvalidFlagError`."""
    if flag_type is FlagType.BOOLEAN:
        if not isinstance(value, bool):
            raise _fail(where, f"a boolean flag serves true or false, got {value!r}")
        return value
    if flag_type is FlagType.STRING:
        return _check_text(value, where, MAX_STRING)
    if flag_type is FlagType.NUMBER:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _fail(where, f"a number flag serves a number, got {value!r}")
        if not math.isfinite(value):
            raise _fail(where, "must be a finite number")
        return value
    if not isinstance(value, dict | list):
        raise _fail(where, f"a json flag serves a JSON object or array, got {value!r}")
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise _fail(where, f"is not plain JSON ({exc})") from None
    if "\\u0000" in text:
        raise _fail(where, "must not contain NUL characters")
    if len(text) > MAX_JSON_BYTES:
        raise _fail(where, f"must be at most {MAX_JSON_BYTES} bytes of JSON")
    return value


def parse_value(flag_type: FlagType, text: str) -> FlagValue:
    """Parse a value typed on a command line (``true``/``off``, ``42``, ``{"a": 1}``...)."""
    if flag_type is FlagType.BOOLEAN:
        lowered = text.strip().lower()
        if lowered in {"true", "on", "yes", "1"}:
            return True
        if lowered in {"false", "off", "no", "0"}:
            return False
        raise InvalidFlagError(f"{text!r} is not a boolean; use true or false")
    if flag_type is FlagType.NUMBER:
        for kind in (int, float):
            try:
                return check_value(flag_type, kind(text))
            except ValueError:
                continue
        raise InvalidFlagError(f"{text!r} is not a number")
    if flag_type is FlagType.JSON:
        try:
            return check_value(flag_type, json.loads(text))
        except json.JSONDecodeError as exc:
            raise InvalidFlagError(f"value is not valid JSON: {exc}") from None
    return check_value(flag_type, text)


def _only(data: object, allowed: set[str], where: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise _fail(where, "must be a JSON object")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise _fail(where, f"unknown field(s) {unknown}; allowed: {sorted(allowed)}")
    return data


@dataclass(frozen=True, slots=True)
class Constraint:
    """A condition on one tenant attribute.

    ``attribute`` is ``slug``, ``tier``, ``ring``, ``cell``, ``isolation`` or a key of the
    tenant's ``attributes``. A missing attribute matches only ``not_in``.
    """

    attribute: str
    operator: Operator
    values: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        where = f"constraint on {self.attribute!r}"
        if not isinstance(self.attribute, str) or not ATTRIBUTE_PATTERN.fullmatch(self.attribute):
            raise _fail("constraint", f"attribute {self.attribute!r} is not a valid name")
        if self.operator is Operator.EXISTS:
            if self.values:
                raise _fail(where, "'exists' takes no values")
            return
        if not self.values or len(self.values) > MAX_CONSTRAINT_VALUES:
            raise _fail(where, f"needs 1 to {MAX_CONSTRAINT_VALUES} values")
        if self.operator in _NUMBER_OPERATORS:
            if len(self.values) != 1:
                raise _fail(where, f"'{self.operator}' compares with exactly one number")
            check_value(FlagType.NUMBER, self.values[0], where)
        for value in self.values:
            if self.operator in _STRING_OPERATORS or isinstance(value, str):
                _check_text(value, where, MAX_STRING)
            elif not isinstance(value, bool | int | float):
                raise _fail(where, f"values must be strings, numbers or booleans, got {value!r}")

    @classmethod
    def from_dict(cls, data: object, where: str) -> Constraint:
        """Parse ``{"attribute": ..., "operator": ..., "values": [...]}``."""
        data = _only(data, {"attribute", "operator", "values"}, where)
        try:
            operator = Operator(str(data.get("operator")))
        except ValueError:
            raise _fail(where, f"operator must be one of {[o.value for o in Operator]}") from None
        values = data.get("values", [])
        if not isinstance(values, list):
            raise _fail(where, "values must be a list")
        return cls(str(data.get("attribute", "")), operator, tuple(values))

    def as_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "attribute": self.attribute,
            "operator": self.operator.value,
            "values": [*self.values],
        }


@dataclass(frozen=True, slots=True)
class Rule:
    """Serve ``serve`` to tenants in ``tiers`` and ``rings`` that meet every constraint.

    Empty ``tiers`` / ``rings`` mean any. With ``rollout`` (a percentage) only that share of
    the matching tenants is served, chosen by a sticky murmur3 bucket of the tenant id in
    ``group`` (the flag key by default); the others fall through to the next rule.
    """

    name: str
    serve: FlagValue
    tiers: tuple[str, ...] = ()
    rings: tuple[int, ...] = ()
    constraints: tuple[Constraint, ...] = ()
    rollout: int | None = None
    group: str | None = None

    def __post_init__(self) -> None:
        where = f"rule {self.name!r}"
        if not isinstance(self.name, str) or not RULE_NAME_PATTERN.fullmatch(self.name):
            raise _fail("rule", f"name {self.name!r} is invalid: 1-64 of a-z 0-9 . _ -")
        bad_tiers = [tier for tier in self.tiers if tier not in TIERS]
        if bad_tiers:
            raise _fail(where, f"unknown tier(s) {bad_tiers}; tiers are {sorted(TIERS)}")
        for ring in self.rings:
            if isinstance(ring, bool) or not isinstance(ring, int) or not 0 <= ring <= MAX_RING:
                raise _fail(where, f"rings are whole numbers 0-{MAX_RING}, got {ring!r}")
        if len(self.constraints) > MAX_CONSTRAINTS:
            raise _fail(where, f"at most {MAX_CONSTRAINTS} constraints")
        if self.rollout is not None and (
            isinstance(self.rollout, bool)
            or not isinstance(self.rollout, int)
            or not 0 <= self.rollout <= 100
        ):
            raise _fail(where, f"rollout is a whole percentage 0-100, got {self.rollout!r}")
        if self.group is not None:
            _check_text(self.group, f"{where} group", 100)
            if not self.group:
                raise _fail(where, "group must not be empty")

    @classmethod
    def from_dict(cls, data: object, flag_type: FlagType, index: int) -> Rule:
        """Parse one rule; ``serve`` defaults to ``true`` on boolean flags."""
        where = f"rules[{index}]"
        data = _only(
            data, {"name", "serve", "tiers", "rings", "constraints", "rollout", "group"}, where
        )
        if "serve" in data:
            serve = check_value(flag_type, data["serve"], f"{where}.serve")
        elif flag_type is FlagType.BOOLEAN:
            serve = True
        else:
            raise _fail(where, f"a {flag_type} flag's rule must say what it serves ('serve')")
        lists: dict[str, tuple[Any, ...]] = {}
        for name in ("tiers", "rings", "constraints"):
            value = data.get(name) or []
            if not isinstance(value, list):
                raise _fail(where, f"{name} must be a list")
            lists[name] = tuple(value)
        return cls(
            name=data.get("name") or f"rule-{index + 1}",
            serve=serve,
            tiers=lists["tiers"],
            rings=lists["rings"],
            constraints=tuple(
                Constraint.from_dict(c, f"{where}.constraints[{i}]")
                for i, c in enumerate(lists["constraints"])
            ),
            rollout=data.get("rollout"),
            group=data.get("group"),
        )

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (empty conditions left out)."""
        out: dict[str, Any] = {"name": self.name}
        if self.tiers:
            out["tiers"] = [*self.tiers]
        if self.rings:
            out["rings"] = [*self.rings]
        if self.constraints:
            out["constraints"] = [c.as_dict() for c in self.constraints]
        if self.rollout is not None:
            out["rollout"] = self.rollout
        if self.group is not None:
            out["group"] = self.group
        out["serve"] = self.serve
        return out


@dataclass(frozen=True, slots=True)
class Flag:
    """A feature flag as the control plane stores it (see the module docstring)."""

    key: str
    type: FlagType
    default: FlagValue
    description: str = ""
    enabled: bool = True
    targets: Mapping[UUID, FlagValue] = field(default_factory=dict)
    rules: tuple[Rule, ...] = ()
    version: int = 0
    updated_at: datetime | None = None
    updated_by: str | None = None

    def __post_init__(self) -> None:
        validate_key(self.key)
        if not isinstance(self.type, FlagType):
            raise InvalidFlagError(f"type must be one of {[t.value for t in FlagType]}")
        check_value(self.type, self.default, "default")
        _check_text(self.description, "description", MAX_DESCRIPTION)
        if not isinstance(self.enabled, bool):
            raise InvalidFlagError("enabled must be true or false")
        if len(self.targets) > MAX_TARGETS:
            raise InvalidFlagError(f"targets: at most {MAX_TARGETS} tenants")
        for tenant, value in self.targets.items():
            if not isinstance(tenant, UUID):
                raise InvalidFlagError(f"targets: {tenant!r} is not a tenant id")
            check_value(self.type, value, f"targets[{tenant}]")
        if len(self.rules) > MAX_RULES:
            raise InvalidFlagError(f"rules: at most {MAX_RULES}")
        names = [rule.name for rule in self.rules]
        if len(set(names)) != len(names):
            raise InvalidFlagError(f"rules: names must be unique, got {names}")
        for rule in self.rules:
            check_value(self.type, rule.serve, f"rule {rule.name!r} serve")

    @classmethod
    def from_definition(
        cls,
        key: str,
        definition: object,
        *,
        version: int = 0,
        updated_at: datetime | None = None,
        updated_by: str | None = None,
    ) -> Flag:
        """Parse and validate the stored JSON form."""
        data = _only(
            definition,
            {"type", "description", "default", "enabled", "targets", "rules"},
            f"flag {key!r}",
        )
        try:
            flag_type = FlagType(str(data.get("type")))
        except ValueError:
            raise InvalidFlagError(
                f"type must be one of {[t.value for t in FlagType]}, got {data.get('type')!r}"
            ) from None
        if "default" not in data:
            raise InvalidFlagError("default: every flag needs a default value")
        targets = data.get("targets") or {}
        rules = data.get("rules") or []
        if not isinstance(targets, Mapping):
            raise InvalidFlagError("targets must be an object of tenant id -> value")
        if not isinstance(rules, list):
            raise InvalidFlagError("rules must be a list")
        return cls(
            key=validate_key(key),
            type=flag_type,
            default=data["default"],
            description=data.get("description") or "",
            enabled=data.get("enabled", True),
            targets={_tenant_id(tenant): value for tenant, value in targets.items()},
            rules=tuple(Rule.from_dict(rule, flag_type, i) for i, rule in enumerate(rules)),
            version=version,
            updated_at=updated_at,
            updated_by=updated_by,
        )

    def definition(self) -> dict[str, Any]:
        """The stored JSON form (no key, version or audit fields)."""
        return {
            "type": self.type.value,
            "description": self.description,
            "default": self.default,
            "enabled": self.enabled,
            "targets": {str(tenant): value for tenant, value in self.targets.items()},
            "rules": [rule.as_dict() for rule in self.rules],
        }

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view, as the CLI's ``--json`` and the admin API print it."""
        return {
            "key": self.key,
            "version": self.version,
            **self.definition(),
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
            "updated_by": self.updated_by,
        }


def _tenant_id(text: object) -> UUID:
    try:
        return text if isinstance(text, UUID) else UUID(str(text))
    except ValueError:
        raise InvalidFlagError(f"targets: {text!r} is not a tenant id (uuid)") from None


@dataclass(frozen=True, slots=True)
class FlagChange:
    """One entry of a flag's audit history: who changed what, when, before and after."""

    key: str
    version: int
    action: str
    actor: str
    at: datetime
    before: dict[str, Any] | None
    after: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {
            "key": self.key,
            "version": self.version,
            "action": self.action,
            "actor": self.actor,
            "at": self.at.isoformat(),
            "before": self.before,
            "after": self.after,
        }
