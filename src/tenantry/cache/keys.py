"""The one way tenantry builds Redis keys: ``t:{<tenant_id>}:<namespace>:<key>``.

The braces are a Redis Cluster hash tag: only the tenant id is hashed, so every key of a
tenant lives in one slot. That lets one Lua script touch several of a tenant's keys on a
cluster, and lets a tenant's whole cache be invalidated by bumping one generation key,
never by ``KEYS`` or ``FLUSHDB``.

Namespaces that start with ``_`` are tenantry's own (generations, locks, sessions, rate
limits); product namespaces start with a lower-case letter or digit, so they cannot collide.
"""

from __future__ import annotations

import hashlib
import re
from uuid import UUID

from tenantry.cache.errors import InvalidCacheKeyError
from tenantry.context import TenantContext, current_tenant

NAMESPACE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_INTERNAL = re.compile(r"_[a-z0-9_.-]{1,63}")
MAX_KEY_LENGTH = 200

KeyPart = str | int | UUID
TenantRef = TenantContext | UUID | None


def tenant_id_of(tenant: TenantRef) -> UUID:
    """The id of ``tenant``, or of the tenant bound to the current context when ``None``."""
    if tenant is None:
        return current_tenant().id
    return tenant.id if isinstance(tenant, TenantContext) else tenant


class KeyBuilder:
    """Builds tenant-scoped keys, optionally under a deployment-wide ``prefix``.

    Keys longer than :data:`MAX_KEY_LENGTH` characters (built from request input, say) are
    replaced by their SHA-256, so no caller can make Redis store unbounded key names.
    """

    def __init__(self, prefix: str = "") -> None:
        if "{" in prefix or "}" in prefix:
            raise InvalidCacheKeyError("a key prefix must not contain '{' or '}' (hash tags)")
        self.prefix = prefix

    def tenant_prefix(self, tenant: TenantRef = None) -> str:
        """``<prefix>t:{<tenant_id>}:``, the start of every key of that tenant."""
        return f"{self.prefix}t:{{{tenant_id_of(tenant)}}}:"

    def key(self, namespace: str, key: KeyPart, tenant: TenantRef = None) -> str:
        """The key of ``key`` in a product ``namespace`` for ``tenant`` (default: current)."""
        if not NAMESPACE.fullmatch(namespace):
            raise InvalidCacheKeyError(
                f"cache namespace {namespace!r} must match {NAMESPACE.pattern} "
                "(lower-case letters, digits, '_', '.', '-'; at most 64 characters)"
            )
        return self._join(namespace, key, tenant)

    def internal(self, namespace: str, key: KeyPart, tenant: TenantRef = None) -> str:
        """A key in one of tenantry's own namespaces (``_gen``, ``_lock``, ``_session``...)."""
        if not _INTERNAL.fullmatch(namespace):
            raise InvalidCacheKeyError(f"internal namespaces start with '_', got {namespace!r}")
        return self._join(namespace, key, tenant)

    def platform(self, namespace: str, key: KeyPart) -> str:
        """A key that belongs to no tenant (``<prefix>p:<namespace>:<key>``)."""
        if not NAMESPACE.fullmatch(namespace):
            raise InvalidCacheKeyError(f"invalid platform namespace {namespace!r}")
        return f"{self.prefix}p:{namespace}:{_bounded(str(key))}"

    def _join(self, namespace: str, key: KeyPart, tenant: TenantRef) -> str:
        return f"{self.tenant_prefix(tenant)}{namespace}:{_bounded(str(key))}"


def _bounded(key: str) -> str:
    if len(key) <= MAX_KEY_LENGTH:
        return key
    return "#sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
