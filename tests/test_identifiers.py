"""Tenant identifiers: hostile input is refused in one place, before any SQL is built."""

from __future__ import annotations

from uuid import UUID

import pytest

from tenantry.catalog import (
    InvalidTenantIdentifierError,
    parse_tenant_key,
    schema_name_for,
    validate_slug,
)
from tenantry.catalog.identifiers import RESERVED_SLUGS
from tenantry.errors import TenantryError

SAMPLE_UUID = "0b6f4b1e-9d2a-4c3e-8f1a-2b3c4d5e6f70"
# Starts with a letter, so it also has the shape of a slug.
LETTER_UUID = "deadbeef-dead-beef-dead-beefdeadbeef"


@pytest.mark.parametrize(
    "slug",
    ["ab", "acme", "acme-corp", "a1", "x9-2-3", "big-co-2024", "a" * 39, "z" + "0" * 38],
)
def test_good_slugs_are_accepted_unchanged(slug: str) -> None:
    """Lowercase ASCII, digits and single inner hyphens, 2-39 characters, are valid."""
    assert validate_slug(slug) == slug


@pytest.mark.parametrize(
    ("slug", "why"),
    [
        ("", "empty"),
        ("a", "too short"),
        ("a" * 40, "too long"),
        ("Acme", "uppercase"),
        ("ACME", "uppercase"),
        ("ac_me", "underscore"),
        ("1acme", "leading digit"),
        ("-acme", "leading hyphen"),
        ("acme-", "trailing hyphen"),
        ("ac--me", "double hyphen"),
        ("ac me", "space"),
        ("acme\n", "trailing newline"),
        ("acme.corp", "dot"),
        ("\u0430cme", "Cyrillic a"),
        ("acm\u00e9", "accented letter"),
    ],
)
def test_bad_slugs_are_rejected(slug: str, why: str) -> None:
    """Malformed slugs raise InvalidTenantIdentifierError."""
    with pytest.raises(InvalidTenantIdentifierError):
        validate_slug(slug)


@pytest.mark.parametrize(
    "slug", ["admin", "www", "api", "public", "postgres", "pg-x", "pg-catalog", "tenantry-x"]
)
def test_reserved_slugs_are_rejected(slug: str) -> None:
    """Reserved words and the pg-/tenantry- prefixes cannot name a tenant."""
    with pytest.raises(InvalidTenantIdentifierError, match="reserved"):
        validate_slug(slug)


def test_every_reserved_word_is_rejected() -> None:
    """The whole reserved list is enforced, not just a sample."""
    accepted = []
    for word in sorted(RESERVED_SLUGS):
        try:
            validate_slug(word)
        except InvalidTenantIdentifierError:
            continue
        accepted.append(word)
    assert accepted == []


@pytest.mark.parametrize("slug", [LETTER_UUID, "abcdef01-2345-6789-abcd-ef0123456789"])
def test_uuid_shaped_slugs_are_rejected(slug: str) -> None:
    """A slug that looks like a tenant id would be ambiguous in lookups: refused."""
    with pytest.raises(InvalidTenantIdentifierError, match="uuid"):
        validate_slug(slug)


def test_non_string_slug_is_rejected() -> None:
    """A non-string slug is refused, not coerced."""
    with pytest.raises(InvalidTenantIdentifierError):
        validate_slug(123)  # type: ignore[arg-type]


def test_slug_error_is_a_tenantry_error_with_a_bounded_message() -> None:
    """The error is part of tenantry's family and does not echo huge input back."""
    with pytest.raises(TenantryError) as info:
        validate_slug("X" * 10_000)
    assert len(str(info.value)) < 300


@pytest.mark.parametrize(
    ("slug", "schema"),
    [("acme", "t_acme"), ("acme-corp", "t_acme_corp"), ("a-b-c", "t_a_b_c"), ("x1", "t_x1")],
)
def test_schema_name_is_t_prefix_and_underscores(slug: str, schema: str) -> None:
    """Schema names are derived: 't_' + slug with '-' replaced by '_'."""
    assert schema_name_for(slug) == schema


def test_schema_name_fits_postgres_identifier_limit() -> None:
    """The longest slug still gives a schema name under PostgreSQL's 63 bytes."""
    assert len(schema_name_for("a" * 39)) == 41


@pytest.mark.parametrize("slug", ["Acme", "admin", "ac_me", "a;b", "acme-"])
def test_schema_name_validates_the_slug(slug: str) -> None:
    """schema_name_for never builds a name from an invalid slug."""
    with pytest.raises(InvalidTenantIdentifierError):
        schema_name_for(slug)


def test_parse_tenant_key_returns_slugs_as_text() -> None:
    """A slug-shaped key comes back as the same string."""
    assert parse_tenant_key("acme-corp") == "acme-corp"


def test_parse_tenant_key_accepts_reserved_words_as_shapes() -> None:
    """Reserved words are well-formed keys (they simply name no tenant)."""
    assert parse_tenant_key("admin") == "admin"


@pytest.mark.parametrize(
    "value", [SAMPLE_UUID, SAMPLE_UUID.upper(), LETTER_UUID, LETTER_UUID.upper()]
)
def test_parse_tenant_key_returns_uuids(value: str) -> None:
    """A canonical uuid (any case) parses into a UUID."""
    parsed = parse_tenant_key(value)
    assert isinstance(parsed, UUID)
    assert parsed == UUID(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "a",
        "acme'",
        "acme'--",
        "' OR 1=1 --",
        'acme"',
        "acme;",
        "acme; DROP SCHEMA tenantry CASCADE",
        "../acme",
        "..%2facme",
        "acme/..",
        "\u0430cme",  # Cyrillic a
        "acm\u0435",  # Cyrillic e
        "acme\u200b",  # zero-width space
        "acme\x00",
        "acme\n",
        " acme",
        "ACME",
        "a" * 65,
        "a" * 10_000,
        "x" * 10_240,
        "{" + SAMPLE_UUID + "}",
        "urn:uuid:" + SAMPLE_UUID,
        SAMPLE_UUID.replace("-", ""),
        SAMPLE_UUID + " ",
        SAMPLE_UUID.replace("0", "\uff10"),  # fullwidth digit zero
        SAMPLE_UUID[:-1],
    ],
)
def test_parse_tenant_key_rejects_hostile_input(value: str) -> None:
    """Quotes, semicolons, paths, look-alikes, huge values and loose uuid forms are refused."""
    with pytest.raises(InvalidTenantIdentifierError):
        parse_tenant_key(value)


def test_parse_tenant_key_rejects_non_strings() -> None:
    """Only strings are parsed."""
    with pytest.raises(InvalidTenantIdentifierError):
        parse_tenant_key(None)  # type: ignore[arg-type]


def test_parse_tenant_key_error_message_is_bounded() -> None:
    """A 10 kB value is not echoed back in full in the error message."""
    with pytest.raises(InvalidTenantIdentifierError) as info:
        parse_tenant_key("q" * 10_240)
    assert len(str(info.value)) < 200
