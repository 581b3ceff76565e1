"""Request-body types for values PostgreSQL must be able to store.

Input PostgreSQL would reject (a NUL character in text, an integer past ``bigint``) is
refused at validation, as a 422 naming the field, instead of failing in SQL as a 500.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

BIGINT_MAX = 2**63 - 1


def reject_nul(value: str) -> str:
    """Refuse strings containing U+0000, which PostgreSQL ``text``/``jsonb`` cannot hold."""
    if "\x00" in value:
        raise ValueError("must not contain NUL (U+0000) characters")
    return value


PgText = Annotated[str, AfterValidator(reject_nul)]
"""A string PostgreSQL can store (no NUL)."""

RowId = Annotated[int, Field(gt=0, le=BIGINT_MAX)]
"""A positive ``bigint`` row id."""
