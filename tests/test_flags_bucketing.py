"""Percentage rollouts bucket tenants exactly as Unleash does: the same murmur3
normalisation (checked against the UnleashClient package itself, on 10,000+ tenant ids and
through its evaluation engine), sticky everywhere, and monotonic in the percentage."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from uuid import UUID

from UnleashClient.utils import normalized_hash as unleash_normalized_hash

from tenantry import TenantContext
from tenantry.flags import Flag, FlagEvaluator, FlagType, Rule, bucket, normalized_hash
from tests.flag_helpers import offline_unleash, tenant_ids

TENANTS = 12_000


def _ctx(tenant_id: UUID, tier: str = "free") -> TenantContext:
    return TenantContext(id=tenant_id, slug="x", tier=tier, schema="t_x")


def _rollout_flag(key: str, percentage: int, version: int = 1, group: str | None = None) -> Flag:
    rule = Rule("rollout", True, rollout=percentage, group=group)
    return Flag(key, FlagType.BOOLEAN, False, rules=(rule,), version=version)


def test_buckets_equal_unleash_normalized_hash_for_12000_tenant_ids() -> None:
    """Our bucket of every tenant id, in several groups, is UnleashClient's own
    ``normalized_hash(identifier, group)``."""
    ids = tenant_ids(TENANTS)
    for group in ("approval-workflow-v2", "checkout.theme", "group with spaces", "ü-group"):
        ours = [bucket(tenant_id, group) for tenant_id in ids]
        theirs = [unleash_normalized_hash(str(tenant_id), group) for tenant_id in ids]
        assert ours == theirs, group
        assert set(ours) == set(range(1, 101))  # every bucket 1-100 is used
    for normalizer in (100, 1000, 10_000):
        assert [normalized_hash(str(t), "g", normalizer) for t in ids[:2000]] == [
            unleash_normalized_hash(str(t), "g", normalizer) for t in ids[:2000]
        ]


def test_rollout_decisions_agree_with_the_unleash_engine() -> None:
    """The same rollout in both systems (Unleash flexibleRollout, stickiness userId = tenant
    id, groupId = flag key or an explicit group) enables exactly the same tenants."""
    ids = tenant_ids(1500, seed=7)
    for percentage, group in ((1, None), (25, None), (50, "shared-group"), (99, None)):
        key = f"agree-{percentage}"
        evaluator = FlagEvaluator()
        evaluator.replace([_rollout_flag(key, percentage, group=group)])
        strategy = {
            "name": "flexibleRollout",
            "parameters": {
                "rollout": str(percentage),
                "stickiness": "userId",
                "groupId": group or key,
            },
        }
        client = offline_unleash(
            [{"name": key, "enabled": True, "strategies": [strategy]}], f"agree-{percentage}"
        )
        ours = [evaluator.is_enabled(key, tenant=_ctx(t)) for t in ids]
        theirs = [client.is_enabled(key, {"userId": str(t)}) for t in ids]
        assert ours == theirs, percentage
        assert 0 < sum(ours) < len(ids)


def test_raising_the_percentage_never_drops_a_tenant() -> None:
    """From 0 % to 100 % in steps of 1, every tenant that was in stays in, and the share
    tracks the percentage."""
    contexts = [_ctx(t) for t in tenant_ids(5000, seed=11)]
    evaluator = FlagEvaluator()
    previous: set[UUID] = set()
    for percentage in range(101):
        evaluator.replace([_rollout_flag("mono", percentage, version=percentage + 1)])
        now = {c.id for c in contexts if evaluator.is_enabled("mono", tenant=c)}
        assert previous <= now, f"a tenant dropped out when raising to {percentage}%"
        assert abs(len(now) - percentage * len(contexts) / 100) < 0.03 * len(contexts)
        previous = now
    assert len(previous) == len(contexts)


def test_buckets_are_sticky_across_recompiles_unrelated_changes_and_processes() -> None:
    """A tenant's answer depends only on (group, tenant id): not on the evaluator instance,
    on other parts of the flag, or on the process (hash randomisation included)."""
    ids = tenant_ids(1000, seed=3)
    first = FlagEvaluator()
    first.replace([_rollout_flag("sticky", 30)])
    baseline = [first.is_enabled("sticky", tenant=_ctx(t)) for t in ids]

    other = FlagEvaluator()
    busier = Flag(
        "sticky",
        FlagType.BOOLEAN,
        False,
        description="now with more rules",
        rules=(Rule("pro", True, tiers=("pro",)), Rule("rollout", True, rollout=30)),
        version=2,
    )
    other.replace([busier])
    assert [other.is_enabled("sticky", tenant=_ctx(t)) for t in ids] == baseline

    script = (
        "import json, sys, uuid; from tenantry.flags import bucket; "
        "print(json.dumps([bucket(uuid.UUID(line.strip()), 'sticky') for line in sys.stdin]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        input="\n".join(map(str, ids)),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    )
    assert [b <= 30 for b in json.loads(done.stdout)] == baseline


def test_each_flag_buckets_independently() -> None:
    """Two 25 % rollouts of different flags pick different tenants (the flag key is the
    group), so one unlucky tenant is not first into every experiment."""
    contexts = [_ctx(t) for t in tenant_ids(4000, seed=5)]
    evaluator = FlagEvaluator()
    evaluator.replace([_rollout_flag("left", 25), _rollout_flag("right", 25)])
    left = {c.id for c in contexts if evaluator.is_enabled("left", tenant=c)}
    right = {c.id for c in contexts if evaluator.is_enabled("right", tenant=c)}
    overlap = len(left & right) / len(contexts)
    assert 0.04 < overlap < 0.09  # independent: about 25 % x 25 % = 6.25 %
