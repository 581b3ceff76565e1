"""The in-memory evaluator: documented precedence (kill switch, targets, rules in order,
default), tiers, rings, constraints and rollouts, and errors that come back as the
caller's default with a reason instead of exceptions."""

from __future__ import annotations

from typing import Any

import pytest

from tenantry import TenantContext, tenant_scope
from tenantry.flags import (
    BrokenFlag,
    Constraint,
    ErrorCode,
    Flag,
    FlagEvaluator,
    FlagType,
    InvalidFlagError,
    Operator,
    Reason,
    Rule,
    bucket,
    parse_value,
)
from tests.flag_helpers import tenant

REGION_EU = Constraint("region", Operator.IN, ("eu",))


def _evaluator(*flags: Flag | BrokenFlag) -> FlagEvaluator:
    evaluator = FlagEvaluator()
    evaluator.replace(flags)
    return evaluator


def _theme(targets: dict[Any, str] | None = None, enabled: bool = True) -> Flag:
    """A string flag whose every layer serves a different value."""
    return Flag(
        "theme",
        FlagType.STRING,
        "classic",
        enabled=enabled,
        targets=targets or {},
        rules=(
            Rule("canary-ring", "ring", rings=(0,)),
            Rule("enterprise", "tier", tiers=("enterprise",)),
            Rule("eu", "constraint", constraints=(REGION_EU,)),
            Rule("half", "rollout", rollout=50),
        ),
    )


def test_precedence_is_kill_switch_then_targets_then_rules_in_order_then_default() -> None:
    """Each layer wins over the ones after it, and says so in its reason."""
    targeted = tenant("enterprise", ring=0, seed=1)
    ring0 = tenant("enterprise", ring=0, seed=2)
    enterprise = tenant("enterprise", ring=1, seed=3)
    eu = tenant("free", ring=1, seed=4, region="eu")
    evaluator = _evaluator(_theme({targeted.id: "target"}))

    def answer(ctx: TenantContext) -> tuple[Any, Reason, str | None]:
        got = evaluator.evaluate("theme", ctx)
        return got.value, got.reason, got.rule

    assert answer(targeted) == ("target", Reason.TARGET, "target")
    assert answer(ring0) == ("ring", Reason.RULE, "canary-ring")
    assert answer(enterprise) == ("tier", Reason.RULE, "enterprise")
    assert answer(eu) == ("constraint", Reason.RULE, "eu")
    for seed in range(10, 60):
        other = tenant("pro", ring=2, seed=seed, region="us")
        if bucket(other.id, "theme") <= 50:
            assert answer(other) == ("rollout", Reason.ROLLOUT, "half")
        else:
            assert answer(other) == ("classic", Reason.DEFAULT, None)

    killed = _evaluator(_theme({targeted.id: "target"}, enabled=False))
    for ctx in (targeted, ring0, enterprise, eu):
        got = killed.evaluate("theme", ctx)
        assert (got.value, got.reason) == ("classic", Reason.DISABLED)


def test_rule_order_decides_between_rules_that_both_match() -> None:
    """An enterprise tenant in ring 0 gets the first matching rule's value."""
    both = tenant("enterprise", ring=0)
    flag = _theme()
    reordered = Flag(
        "theme", FlagType.STRING, "classic", rules=(flag.rules[1], flag.rules[0]), version=2
    )
    assert _evaluator(flag).get_string("theme", "?", both) == "ring"
    assert _evaluator(reordered).get_string("theme", "?", both) == "tier"


def test_a_deny_target_beats_a_matching_rule() -> None:
    """A boolean flag on for enterprise: an enterprise tenant targeted with false is off."""
    denied, allowed = tenant("enterprise"), tenant("free")
    flag = Flag(
        "beta",
        FlagType.BOOLEAN,
        False,
        targets={denied.id: False, allowed.id: True},
        rules=(Rule("enterprise", True, tiers=("enterprise",)),),
    )
    evaluator = _evaluator(flag)
    assert evaluator.evaluate("beta", denied).reason is Reason.TARGET
    assert evaluator.is_enabled("beta", tenant=denied) is False
    assert evaluator.is_enabled("beta", tenant=allowed) is True
    assert evaluator.is_enabled("beta", tenant=tenant("enterprise")) is True
    assert evaluator.is_enabled("beta", tenant=tenant("pro")) is False


