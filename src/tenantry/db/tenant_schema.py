"""The product's tenant schema, and its compilation into one provisioning script.

A product declares its tenant tables as an ordered chain of :class:`SchemaStep` (plain
DDL with unqualified names). Once per process, :meth:`TenantSchema.compile` runs the chain
in a scratch schema inside a transaction that is rolled back, learns which tables and
sequences it creates, and appends the safety net for each table:

* a ``tenant_id uuid NOT NULL DEFAULT current_setting('app.tenant_id')::uuid`` column
  (added when the step did not declare it),
* ``ENABLE`` + ``FORCE ROW LEVEL SECURITY`` and the ``tenant_isolation`` policy
  ``tenant_id = (SELECT current_setting('app.tenant_id', true)::uuid)`` — the setting
  wrapped in a scalar subquery, so PostgreSQL evaluates it once per query (an InitPlan)
  instead of once per row; same meaning, a fraction of the cost on every read,
* explicit grants to the application role (never ``ON ALL TABLES IN SCHEMA``, which scans
  the catalog and so costs more as the fleet grows).

The result is a script provisioning sends in a single round trip per tenant, and the same
SQL cut per step (:class:`CompiledStep`), which the fleet migrator applies to tenants that
are behind: a new tenant and a migrated one run exactly the same statements, so they
cannot drift apart.

A step marked ``transactional=False`` holds statements PostgreSQL refuses inside a
transaction block (``CREATE INDEX CONCURRENTLY``). The migrator runs it as written, one
statement at a time; provisioning and the compile dry-run run it without ``CONCURRENTLY``
— on a brand-new, empty table the plain form builds the same index, in the same
transaction as the rest of the schema.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection, sql
from psycopg.pq import TransactionStatus

from tenantry.db.errors import DatabaseError

POLICY_NAME = "tenant_isolation"
POLICY_EXPRESSION = "tenant_id = (SELECT current_setting('app.tenant_id', true)::uuid)"
COMPILE_TENANT_ID = "00000000-0000-0000-0000-000000000000"
_CONCURRENTLY = re.compile(r"\s+CONCURRENTLY\b", re.IGNORECASE)
_STATEMENT_END = re.compile(r";[ \t]*(?:--[^\n]*)?(?:\n|$)")


class SchemaDefinitionError(DatabaseError):
    """The product's tenant schema cannot be used as declared."""


@dataclass(frozen=True, slots=True)
class SchemaStep:
    """One versioned step of the tenant schema: DDL with unqualified names.

    Steps run inside tenantry's transaction: no ``BEGIN``/``COMMIT`` of their own. A step
    with ``transactional=False`` runs outside any transaction during fleet migrations, one
    statement at a time (for ``CREATE INDEX CONCURRENTLY``); it must be safe to run again
    after an interruption (``IF NOT EXISTS``) and may not create tables.
    """

    version: str
    sql: str
    description: str = ""
    transactional: bool = True

    @property
    def transactional_sql(self) -> str:
        """The step as it runs inside a transaction (``CONCURRENTLY`` dropped if needed)."""
        return self.sql if self.transactional else _CONCURRENTLY.sub("", self.sql)


def split_statements(text: str) -> list[str]:
    """Cut simple DDL at each ``;`` that ends a line (no dollar-quoted bodies expected)."""
    return [part.strip() for part in _STATEMENT_END.split(text) if part.strip()]


@dataclass(frozen=True, slots=True)
class CompiledStep:
    """One step as every tenant runs it: the product's SQL plus its safety net.

    ``sql`` runs inside a transaction (provisioning, and transactional migrations).
    ``online_sql`` is what a fleet migration runs for a non-transactional step, statement
    by statement outside a transaction; ``None`` for ordinary steps.
    """

    version: str
    sql: str
    description: str = ""
    transactional: bool = True
    online_sql: str | None = None
    tables: tuple[str, ...] = ()

    def statements(self) -> list[str]:
        """The statements of a non-transactional step, in order."""
        return split_statements(self.online_sql if self.online_sql is not None else self.sql)


