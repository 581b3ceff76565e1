"""Bearer tokens: signed JWTs (HS256) naming a tenant, or the platform-admin scope.

Claims: ``iss``, ``sub``, ``iat``, ``exp``, and either ``tenant`` (slug or id) with a
``role`` (``admin`` or ``member``), or ``scope: "platform:admin"`` for the control-plane
admin API, which no tenant token may call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import jwt

from tenantry.errors import ConfigurationError
from tenantry.settings import AuthSettings
from tenantry.web.errors import HTTPProblem

PLATFORM_ADMIN_SCOPE = "platform:admin"
ROLES = ("admin", "member")
MAX_TOKEN_LENGTH = 4096


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as proven by a verified token."""

    subject: str
    tenant: str | None = None
    role: str = "member"
    platform_admin: bool = False
    claims: dict[str, Any] = field(default_factory=dict, compare=False)


class TokenService:
    """Issues and verifies tenantry's bearer tokens."""

    def __init__(self, settings: AuthSettings) -> None:
        self.settings = settings

    @property
    def _secret(self) -> str:
        if not self.settings.jwt_secret:
            raise ConfigurationError(
                "TENANTRY_JWT_SECRET is not set; bearer tokens cannot be issued or verified"
            )
        return self.settings.jwt_secret

    def issue(
        self,
        *,
        subject: str,
        tenant: str | None = None,
        role: str = "member",
        platform_admin: bool = False,
        ttl_seconds: int | None = None,
    ) -> str:
        """Sign a token for a tenant user, or (``platform_admin``) for the admin API."""
        if platform_admin == (tenant is not None):
            raise ValueError("a token names exactly one of: a tenant, or the platform-admin scope")
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.settings.issuer,
            "sub": subject,
            "iat": now,
            "exp": now + (ttl_seconds or self.settings.token_ttl_seconds),
        }
        if platform_admin:
            claims["scope"] = PLATFORM_ADMIN_SCOPE
        else:
            claims["tenant"] = tenant
            claims["role"] = role
        return jwt.encode(claims, self._secret, algorithm=self.settings.algorithm)

    def verify(self, token: str) -> Principal:
        """Verify signature, issuer and expiry; raise a 401 :class:`HTTPProblem` if bad."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise HTTPProblem(401, "invalid_token", "bearer token is too long")
        if not self.settings.jwt_secret:
            raise HTTPProblem(401, "invalid_token", "bearer tokens are not enabled on this server")
        try:
            claims = jwt.decode(
                token,
                self.settings.jwt_secret,
                algorithms=[self.settings.algorithm],
                issuer=self.settings.issuer,
                options={"require": ["exp", "iat", "sub", "iss"]},
            )
        except jwt.ExpiredSignatureError:
            raise HTTPProblem(401, "token_expired", "bearer token has expired") from None
        except jwt.PyJWTError as exc:
            raise HTTPProblem(401, "invalid_token", f"bearer token rejected: {exc}") from None
        tenant = claims.get("tenant")
        platform_admin = claims.get("scope") == PLATFORM_ADMIN_SCOPE
        if tenant is not None and not isinstance(tenant, str):
            raise HTTPProblem(401, "invalid_token", "the token's tenant claim must be a string")
        if not platform_admin and tenant is None:
            raise HTTPProblem(401, "invalid_token", "the token names no tenant")
        role = claims.get("role", "member")
        return Principal(
            subject=str(claims["sub"]),
            tenant=tenant,
            role=role if role in ROLES else "member",
            platform_admin=platform_admin,
            claims=claims,
        )

    def from_authorization(self, header: bytes | None) -> Principal | None:
        """The principal behind an ``Authorization`` header value, ``None`` when absent."""
        if not header:
            return None
        try:
            text = header.decode("ascii")
        except UnicodeDecodeError:
            raise HTTPProblem(401, "invalid_token", "malformed Authorization header") from None
        scheme, _, token = text.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPProblem(
                401,
                "invalid_token",
                "use 'Authorization: Bearer <token>'",
            )
        return self.verify(token.strip())