def test_a_tenant_outside_a_rollout_falls_through_to_the_next_rule() -> None:
    """Rollout rules do not end evaluation for tenants outside their percentage."""
    flag = Flag(
        "plan",
        FlagType.STRING,
        "default",
        rules=(Rule("early", "early", tiers=("pro",), rollout=30), Rule("rest", "rest")),
    )
    evaluator = _evaluator(flag)
    for seed in range(200):
        ctx = tenant("pro", seed=seed)
        expected = "early" if bucket(ctx.id, "plan") <= 30 else "rest"
        assert evaluator.get_string("plan", "?", ctx) == expected
    assert evaluator.get_string("plan", "?", tenant("free")) == "rest"


def test_zero_and_hundred_percent_rollouts() -> None:
    """0 % matches nobody, 100 % everybody (still reported as a rollout)."""
    evaluator = _evaluator(
        Flag("none", FlagType.BOOLEAN, False, rules=(Rule("r", True, rollout=0),)),
        Flag("all", FlagType.BOOLEAN, False, rules=(Rule("r", True, rollout=100),)),
    )
    for seed in range(100):
        ctx = tenant(seed=seed)
        assert evaluator.is_enabled("none", tenant=ctx) is False
        got = evaluator.evaluate("all", ctx)
        assert (got.value, got.reason) == (True, Reason.ROLLOUT)


@pytest.mark.parametrize(
    ("constraint", "matching", "other"),
    [
        (Constraint("region", Operator.IN, ("eu", "uk")), {"region": "uk"}, {"region": "us"}),
        (Constraint("region", Operator.NOT_IN, ("us",)), {}, {"region": "us"}),
        (Constraint("domain", Operator.CONTAINS, ("acme",)), {"domain": "x.acme.io"}, {}),
        (Constraint("plan", Operator.STARTS_WITH, ("ent",)), {"plan": "ent-2"}, {"plan": "pro"}),
        (Constraint("email", Operator.ENDS_WITH, (".gov",)), {"email": "a@b.gov"}, {"email": 3}),
        (Constraint("seats", Operator.GT, (100,)), {"seats": 101}, {"seats": 100}),
        (Constraint("seats", Operator.GTE, (100,)), {"seats": 100}, {"seats": "1000"}),
        (Constraint("seats", Operator.LT, (10,)), {"seats": 9.5}, {"seats": True}),
        (Constraint("seats", Operator.LTE, (10,)), {"seats": 10}, {"seats": [1]}),
        (Constraint("sso", Operator.EXISTS), {"sso": "okta"}, {"sso": None}),
        (Constraint("region", Operator.IN, ("eu",)), {"region": "eu"}, {"region": ["eu"]}),
    ],
)
def test_constraints_on_tenant_attributes(
    constraint: Constraint, matching: dict[str, Any], other: dict[str, Any]
) -> None:
    """Each operator matches the attribute values it should and nothing else; odd attribute
    types never raise."""
    evaluator = _evaluator(
        Flag("c", FlagType.BOOLEAN, False, rules=(Rule("r", True, constraints=(constraint,)),))
    )
    assert evaluator.is_enabled("c", tenant=tenant(**matching)) is True
    assert evaluator.is_enabled("c", tenant=tenant(**other)) is False


def test_builtin_attributes_slug_tier_and_ring_can_be_constrained() -> None:
    """``slug``, ``tier`` and ``ring`` come from the tenant context itself."""
    ctx = tenant("pro", ring=3)
    rule = Rule(
        "r",
        True,
        constraints=(
            Constraint("slug", Operator.IN, (ctx.slug,)),
            Constraint("tier", Operator.NOT_IN, ("free",)),
            Constraint("ring", Operator.GTE, (2,)),
        ),
    )
    evaluator = _evaluator(Flag("b", FlagType.BOOLEAN, False, rules=(rule,)))
    assert evaluator.is_enabled("b", tenant=ctx) is True
    assert evaluator.is_enabled("b", tenant=tenant("pro", ring=3)) is False