@dataclass(frozen=True, slots=True)
class CompiledTenantSchema:
    """The whole chain plus its safety net, ready to run in a new tenant's schema."""

    head: str | None
    tables: tuple[str, ...]
    sequences: tuple[str, ...]
    ddl: str
    steps: tuple[CompiledStep, ...] = ()

    @property
    def versions(self) -> tuple[str, ...]:
        """Every step's version, in order."""
        return tuple(step.version for step in self.steps)

    def pending(self, version: str | None) -> tuple[CompiledStep, ...]:
        """The steps a tenant at ``version`` still needs (``None``: it has none yet).

        Raises :class:`SchemaDefinitionError` for a version this chain does not contain
        (a tenant built by another release, say).
        """
        if version is None:
            return self.steps
        versions = self.versions
        if version not in versions:
            raise SchemaDefinitionError(
                f"schema version {version!r} is not in this tenant schema chain "
                f"({', '.join(versions) or 'empty'}); is another release deployed?"
            )
        return self.steps[versions.index(version) + 1 :]

    def provision_sql(self, schema: str, app_role: str) -> str:
        """Create ``schema`` and everything in it; expects ``search_path`` set to it."""
        ident = sql.Identifier(schema).as_string(None)
        role = sql.Identifier(app_role).as_string(None)
        return f"CREATE SCHEMA {ident};\nGRANT USAGE ON SCHEMA {ident} TO {role};\n{self.ddl}"


def _strip_transaction_control(text: str) -> str:
    lines = [
        line
        for line in text.splitlines()
        if line.strip().rstrip(";").strip().upper() not in {"BEGIN", "COMMIT", "START TRANSACTION"}
    ]
    return "\n".join(lines)


