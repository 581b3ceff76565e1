"""Application code on the standard OpenFeature API: the provider fills the evaluation
context from the current tenant, returns a reason with every evaluation, and turns type
errors into the default with an error code."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from openfeature import api
from openfeature.client import OpenFeatureClient
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason as OpenFeatureReason

from tenantry import tenant_scope
from tenantry.flags import (
    Constraint,
    Flag,
    FlagEvaluator,
    FlagType,
    Operator,
    Rule,
    bucket,
)
from tenantry.flags.openfeature import TenantryProvider, tenant_evaluation_context
from tests.flag_helpers import tenant

FLAGS = [
    Flag(
        "approval-workflow-v2",
        FlagType.BOOLEAN,
        False,
        rules=(
            Rule("enterprise-first", True, tiers=("enterprise",)),
            Rule("eu", True, constraints=(Constraint("region", Operator.IN, ("eu",)),)),
            Rule("canary", True, rollout=40),
        ),
    ),
    Flag("theme", FlagType.STRING, "classic", rules=(Rule("ring0", "modern", rings=(0,)),)),
    Flag("seats", FlagType.NUMBER, 10, rules=(Rule("pro", 25, tiers=("pro",)),)),
    Flag("ratio", FlagType.NUMBER, 0.5),
    Flag(
        "limits",
        FlagType.JSON,
        {"uploads": 5},
        rules=(Rule("pro", {"uploads": 50}, tiers=("pro",)),),
    ),
]


@pytest.fixture
def client() -> Iterator[OpenFeatureClient]:
    """An OpenFeature client of its own domain, backed by a tenantry evaluator."""
    evaluator = FlagEvaluator()
    evaluator.replace(FLAGS)
    domain = f"tenantry-test-{secrets.token_hex(3)}"
    api.set_provider_and_wait(TenantryProvider(evaluator), domain)
    yield api.get_client(domain)
    api.clear_providers()


def test_the_evaluation_context_comes_from_the_bound_tenant(client: OpenFeatureClient) -> None:
    """No context is passed: tier, ring and attributes of the bound tenant decide."""
    with tenant_scope(tenant("enterprise", ring=1)):
        details = client.get_boolean_details("approval-workflow-v2", False)
        assert (details.value, details.reason, details.variant) == (True, "RULE_MATCH", "on")
        assert details.flag_metadata == {"version": 0, "rule": "enterprise-first"}
        assert client.get_string_value("theme", "x") == "classic"
    with tenant_scope(tenant("free", ring=0, region="eu")):
        assert client.get_boolean_details("approval-workflow-v2", False).flag_metadata == {
            "version": 0,
            "rule": "eu",
        }
        details = client.get_string_details("theme", "x")
        assert (details.value, details.reason, details.variant) == (
            "modern",
            "RULE_MATCH",
            "modern",
        )
    with tenant_scope(tenant("pro", ring=2)):
        assert client.get_integer_value("seats", 0) == 25
        assert client.get_float_value("ratio", 0.0) == 0.5
        assert client.get_object_value("limits", {}) == {"uploads": 50}


def test_rollout_and_default_reasons_follow_the_tenant_bucket(client: OpenFeatureClient) -> None:
    """Outside every rule, the 40 % canary decides by the tenant's bucket: SPLIT or DEFAULT."""
    seen = set()
    for seed in range(100):
        ctx = tenant("free", ring=3, seed=seed, region="us")
        with tenant_scope(ctx):
            details = client.get_boolean_details("approval-workflow-v2", False)
        inside = bucket(ctx.id, "approval-workflow-v2") <= 40
        assert details.value is inside
        assert details.reason == (OpenFeatureReason.SPLIT if inside else OpenFeatureReason.DEFAULT)
        seen.add(details.reason)
    assert len(seen) == 2


def test_type_errors_and_missing_flags_return_the_default_with_an_error_code(
    client: OpenFeatureClient,
) -> None:
    """Wrong type, unknown flag, a non-integral number asked as integer, no tenant: the
    caller's default, reason ERROR, and the matching OpenFeature error code."""
    with tenant_scope(tenant("pro")):
        wrong = client.get_string_details("approval-workflow-v2", "fallback")
        assert (wrong.value, wrong.reason, wrong.error_code) == (
            "fallback",
            "ERROR",
            ErrorCode.TYPE_MISMATCH,
        )
        missing = client.get_boolean_details("no-such-flag", True)
        assert (missing.value, missing.error_code) == (True, ErrorCode.FLAG_NOT_FOUND)
        fractional = client.get_integer_details("ratio", 3)
        assert (fractional.value, fractional.error_code) == (3, ErrorCode.TYPE_MISMATCH)
        assert client.get_object_value("theme", {"d": 1}) == {"d": 1}
    nobody = client.get_boolean_details("approval-workflow-v2", False)
    assert (nobody.value, nobody.error_code) == (False, ErrorCode.TARGETING_KEY_MISSING)


def test_an_explicit_context_evaluates_for_that_tenant(client: OpenFeatureClient) -> None:
    """Outside any tenant scope, a targeting key (tenant id) with tier/ring attributes is
    evaluated; attributes passed inside a scope are laid over the bound tenant's; a
    malformed targeting key is an INVALID_CONTEXT error, not an exception."""
    someone = tenant("enterprise", ring=1)
    assert client.get_boolean_value(
        "approval-workflow-v2", False, tenant_evaluation_context(someone)
    )
    explicit = EvaluationContext(str(tenant().id), {"tier": "pro", "ring": 0})
    assert client.get_string_value("theme", "x", explicit) == "modern"
    assert client.get_integer_value("seats", 0, explicit) == 25
    with tenant_scope(tenant("free", ring=5, region="us")):
        overlaid = EvaluationContext(attributes={"region": "eu"})
        details = client.get_boolean_details("approval-workflow-v2", False, overlaid)
        assert details.flag_metadata["rule"] == "eu"
    broken = client.get_boolean_details(
        "approval-workflow-v2", False, EvaluationContext("not-a-uuid")
    )
    assert (broken.value, broken.error_code) == (False, ErrorCode.INVALID_CONTEXT)


def test_tenant_evaluation_context_carries_id_tier_ring_and_attributes() -> None:
    """The context a tenant maps to: targeting key = tenant id, plus its fields."""
    ctx = tenant("pro", ring=2, region="eu")
    context = tenant_evaluation_context(ctx)
    assert context.targeting_key == str(ctx.id)
    assert dict(context.attributes) == {
        "region": "eu",
        "slug": ctx.slug,
        "tier": "pro",
        "ring": 2,
        "cell": "default",
        "isolation": "schema",
    }
