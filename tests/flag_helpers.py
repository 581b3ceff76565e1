"""Shared helpers of the feature-flag tests: deterministic tenants and an offline Unleash
client (bootstrapped from a dict, no server, no metrics) to compare against."""

from __future__ import annotations

import json
import random
from typing import Any
from uuid import UUID

from UnleashClient import UnleashClient
from UnleashClient.cache import BaseCache
from UnleashClient.constants import FEATURES_URL
from UnleashClient.utils import InstanceAllowType

from tenantry import TenantContext


def tenant(
    tier: str = "free", ring: int = 0, *, seed: int | None = None, **attributes: Any
) -> TenantContext:
    """A tenant context with a random (or seeded) uuid."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test ids, not secrets
    tenant_id = UUID(int=rng.getrandbits(128), version=4)
    return TenantContext(
        id=tenant_id,
        slug=f"t{tenant_id.hex[:8]}",
        tier=tier,
        schema=f"t_{tenant_id.hex[:8]}",
        ring=ring,
        attributes=attributes,
    )


def tenant_ids(count: int, seed: int = 20240601) -> list[UUID]:
    """``count`` distinct, reproducible uuid4 tenant ids."""
    rng = random.Random(seed)  # noqa: S311 - reproducible test ids, not secrets
    return [UUID(int=rng.getrandbits(128), version=4) for _ in range(count)]


class MemoryCache(BaseCache):
    """An in-memory Unleash cache, bootstrapped with a features document."""

    def __init__(self, features: dict[str, Any]) -> None:
        self._data: dict[str, Any] = {FEATURES_URL: json.dumps(features)}
        self.bootstrapped = True

    def set(self, key: str, value: Any) -> None:
        self._data[key] = value

    def mset(self, data: dict[str, Any]) -> None:
        self._data.update(data)

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def exists(self, key: str) -> bool:
        return key in self._data

    def destroy(self) -> None:
        self._data.clear()


def offline_unleash(features: list[dict[str, Any]], app_name: str) -> UnleashClient:
    """An UnleashClient evaluating ``features`` offline (never initialised: no network)."""
    return UnleashClient(
        url="http://127.0.0.1:9",
        app_name=app_name,
        cache=MemoryCache({"version": 1, "features": features}),
        disable_metrics=True,
        disable_registration=True,
        multiple_instance_mode=InstanceAllowType.SILENTLY_ALLOW,
    )