@dataclass(frozen=True, slots=True)
class TenantSchema:
    """The ordered chain of steps that builds a tenant's schema.

    ``source`` is the migration script folder the chain was loaded from, if any (where
    ``tenantry migrations new`` writes the next one).
    """

    steps: tuple[SchemaStep, ...]
    source: Path | None = None

    def __post_init__(self) -> None:
        versions = [step.version for step in self.steps]
        if len(set(versions)) != len(versions):
            raise SchemaDefinitionError(f"duplicate step versions in tenant schema: {versions}")

    @classmethod
    def of(cls, *steps: SchemaStep) -> TenantSchema:
        """A schema from steps given in order."""
        return cls(tuple(steps))

    @classmethod
    def from_sql_files(cls, paths: Sequence[Path]) -> TenantSchema:
        """One step per file, versioned by file stem; a file's own BEGIN/COMMIT lines dropped."""
        return cls(
            tuple(
                SchemaStep(path.stem, _strip_transaction_control(path.read_text()))
                for path in paths
            )
        )

    def upto(self, version: str) -> TenantSchema:
        """The chain up to and including ``version`` (what an older release shipped)."""
        versions = [step.version for step in self.steps]
        if version not in versions:
            raise SchemaDefinitionError(f"no step {version!r} in this tenant schema")
        return TenantSchema(self.steps[: versions.index(version) + 1], self.source)

    @property
    def head(self) -> str | None:
        """The version of the last step."""
        return self.steps[-1].version if self.steps else None

    async def compile(self, conn: AsyncConnection[Any], *, app_role: str) -> CompiledTenantSchema:
        """Dry-run the chain in a scratch schema (rolled back) and build the provision script.

        ``conn`` must be an owner connection in autocommit mode and not in a transaction.
        """
        scratch = "tenantry_compile_" + secrets.token_hex(6)
        ident = sql.Identifier(scratch).as_string(None)
        tables: list[str] = []
        sequences: list[str] = []
        parts: list[str] = []
        compiled: list[CompiledStep] = []
        await conn.execute(
            f"BEGIN; CREATE SCHEMA {ident}; "
            f"SELECT set_config('search_path', {sql.Literal(ident).as_string(None)}, true), "
            f"set_config('app.tenant_id', '{COMPILE_TENANT_ID}', true)"
        )
        try:
            for step in self.steps:
                try:
                    if step.transactional_sql.strip():
                        await conn.execute(step.transactional_sql.encode())
                except Exception as exc:
                    raise SchemaDefinitionError(
                        f"tenant schema step {step.version!r} failed: {exc}"
                    ) from exc
                if conn.info.transaction_status != TransactionStatus.INTRANS:
                    raise SchemaDefinitionError(
                        f"tenant schema step {step.version!r} ended the transaction; "
                        "steps must not contain BEGIN/COMMIT/ROLLBACK"
                    )
                new_tables, new_sequences, net = await self._safety_net(
                    conn, scratch, set(tables) | set(sequences), app_role
                )
                if not step.transactional and (new_tables or new_sequences):
                    raise SchemaDefinitionError(
                        f"tenant schema step {step.version!r} is non-transactional but creates "
                        f"{', '.join(new_tables + new_sequences)}; create tables in an "
                        "ordinary step and keep CONCURRENTLY work in a step of its own"
                    )
                tables += new_tables
                sequences += new_sequences
                body = step.transactional_sql.strip().rstrip(";")
                text = "\n".join(part for part in (f"{body};" if body else "", net) if part)
                parts.append(f"-- step {step.version}\n{text}")
                compiled.append(
                    CompiledStep(
                        step.version,
                        text,
                        step.description,
                        step.transactional,
                        None if step.transactional else step.sql,
                        tuple(new_tables),
                    )
                )
        finally:
            if conn.info.transaction_status != TransactionStatus.IDLE:
                await conn.execute("ROLLBACK")
            else:  # a step committed despite the rule above: remove the scratch schema
                await conn.execute(f"DROP SCHEMA IF EXISTS {ident} CASCADE")
        return CompiledTenantSchema(
            self.head, tuple(tables), tuple(sequences), "\n".join(parts), tuple(compiled)
        )

    @staticmethod
    async def _safety_net(
        conn: AsyncConnection[Any], scratch: str, known: set[str], app_role: str
    ) -> tuple[list[str], list[str], str]:
        cur = await conn.execute(
            "SELECT c.relname, c.relkind, format_type(a.atttypid, a.atttypmod), a.attnotnull "
            "FROM pg_class c LEFT JOIN pg_attribute a ON a.attrelid = c.oid "
            "AND a.attname = 'tenant_id' AND NOT a.attisdropped "
            "WHERE c.relnamespace = %s::regnamespace AND c.relkind IN ('r', 'p', 'S') "
            "ORDER BY c.oid",
            (scratch,),
        )
        role = sql.Identifier(app_role).as_string(None)
        tables: list[str] = []
        sequences: list[str] = []
        statements: list[str] = []
        for name, kind, tenant_type, _ in await cur.fetchall():
            if name in known:
                continue
            table = sql.Identifier(name).as_string(None)
            if kind == "S":
                sequences.append(name)
                continue
            tables.append(name)
            if tenant_type is None:
                column = (
                    "ADD COLUMN tenant_id uuid NOT NULL "
                    "DEFAULT current_setting('app.tenant_id')::uuid, "
                )
            elif tenant_type == "uuid":
                column = (
                    "ALTER COLUMN tenant_id SET DEFAULT current_setting('app.tenant_id')::uuid, "
                    "ALTER COLUMN tenant_id SET NOT NULL, "
                )
            else:
                raise SchemaDefinitionError(
                    f"table {name!r} declares tenant_id as {tenant_type}; it must be uuid "
                    "(or leave it out and tenantry adds it)"
                )
            statements.append(
                f"ALTER TABLE {table} {column}"
                "ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;\n"
                f"CREATE POLICY {POLICY_NAME} ON {table} "
                f"USING ({POLICY_EXPRESSION}) WITH CHECK ({POLICY_EXPRESSION});"
            )
        # One GRANT per kind for the whole step: fewer statements, same privileges.
        new_tables = ", ".join(sql.Identifier(t).as_string(None) for t in tables)
        new_sequences = ", ".join(sql.Identifier(q).as_string(None) for q in sequences)
        if new_tables:
            statements.append(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {new_tables} TO {role};")
        if new_sequences:
            statements.append(f"GRANT USAGE, SELECT ON SEQUENCE {new_sequences} TO {role};")
        if statements:
            # The scratch run must see the same safety net the tenants will get.
            await conn.execute("\n".join(statements).encode())
        return tables, sequences, "\n".join(statements)
