"""Request → tenant resolution.

The chain tries, in the configured order, the host's subdomain (``acme.localhost``), a
custom domain from the catalog, the ``X-Tenant-ID`` header (slug or uuid) and the bearer
token's ``tenant`` claim. Every source that names a tenant must name the *same* one: a
token for tenant A presented on tenant B's host is refused (403). Catalog lookups go
through the cached :class:`~tenantry.catalog.TenantDirectory`, so an ordinary request
costs no database round trip to resolve.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from uuid import UUID

from tenantry.catalog.directory import TenantDirectory
from tenantry.catalog.errors import InvalidTenantIdentifierError
from tenantry.catalog.identifiers import parse_tenant_key
from tenantry.catalog.models import Tenant, TenantStatus
from tenantry.context import TenantContext
from tenantry.settings import ResolutionSettings
from tenantry.web.auth import Principal, TokenService
from tenantry.web.errors import HTTPProblem

_HOST = re.compile(r"[a-z0-9.-]{1,253}")
MAX_HEADER_LENGTH = 256


@dataclass(frozen=True, slots=True)
class Resolution:
    """The outcome of resolving one request; ``context`` is ``tenant.context()``."""

    tenant: Tenant | None
    principal: Principal | None
    context: TenantContext | None = None


@dataclass(frozen=True, slots=True)
class _Memo:
    resolution: Resolution
    generation: int
    expires: float


class TenantResolver(Protocol):
    """Extension point: anything that maps an ASGI scope to a tenant and principal."""

    async def resolve(self, scope: Mapping[str, Any]) -> Resolution:
        """Resolve the request, or raise :class:`HTTPProblem` (4xx)."""


def _headers(scope: Mapping[str, Any], tenant_header: bytes) -> dict[bytes, bytes]:
    # Last one wins for duplicates except that duplicates of tenant-bearing headers are
    # refused below; ASGI header names are already lower-case.
    out: dict[bytes, bytes] = {}
    for name, value in scope.get("headers", ()):
        if name in out and name in (b"host", b"authorization", tenant_header):
            raise HTTPProblem(400, "invalid_request", f"duplicate {name.decode()} header")
        out[name] = value
    return out


class ChainResolver:
    """The standard resolution chain (see the module docstring)."""

    def __init__(
        self,
        directory: TenantDirectory,
        settings: ResolutionSettings,
        tokens: TokenService,
        *,
        auth_required: bool = False,
    ) -> None:
        self.directory = directory
        self.settings = settings
        self.tokens = tokens
        self.auth_required = auth_required
        self._header = settings.header.lower().encode()
        self._bases = tuple(base.lower().strip(".") for base in settings.base_domains)
        # Successful resolutions by (host, tenant header, authorization): an ordinary request
        # repeats one of a few combinations, so it is answered from here without parsing,
        # lookups or signature checks. An entry dies with any catalog change (the
        # directory's generation), at the directory's TTL, and at its token's expiry.
        self._memo: dict[tuple[bytes | None, bytes | None, bytes | None], _Memo] = {}
        self.memo_size = settings.cache_size

    async def resolve(self, scope: Mapping[str, Any]) -> Resolution:
        """Find the request's tenant and caller, checking that all sources agree."""
        headers = _headers(scope, self._header)
        key = (headers.get(b"host"), headers.get(self._header), headers.get(b"authorization"))
        memo = self._memo.get(key)
        if memo is not None:
            if memo.generation == self.directory.generation and memo.expires > time.monotonic():
                return memo.resolution
            del self._memo[key]
        generation = self.directory.generation
        resolution = await self._resolve(headers)
        expires = time.monotonic() + self.directory.ttl
        if resolution.principal is not None:
            remaining = float(resolution.principal.claims.get("exp", 0)) - time.time()
            expires = min(expires, time.monotonic() + remaining)
        if len(self._memo) >= self.memo_size:
            self._memo.clear()  # hostile variety cannot grow it; the common keys return at once
        self._memo[key] = _Memo(resolution, generation, expires)
        return resolution

    async def _resolve(self, headers: dict[bytes, bytes]) -> Resolution:
        principal = self.tokens.from_authorization(headers.get(b"authorization"))
        if self.auth_required and principal is None:
            raise HTTPProblem(
                401,
                "authentication_required",
                "send 'Authorization: Bearer <token>'",
                headers={"www-authenticate": "Bearer"},
            )
        found: list[tuple[str, Tenant]] = []
        for source in self.settings.order:
            tenant = await self._from_source(source, headers, principal)
            if tenant is not None:
                found.append((source, tenant))
        if not found:
            if principal is not None and principal.platform_admin:
                raise HTTPProblem(403, "forbidden", "a platform-admin token cannot act as a tenant")
            raise HTTPProblem(
                400,
                "tenant_required",
                "no tenant in this request: use <slug>.<domain> as host, the "
                f"{self.settings.header} header, or a bearer token",
            )
        source, tenant = found[0]
        for other_source, other in found[1:]:
            if other.id != tenant.id:
                raise HTTPProblem(
                    403,
                    "tenant_mismatch",
                    f"the tenant named by {other_source} differs from the one named by {source}",
                )
        if principal is not None and principal.tenant is None:
            raise HTTPProblem(403, "forbidden", "a platform-admin token cannot act as a tenant")
        if (
            principal is not None
            and principal.tenant is not None
            and all(name != "jwt" for name, _ in found)
        ):
            # "jwt" is not in the order, so the token did not take part above; its tenant
            # must still agree, or any tenant's token would open every other tenant.
            named = await self._lookup(principal.tenant, "token", not_found_status=403)
            if named.id != tenant.id:
                raise HTTPProblem(
                    403,
                    "tenant_mismatch",
                    f"the tenant named by the token differs from the one named by {source}",
                )
        self._check_status(tenant)
        return Resolution(tenant, principal, tenant.context())

    async def _from_source(
        self, source: str, headers: dict[bytes, bytes], principal: Principal | None
    ) -> Tenant | None:
        if source == "subdomain":
            return await self._from_host(headers.get(b"host"))
        if source == "header":
            raw = headers.get(self._header)
            if raw is None:
                return None
            return await self._lookup(self._decode(raw, self.settings.header), self.settings.header)
        if principal is None or principal.tenant is None:
            return None
        return await self._lookup(principal.tenant, "token", not_found_status=403)

    async def _from_host(self, raw: bytes | None) -> Tenant | None:
        if not raw:
            return None
        host = self._decode(raw, "Host").lower()
        if host.startswith("["):  # IPv6 literal
            return None
        host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        host = host.rstrip(".")
        if not _HOST.fullmatch(host):
            raise HTTPProblem(400, "invalid_host", "the Host header is not a valid host name")
        try:
            ipaddress.ip_address(host)
            return None
        except ValueError:
            pass
        for base in self._bases:
            if host == base:
                return None
            if host.endswith("." + base):
                label = host[: -len(base) - 1]
                if "." in label:
                    raise HTTPProblem(
                        400, "invalid_tenant_identifier", "nested subdomains name no tenant"
                    )
                return await self._lookup(label, "host")
        if "." not in host:
            return None
        return await self.directory.get_by_domain(host)

    async def _lookup(self, value: str, source: str, not_found_status: int = 404) -> Tenant:
        try:
            key: str | UUID = parse_tenant_key(value)
        except InvalidTenantIdentifierError as exc:
            raise HTTPProblem(400, "invalid_tenant_identifier", f"{source}: {exc}") from None
        tenant = await self.directory.get(key)
        if tenant is None or tenant.status == TenantStatus.DELETED:
            raise HTTPProblem(not_found_status, "tenant_not_found", f"{source}: no such tenant")
        return tenant

    @staticmethod
    def _decode(raw: bytes, what: str) -> str:
        if len(raw) > MAX_HEADER_LENGTH:
            raise HTTPProblem(400, "invalid_tenant_identifier", f"{what} value is too long")
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise HTTPProblem(
                400, "invalid_tenant_identifier", f"{what} value must be ASCII"
            ) from None

    @staticmethod
    def _check_status(tenant: Tenant) -> None:
        if tenant.status == TenantStatus.ACTIVE:
            return
        if tenant.status == TenantStatus.SUSPENDED:
            raise HTTPProblem(
                403,
                "tenant_suspended",
                f"tenant {tenant.slug!r} is suspended; contact your administrator",
            )
        raise HTTPProblem(
            403, "tenant_unavailable", f"tenant {tenant.slug!r} is {tenant.status.value}"
        )