def test_type_errors_return_the_default_with_an_error_reason() -> None:
    """Asking a flag for the wrong type never raises: the caller's default comes back."""
    evaluator = _evaluator(
        Flag("on", FlagType.BOOLEAN, True),
        Flag("name", FlagType.STRING, "x"),
        Flag("limit", FlagType.NUMBER, 5),
    )
    ctx = tenant()
    assert evaluator.is_enabled("name", default=True, tenant=ctx) is True
    assert evaluator.is_enabled("name", default=False, tenant=ctx) is False
    assert evaluator.get_string("on", "fallback", ctx) == "fallback"
    assert evaluator.get_number("name", 7, ctx) == 7
    assert evaluator.get_json("limit", {"d": 1}, ctx) == {"d": 1}
    wrong = evaluator.resolve("on", FlagType.STRING, "fallback", ctx)
    assert (wrong.value, wrong.reason, wrong.error_code) == (
        "fallback",
        Reason.ERROR,
        ErrorCode.TYPE_MISMATCH,
    )
    assert "boolean" in (wrong.error_message or "")
    right = evaluator.resolve("limit", FlagType.NUMBER, 0, ctx)
    assert (right.value, right.reason, right.ok) == (5, Reason.DEFAULT, True)


def test_missing_flag_missing_tenant_and_broken_definition_are_error_reasons() -> None:
    """Unknown key, no tenant bound and an unparseable stored definition all answer with
    the default and a distinct error code."""
    evaluator = _evaluator(
        Flag("on", FlagType.BOOLEAN, True), BrokenFlag("bad", 3, "stored definition is invalid")
    )
    ctx = tenant()
    missing = evaluator.resolve("nope", FlagType.BOOLEAN, False, ctx)
    assert (missing.value, missing.error_code) == (False, ErrorCode.FLAG_NOT_FOUND)
    no_tenant = evaluator.resolve("on", FlagType.BOOLEAN, False)
    assert (no_tenant.value, no_tenant.error_code) == (False, ErrorCode.TARGETING_KEY_MISSING)
    assert evaluator.is_enabled("on") is False
    broken = evaluator.resolve("bad", FlagType.BOOLEAN, True, ctx)
    assert (broken.value, broken.error_code) == (True, ErrorCode.PARSE_ERROR)
    assert evaluator.is_enabled("bad", default=True, tenant=ctx) is True
    assert evaluator.evaluate("bad", ctx).reason is Reason.ERROR


def test_an_exception_inside_a_rule_becomes_an_error_reason() -> None:
    """An attribute whose comparison raises is reported, not raised into the request."""

    class Hostile(int):
        def __gt__(self, other: object) -> bool:
            raise RuntimeError("boom")

    rule = Rule("r", True, constraints=(Constraint("seats", Operator.GT, (1,)),))
    evaluator = _evaluator(Flag("h", FlagType.BOOLEAN, False, rules=(rule,)))
    ctx = tenant(seats=Hostile(5))
    assert evaluator.is_enabled("h", default=True, tenant=ctx) is True
    got = evaluator.resolve("h", FlagType.BOOLEAN, False, ctx)
    assert (got.value, got.error_code) == (False, ErrorCode.GENERAL)


def test_the_current_tenant_is_used_when_none_is_passed() -> None:
    """Inside ``tenant_scope`` the bound tenant is evaluated; a bound evaluator
    (``for_tenant``) ignores the scope."""
    evaluator = _evaluator(
        Flag("e", FlagType.BOOLEAN, False, rules=(Rule("r", True, tiers=("enterprise",)),))
    )
    enterprise, free = tenant("enterprise"), tenant("free")
    with tenant_scope(enterprise):
        assert evaluator.is_enabled("e") is True
        assert evaluator.for_tenant(free).is_enabled("e") is False
    with tenant_scope(free):
        assert evaluator.evaluate("e").reason is Reason.DEFAULT


def test_snapshot_changes_are_announced_and_never_go_backwards() -> None:
    """``apply`` installs newer versions only, ``replace`` keeps a newer local version,
    and subscribers hear about every change."""
    heard: list[frozenset[str]] = []
    evaluator = FlagEvaluator()
    unsubscribe = evaluator.subscribe(heard.append)
    evaluator.replace([Flag("a", FlagType.BOOLEAN, False, version=1)])
    evaluator.apply(["a"], [Flag("a", FlagType.BOOLEAN, True, version=3)])
    evaluator.apply(["a"], [Flag("a", FlagType.BOOLEAN, False, version=2)])  # stale
    assert evaluator.version_of("a") == 3
    evaluator.replace([Flag("a", FlagType.BOOLEAN, False, version=2)])  # stale load
    assert evaluator.is_enabled("a", tenant=tenant()) is True
    evaluator.apply(["a"], [])  # the row is gone
    assert "a" not in evaluator
    unsubscribe()
    evaluator.replace([Flag("b", FlagType.BOOLEAN, False, version=1)])
    assert heard == [frozenset({"a"}), frozenset({"a"}), frozenset({"a"})]


