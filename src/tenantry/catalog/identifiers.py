"""Tenant identifiers: slug rules, reserved words, schema names and uuid parsing.

Everything that turns outside input into a tenant key goes through here, so hostile input
(quotes, semicolons, ``../``, unicode look-alikes, huge values) is refused in one place,
before any SQL is built. Schema names are derived, never taken from input, and are always
quoted when they reach SQL.
"""

from __future__ import annotations

import re
from uuid import UUID

from tenantry.catalog.errors import InvalidTenantIdentifierError

SLUG_PATTERN = re.compile(r"[a-z][a-z0-9-]{1,38}")
# A canonical uuid that starts with a-f also matches SLUG_PATTERN: it must win, and no slug
# may take that shape, or a tenant id would be looked up as a slug.
UUID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
SCHEMA_PREFIX = "t_"
MAX_IDENTIFIER_LENGTH = 64

RESERVED_SLUGS = frozenset(
    {
        "admin",
        "api",
        "app",
        "assets",
        "auth",
        "billing",
        "cdn",
        "console",
        "dashboard",
        "default",
        "docs",
        "help",
        "internal",
        "localhost",
        "login",
        "logout",
        "mail",
        "metrics",
        "null",
        "openapi",
        "platform",
        "pool",
        "postgres",
        "public",
        "root",
        "signup",
        "static",
        "status",
        "support",
        "system",
        "template",
        "tenant",
        "tenants",
        "tenantry",
        "test",
        "www",
    }
)


def validate_slug(slug: str) -> str:
    """Return ``slug`` if it is a usable tenant slug, else raise.

    Rules: ``^[a-z][a-z0-9-]{1,38}$`` (ASCII only), no leading/trailing/double hyphen, not a
    reserved word.
    """
    if not isinstance(slug, str) or not SLUG_PATTERN.fullmatch(slug):
        raise InvalidTenantIdentifierError(
            f"invalid tenant slug {_preview(slug)}: use 2-39 characters a-z, 0-9 and '-', "
            "starting with a letter"
        )
    if UUID_PATTERN.fullmatch(slug):
        raise InvalidTenantIdentifierError(
            f"invalid tenant slug {slug!r}: it has the shape of a tenant id (uuid)"
        )
    if slug.endswith("-") or "--" in slug:
        raise InvalidTenantIdentifierError(
            f"invalid tenant slug {slug!r}: no trailing or doubled '-'"
        )
    if slug in RESERVED_SLUGS or slug.startswith(("pg-", "tenantry-")):
        raise InvalidTenantIdentifierError(f"tenant slug {slug!r} is reserved; choose another")
    return slug


def schema_name_for(slug: str) -> str:
    """The PostgreSQL schema of a tenant: ``t_`` + slug with ``-`` as ``_`` (injective,
    since slugs have no ``_``; at most 41 characters, under PostgreSQL's 63)."""
    return SCHEMA_PREFIX + validate_slug(slug).replace("-", "_")


def parse_tenant_key(value: str) -> str | UUID:
    """Parse an outside identifier (header, token claim, CLI argument) into a slug or uuid.

    Reserved words are accepted here (they simply name no tenant); only the shape is checked.
    """
    if not isinstance(value, str) or not value or len(value) > MAX_IDENTIFIER_LENGTH:
        raise InvalidTenantIdentifierError(f"invalid tenant identifier {_preview(value)}")
    if UUID_PATTERN.fullmatch(value):
        return UUID(value)
    if SLUG_PATTERN.fullmatch(value):
        return value
    try:
        parsed = UUID(value)
    except ValueError:
        raise InvalidTenantIdentifierError(
            f"invalid tenant identifier {_preview(value)}: expected a slug or a uuid"
        ) from None
    if str(parsed) != value.lower():
        # UUID() also accepts braces, urn: prefixes and missing hyphens; be strict.
        raise InvalidTenantIdentifierError(f"invalid tenant identifier {_preview(value)}")
    return parsed


def _preview(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 50 else text[:47] + "..."
