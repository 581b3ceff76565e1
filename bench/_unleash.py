"""The Unleash peer, offline: an ``UnleashClient`` bootstrapped from a features document,
with no server, no metrics and no registration. ``bench/flags.py`` measures it and the
flag tests use it as the reference for rollout bucketing."""

from __future__ import annotations

import json
from typing import Any

from UnleashClient import UnleashClient
from UnleashClient.cache import BaseCache
from UnleashClient.constants import FEATURES_URL
from UnleashClient.utils import InstanceAllowType


class MemoryCache(BaseCache):
    """Unleash's cache, in memory and bootstrapped: the client never talks to a server."""

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
