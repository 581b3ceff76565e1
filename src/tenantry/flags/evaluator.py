"""Flag evaluation against an in-memory snapshot: pure, no I/O, about a microsecond.

Each flag is compiled once per version into one small function (see
:mod:`tenantry.flags.compiler`), so evaluating is a dict lookup, a few attribute tests and
returning a shared, precomputed result. The snapshot is a dict that is replaced (never
mutated) when flags change, so readers need no lock, from any thread.

Precedence (documented in the README, "Feature flags"):

1. the kill switch: a disabled flag serves its default to everyone (``DISABLED``);
2. explicit tenant targets (``TARGETING_MATCH``);
3. rules, in order; the first that matches serves its value (``RULE_MATCH``, or ``SPLIT``
   when the rule has a percentage rollout and the tenant's bucket is inside it; a tenant
   outside the rollout falls through to the next rule);
4. the flag's default (``DEFAULT``).

Evaluation never raises: an unknown flag, a wrong type, no tenant or a broken definition
returns the caller's default with reason ``ERROR`` and an error code.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tenantry.context import TenantContext

# The ContextVar itself: its C-level get() is the cheapest way to read the bound tenant.
from tenantry.context import _current as _bound_tenant
from tenantry.flags.compiler import BrokenFlag, CompiledFlag
from tenantry.flags.model import Flag, FlagType, FlagValue
from tenantry.flags.resolution import ErrorCode, Resolution, error_resolution

logger = logging.getLogger("tenantry.flags")

ChangeCallback = Callable[[frozenset[str]], None]
_BOOLEAN, _STRING, _NUMBER, _JSON = FlagType  # enum attribute lookups are slow on 3.11


class FlagEvaluator:
    """Evaluates flags from the current in-memory snapshot.

    The tenant is the one bound to the current context unless one is passed explicitly.
    """

    def __init__(self) -> None:
        self._flags: dict[str, CompiledFlag] = {}
        self._subscribers: list[ChangeCallback] = []
        # Told (flag key, variant) after each evaluation from a flag (metrics).
        self.on_evaluation: Callable[[str, str], None] | None = None

    # -- evaluation (hot path) ------------------------------------------------------------
    def evaluate(self, key: str, tenant: TenantContext | None = None) -> Resolution:
        """Evaluate ``key`` for ``tenant`` (default: the current tenant), whatever its type."""
        flag = self._flags.get(key)
        if flag is None:
            return _not_found(key, None)
        if tenant is None:
            tenant = _bound_tenant.get()
            if tenant is None:
                return _no_tenant(flag, None)
        try:
            return self._observed(flag.evaluate(tenant))
        except Exception as exc:  # a bad attribute value must not fail the request
            return _failed(flag, None, exc)

    def resolve(
        self,
        key: str,
        flag_type: FlagType,
        default: FlagValue,
        tenant: TenantContext | None = None,
    ) -> Resolution:
        """Evaluate ``key`` expecting ``flag_type``; anything else yields ``default``."""
        flag = self._flags.get(key)
        if flag is None:
            return _not_found(key, default)
        if flag.type is not flag_type:
            if flag.broken is not None:
                return error_resolution(
                    key, default, ErrorCode.PARSE_ERROR, flag.broken.error_message or "", 0
                )
            return error_resolution(
                key,
                default,
                ErrorCode.TYPE_MISMATCH,
                f"flag {key!r} is a {flag.type} flag, not {flag_type}",
                flag.version,
            )
        if tenant is None:
            tenant = _bound_tenant.get()
            if tenant is None:
                return _no_tenant(flag, default)
        try:
            return self._observed(flag.evaluate(tenant))
        except Exception as exc:
            return _failed(flag, default, exc)

    def _observed(self, resolution: Resolution) -> Resolution:
        if self.on_evaluation is not None:
            self.on_evaluation(resolution.key, resolution.variant or str(resolution.reason))
        return resolution

    def is_enabled(
        self, key: str, default: bool = False, tenant: TenantContext | None = None
    ) -> bool:
        """A boolean flag's value for the tenant; ``default`` on any error."""
        flag = self._flags.get(key)
        if flag is None or flag.type is not _BOOLEAN:
            return default
        if tenant is None:
            tenant = _bound_tenant.get()
            if tenant is None:
                return default
        try:
            value: bool = self._observed(flag.evaluate(tenant)).value
        except Exception:
            return default
        return value

    def get_string(self, key: str, default: str, tenant: TenantContext | None = None) -> str:
        """A string flag's value for the tenant; ``default`` on any error."""
        value: str = self.resolve(key, _STRING, default, tenant).value
        return value

    def get_number(
        self, key: str, default: float, tenant: TenantContext | None = None
    ) -> int | float:
        """A number flag's value for the tenant; ``default`` on any error."""
        value: int | float = self.resolve(key, _NUMBER, default, tenant).value
        return value

    def get_json(self, key: str, default: Any, tenant: TenantContext | None = None) -> Any:
        """A JSON flag's value for the tenant; ``default`` on any error."""
        return self.resolve(key, _JSON, default, tenant).value

    def for_tenant(self, tenant: TenantContext) -> TenantFlags:
        """This evaluator bound to one tenant (what request handlers receive)."""
        return TenantFlags(self, tenant)

    # -- the snapshot ---------------------------------------------------------------------
    def definitions(self) -> dict[str, Flag | BrokenFlag]:
        """The flag definitions in the current snapshot, by key."""
        return {key: compiled.flag for key, compiled in self._flags.items()}

    def version_of(self, key: str) -> int | None:
        """The version of ``key`` in the snapshot, ``None`` if absent."""
        flag = self._flags.get(key)
        return None if flag is None else flag.version

    def replace(self, flags: Iterable[Flag | BrokenFlag]) -> frozenset[str]:
        """Install a complete snapshot; returns the keys whose version changed.

        A flag already held at a newer version than ``flags`` has (a local write that the
        load did not see yet) is kept.
        """
        old = self._flags
        new: dict[str, CompiledFlag] = {}
        for flag in flags:
            current = old.get(flag.key)
            if current is not None and current.version >= flag.version:
                new[flag.key] = current
            else:
                new[flag.key] = CompiledFlag(flag)
        changed = {key for key in old.keys() - new.keys()} | {
            key for key, compiled in new.items() if old.get(key) is not compiled
        }
        self._flags = new
        return self._announce(changed)

    def apply(self, keys: Iterable[str], flags: Iterable[Flag | BrokenFlag]) -> frozenset[str]:
        """Update ``keys`` from freshly loaded ``flags``: newer versions replace older ones,
        keys with no row any more are removed. Returns the keys that changed."""
        loaded = {flag.key: flag for flag in flags}
        new = dict(self._flags)
        changed: set[str] = set()
        for key in set(keys) | loaded.keys():
            flag = loaded.get(key)
            current = new.get(key)
            if flag is None:
                if current is not None:
                    del new[key]
                    changed.add(key)
            elif current is None or flag.version > current.version:
                new[key] = CompiledFlag(flag)
                changed.add(key)
        if changed:
            self._flags = new
        return self._announce(changed)

    def subscribe(self, callback: ChangeCallback) -> Callable[[], None]:
        """Call ``callback(changed_keys)`` after every snapshot change; returns an
        unsubscribe function. Callbacks run on the event loop: keep them short."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback)

    def _announce(self, changed: set[str]) -> frozenset[str]:
        keys = frozenset(changed)
        if keys:
            for callback in list(self._subscribers):
                try:
                    callback(keys)
                except Exception:
                    logger.exception("flag change callback %r failed", callback)
        return keys

    def __contains__(self, key: object) -> bool:
        return key in self._flags

    def __len__(self) -> int:
        return len(self._flags)


@dataclass(frozen=True, slots=True)
class TenantFlags:
    """A :class:`FlagEvaluator` bound to one tenant: what request handlers get."""

    evaluator: FlagEvaluator
    tenant: TenantContext

    def evaluate(self, key: str) -> Resolution:
        """The flag's value and the reason for it."""
        return self.evaluator.evaluate(key, self.tenant)

    def is_enabled(self, key: str, default: bool = False) -> bool:
        """A boolean flag's value; ``default`` on any error."""
        return self.evaluator.is_enabled(key, default, self.tenant)

    def get_string(self, key: str, default: str) -> str:
        """A string flag's value; ``default`` on any error."""
        return self.evaluator.get_string(key, default, self.tenant)

    def get_number(self, key: str, default: float) -> int | float:
        """A number flag's value; ``default`` on any error."""
        return self.evaluator.get_number(key, default, self.tenant)

    def get_json(self, key: str, default: Any) -> Any:
        """A JSON flag's value; ``default`` on any error."""
        return self.evaluator.get_json(key, default, self.tenant)


def _not_found(key: str, default: FlagValue) -> Resolution:
    return error_resolution(key, default, ErrorCode.FLAG_NOT_FOUND, f"no flag {key!r}")


def _no_tenant(flag: CompiledFlag, default: FlagValue) -> Resolution:
    return error_resolution(
        flag.key,
        default,
        ErrorCode.TARGETING_KEY_MISSING,
        "no tenant is bound to this context; flags are evaluated per tenant",
        flag.version,
    )


def _failed(flag: CompiledFlag, default: FlagValue, exc: Exception) -> Resolution:
    logger.warning("evaluating flag %r failed: %r", flag.key, exc)
    return error_resolution(flag.key, default, ErrorCode.GENERAL, repr(exc), flag.version)