@pytest.mark.parametrize(
    ("definition", "message"),
    [
        ({"type": "boolean"}, "default"),
        ({"type": "colour", "default": "red"}, "type"),
        ({"type": "boolean", "default": "yes"}, "true or false"),
        ({"type": "number", "default": float("nan")}, "finite"),
        ({"type": "string", "default": "a\x00b"}, "NUL"),
        ({"type": "json", "default": {"k": "\x00"}}, "NUL"),
        ({"type": "json", "default": 3}, "JSON object or array"),
        ({"type": "boolean", "default": False, "colour": 1}, "unknown field"),
        ({"type": "boolean", "default": False, "rules": [{"tiers": ["gold"]}]}, "tier"),
        ({"type": "boolean", "default": False, "rules": [{"rollout": 101}]}, "0-100"),
        ({"type": "boolean", "default": False, "rules": [{"rollout": True}]}, "0-100"),
        ({"type": "boolean", "default": False, "rules": [{"rings": [-1]}]}, "rings"),
        ({"type": "boolean", "default": False, "rules": [{"name": "a"}, {"name": "a"}]}, "unique"),
        ({"type": "boolean", "default": False, "rules": [{"serve": "yes"}]}, "true or false"),
        ({"type": "string", "default": "a", "rules": [{"tiers": ["pro"]}]}, "serve"),
        ({"type": "boolean", "default": False, "targets": {"acme": True}}, "tenant id"),
        (
            {
                "type": "boolean",
                "default": False,
                "rules": [
                    {"constraints": [{"attribute": "x", "operator": "gt", "values": [1, 2]}]}
                ],
            },
            "exactly one number",
        ),
        (
            {
                "type": "boolean",
                "default": False,
                "rules": [{"constraints": [{"attribute": "x y", "operator": "in", "values": [1]}]}],
            },
            "not a valid name",
        ),
    ],
)
def test_invalid_definitions_are_refused_with_a_message(
    definition: dict[str, Any], message: str
) -> None:
    """Bad types, unknown fields and out-of-range values raise InvalidFlagError naming
    the problem, before anything is stored."""
    with pytest.raises(InvalidFlagError, match=message):
        Flag.from_definition("some-flag", definition)


@pytest.mark.parametrize("key", ["", "Upper", "1abc", "a b", "x" * 65, "semi;colon", "é"])
def test_flag_keys_are_validated(key: str) -> None:
    """Keys are lowercase identifiers of at most 64 characters."""
    with pytest.raises(InvalidFlagError, match="flag key"):
        Flag(key, FlagType.BOOLEAN, False)


def test_definitions_round_trip_through_json() -> None:
    """What is stored parses back to the same flag."""
    ctx = tenant()
    flag = _theme({ctx.id: "target"})
    assert Flag.from_definition("theme", flag.definition()) == flag


def test_values_typed_on_a_command_line_are_parsed_by_flag_type() -> None:
    """``parse_value`` turns CLI text into the flag's type, or refuses it."""
    assert parse_value(FlagType.BOOLEAN, "on") is True
    assert parse_value(FlagType.BOOLEAN, "False") is False
    assert parse_value(FlagType.NUMBER, "42") == 42
    assert parse_value(FlagType.NUMBER, "2.5") == 2.5
    assert parse_value(FlagType.JSON, '{"a": [1]}') == {"a": [1]}
    assert parse_value(FlagType.STRING, "true") == "true"
    for flag_type, text in (
        (FlagType.BOOLEAN, "maybe"),
        (FlagType.NUMBER, "inf"),
        (FlagType.NUMBER, "ten"),
        (FlagType.JSON, "{"),
    ):
        with pytest.raises(InvalidFlagError):
            parse_value(flag_type, text)
