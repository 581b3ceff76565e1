"""The fleet migrator: the control plane first, then every tenant schema, in waves.

Planning is one query on the catalog (``tenants.schema_version`` is the ledger), never a
scan of ``pg_class``: the cost per tenant does not grow with the fleet. Each tenant is
then brought to head in its own transaction, sent as one message::

    BEGIN; SET LOCAL search_path = "t_acme", pg_temp; SET LOCAL app.tenant_id = '...';
    SET LOCAL lock_timeout = '2000ms'; SET LOCAL statement_timeout = '300000ms';
    SELECT tenantry.advance_schema_version('<id>', '<from>', '<to>', 'migrate');
    <the pending steps, exactly as compiled for provisioning>
    COMMIT;

``advance_schema_version`` is a compare-and-set on the ledger row, so a step is applied
at most once: a run killed at any point leaves each tenant either at its old version or at
the new one, and the next run simply finishes the rest. Two runners at once serialise on
the ledger row and the second one skips the tenant.

A lock timeout (the app holds a lock the migration needs) is retried with backoff; any
other error fails that tenant alone: it is rolled back, recorded in
``tenantry.migration_failures`` and reported, and the others carry on. Steps that cannot
run in a transaction (``CREATE INDEX CONCURRENTLY``) run statement by statement under a
per-tenant advisory lock, then advance the ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection, OperationalError, sql
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus

from tenantry.context import TenantContext
from tenantry.db import CompiledStep, CompiledTenantSchema, Database, SchemaStep
from tenantry.db.binding import begin_statement
from tenantry.db.tenant_schema import SchemaDefinitionError
from tenantry.migrations.errors import ControlPlaneMigrationError, MigrationError
from tenantry.provisioning.spares import SparePool

LEDGER_MOVED = "TY001"  # raised by tenantry.advance_*_version when the CAS finds nothing
_RETRYABLE = (
    pg_errors.LockNotAvailable,
    pg_errors.DeadlockDetected,
    pg_errors.SerializationFailure,
)


def _lit(value: Any) -> str:
    return sql.Literal(value).as_string(None)


@dataclass(frozen=True, slots=True)
class MigrationSettings:
    """How a fleet migration behaves.

    ``concurrency``: tenants migrated at once, each on its own owner connection (default:
    the owner pool's size minus one). ``lock_timeout_ms`` keeps a migration from queueing
    behind a long app transaction — and the app's requests from queueing behind it —
    ``retries`` times with exponential backoff from ``backoff_s``. ``canary``: slugs to
    migrate first (default: ring 0 when the fleet uses several rings, else the first
    ``canary_fraction`` of it); the run stops if any canary fails.
    """

    concurrency: int | None = None
    lock_timeout_ms: int = 2_000
    statement_timeout_ms: int = 300_000
    retries: int = 5
    backoff_s: float = 0.1
    canary: tuple[str, ...] = ()
    canary_fraction: float = 0.01
    tenant: str | None = None
    actor: str = "migrate"


@dataclass(frozen=True, slots=True)
class PendingTenant:
    """A tenant behind head, as the plan query returns it."""

    id: UUID
    slug: str
    schema_name: str
    version: str | None
    ring: int
    cell: str

    def context(self) -> TenantContext:
        """The binding its migration transaction opens with."""
        return TenantContext(
            id=self.id, slug=self.slug, tier="free", schema=self.schema_name, cell=self.cell
        )


@dataclass(frozen=True, slots=True)
class TenantFailure:
    """A tenant the run could not bring to head, and why."""

    slug: str
    tenant_id: UUID
    from_version: str | None
    error: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "slug": self.slug,
            "id": str(self.tenant_id),
            "from_version": self.from_version,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a run is: reported after every tenant."""

    wave: str
    done: int
    total: int
    failed: int


@dataclass(slots=True)
class FleetReport:
    """What a run did."""

    head: str | None
    control_from: str | None = None
    control_to: str | None = None
    planned: int = 0
    migrated: int = 0
    skipped: int = 0
    retried: int = 0
    failed: list[TenantFailure] = field(default_factory=list)
    waves: list[tuple[str, int]] = field(default_factory=list)
    stopped: str | None = None
    elapsed_s: float = 0.0
    pruned_spares: int = 0
    dry_run_sql: str | None = None

    @property
    def ok(self) -> bool:
        """True when every planned tenant reached head (or was already there)."""
        return not self.failed and self.stopped is None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, as ``tenantry migrate --json`` prints it."""
        return {
            "ok": self.ok,
            "head": self.head,
            "control_plane": {"from": self.control_from, "to": self.control_to},
            "planned": self.planned,
            "migrated": self.migrated,
            "skipped": self.skipped,
            "retried": self.retried,
            "failed": [f.as_dict() for f in self.failed],
            "waves": [{"name": name, "tenants": n} for name, n in self.waves],
            "stopped": self.stopped,
            "elapsed_s": round(self.elapsed_s, 3),
            "pruned_spares": self.pruned_spares,
        }


@dataclass(frozen=True, slots=True)
class _Segment:
    """Consecutive pending steps applied together: one transaction, or one online step."""

    start: str | None
    end: str
    steps: tuple[CompiledStep, ...]

    @property
    def transactional(self) -> bool:
        return self.steps[0].transactional

    @property
    def sql(self) -> str:
        return "\n".join(f"-- step {s.version}\n{s.sql}" for s in self.steps if s.sql)


def segments(steps: Sequence[CompiledStep], start: str | None) -> list[_Segment]:
    """Cut pending steps into transactions: runs of ordinary steps, and each online step."""
    out: list[_Segment] = []
    run: list[CompiledStep] = []
    for step in steps:
        if step.transactional:
            run.append(step)
            continue
        if run:
            out.append(_Segment(start, run[-1].version, tuple(run)))
            start, run = run[-1].version, []
        out.append(_Segment(start, step.version, (step,)))
        start = step.version
    if run:
        out.append(_Segment(start, run[-1].version, tuple(run)))
    return out


def control_steps(steps: Sequence[SchemaStep]) -> tuple[CompiledStep, ...]:
    """Control-plane steps in runtime form (no safety net: they are not tenant tables)."""
    return tuple(
        CompiledStep(
            s.version,
            s.transactional_sql.strip(),
            s.description,
            s.transactional,
            None if s.transactional else s.sql,
        )
        for s in steps
    )


class _LedgerMoved(Exception):
    """Another run advanced this ledger row first: nothing to do here."""


PLAN_QUERY = (
    "SELECT id, slug, schema_name, schema_version, ring, cell FROM tenantry.tenants "
    "WHERE status <> 'deleted' AND schema_version IS DISTINCT FROM %s"
)


class FleetMigrator:
    """Bring the control plane and every tenant schema to head."""

    def __init__(
        self,
        db: Database,
        schema: CompiledTenantSchema,
        *,
        control: Sequence[SchemaStep] = (),
        settings: MigrationSettings | None = None,
    ) -> None:
        self.db = db
        self.schema = schema
        self.control = control_steps(control)
        self.settings = settings or MigrationSettings()

    @property
    def concurrency(self) -> int:
        """Tenants migrated at once."""
        if self.settings.concurrency is not None:
            return max(1, self.settings.concurrency)
        return max(1, self.db.cell().owner_pool.max_size - 1)

    @property
    def control_head(self) -> str | None:
        """The last control-plane step's version."""
        return self.control[-1].version if self.control else None

    # -- planning ---------------------------------------------------------------------------
    async def plan(self, conn: AsyncConnection[Any]) -> list[PendingTenant]:
        """Tenants behind head, ordered by ring then slug: one query, whatever the fleet."""
        query = PLAN_QUERY
        params: list[Any] = [self.schema.head]
        if self.settings.tenant is not None:
            query += " AND slug = %s"
            params.append(self.settings.tenant)
        cur = await conn.execute(query + " ORDER BY ring, slug", params)
        return [PendingTenant(*row) for row in await cur.fetchall()]

    def waves(self, pending: Sequence[PendingTenant]) -> list[tuple[str, list[PendingTenant]]]:
        """Canary first, then one wave per ring in ascending order."""
        if not pending:
            return []
        if self.settings.tenant is not None:
            return [(f"tenant {self.settings.tenant}", list(pending))]
        rings = sorted({t.ring for t in pending})
        if self.settings.canary:
            chosen = set(self.settings.canary)
            canary = [t for t in pending if t.slug in chosen]
        elif len(rings) > 1:
            canary = [t for t in pending if t.ring == rings[0]]
        else:
            size = max(1, math.ceil(len(pending) * self.settings.canary_fraction))
            canary = list(pending[:size])
        taken = {t.id for t in canary}
        out: list[tuple[str, list[PendingTenant]]] = [("canary", canary)] if canary else []
        for ring in rings:
            wave = [t for t in pending if t.ring == ring and t.id not in taken]
            if wave:
                out.append((f"ring {ring}", wave))
        return out

    # -- running ----------------------------------------------------------------------------
    async def run(
        self, *, dry_run: bool = False, on_progress: Callable[[Progress], None] | None = None
    ) -> FleetReport:
        """Migrate the control plane, then the fleet in waves; see the module docstring."""
        started = time.perf_counter()
        report = FleetReport(head=self.schema.head)
        cell = self.db.cell()
        async with cell.owner_pool.connection() as conn:
            report.control_from, pending_control = await self._control_plan(conn)
            report.control_to = report.control_from
            pending = await self.plan(conn)
        report.planned = len(pending)
        waves = self.waves(pending)
        report.waves = [(name, len(wave)) for name, wave in waves]
        if dry_run:
            report.dry_run_sql = self.dry_run_sql(report.control_from, pending_control, pending)
            report.elapsed_s = time.perf_counter() - started
            return report
        if pending_control:
            async with cell.owner_pool.connection() as conn:
                await self._migrate_control(conn, report.control_from, pending_control)
            report.control_to = self.control_head
        for name, wave in waves:
            await self._run_wave(name, wave, report, on_progress)
            if name == "canary" and report.failed:
                report.stopped = (
                    f"{len(report.failed)} canary tenant(s) failed; the rest of the fleet "
                    "was not touched"
                )
                break
        if report.migrated:
            report.pruned_spares = await SparePool(self.db, self.schema, target=0).prune()
        report.elapsed_s = time.perf_counter() - started
        return report

    async def _run_wave(
        self,
        name: str,
        wave: list[PendingTenant],
        report: FleetReport,
        on_progress: Callable[[Progress], None] | None,
    ) -> None:
        queue = iter(wave)
        done = 0
        failed_before = len(report.failed)

        async def worker() -> None:
            nonlocal done
            conn: AsyncConnection[Any] | None = None
            try:
                for tenant in queue:  # one shared iterator: workers take the next tenant
                    if conn is None or conn.closed:
                        conn = await AsyncConnection.connect(
                            self.db.cell(tenant.cell).owner_url,
                            autocommit=True,
                            application_name="tenantry-migrate",
                        )
                    await self._migrate_tenant(conn, tenant, report)
                    done += 1
                    if on_progress is not None:
                        on_progress(
                            Progress(name, done, len(wave), len(report.failed) - failed_before)
                        )
            finally:
                if conn is not None:
                    await conn.close()

        await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(wave)))))

    async def _migrate_tenant(
        self, conn: AsyncConnection[Any], tenant: PendingTenant, report: FleetReport
    ) -> None:
        try:
            pending = self.schema.pending(tenant.version)
        except SchemaDefinitionError as exc:
            await self._record_failure(tenant, str(exc), report)
            return
        try:
            for segment in segments(pending, tenant.version):
                for attempt in range(self.settings.retries + 1):
                    try:
                        if segment.transactional:
                            await self._apply_transactional(conn, tenant, segment)
                        else:
                            await self._apply_online(conn, tenant, segment)
                        break
                    except _RETRYABLE:
                        if attempt == self.settings.retries:
                            raise
                        report.retried += 1
                        delay = self.settings.backoff_s * (2**attempt)
                        await asyncio.sleep(delay * (0.5 + random.random()))  # noqa: S311
        except _LedgerMoved:
            report.skipped += 1
            return
        except Exception as exc:
            await self._record_failure(tenant, _describe(exc), report)
            return
        report.migrated += 1

    def tenant_script(self, tenant: PendingTenant, segment: _Segment) -> str:
        """The one message that moves ``tenant`` through a transactional segment."""
        return (
            f"{begin_statement(tenant.context())}; "
            f"SET LOCAL lock_timeout = '{int(self.settings.lock_timeout_ms)}ms'; "
            f"SET LOCAL statement_timeout = '{int(self.settings.statement_timeout_ms)}ms';\n"
            f"SELECT tenantry.advance_schema_version({_lit(tenant.id)}, {_lit(segment.start)}, "
            f"{_lit(segment.end)}, {_lit(self.settings.actor)});\n{segment.sql}\nCOMMIT;"
        )

    async def _apply_transactional(
        self, conn: AsyncConnection[Any], tenant: PendingTenant, segment: _Segment
    ) -> None:
        try:
            await conn.execute(self.tenant_script(tenant, segment).encode())
        except BaseException as exc:
            if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                with contextlib.suppress(OperationalError):
                    await conn.execute("ROLLBACK")
            if getattr(exc, "sqlstate", None) == LEDGER_MOVED:
                raise _LedgerMoved from exc
            raise

    async def _apply_online(
        self, conn: AsyncConnection[Any], tenant: PendingTenant, segment: _Segment
    ) -> None:
        # Outside a transaction nothing rolls back, so runners must not overlap on a
        # tenant: a session advisory lock keyed by tenant, then re-check the ledger.
        key = _lit(str(tenant.id))
        cur = await conn.execute(
            f"SELECT pg_try_advisory_lock(hashtextextended({key}, 7)), "
            f"(SELECT schema_version FROM tenantry.tenants WHERE id = {key}::uuid)"
        )
        row = await cur.fetchone()
        if row is None or not row[0]:
            raise _LedgerMoved
        try:
            if row[1] != segment.start:
                raise _LedgerMoved
            path = sql.Identifier(tenant.schema_name).as_string(None)
            await conn.execute(
                f"SET search_path = {path}, pg_temp; SET app.tenant_id = {key}; "
                f"SET lock_timeout = '{int(self.settings.lock_timeout_ms)}ms'; "
                f"SET statement_timeout = '{int(self.settings.statement_timeout_ms)}ms'"
            )
            for step in segment.steps:
                for statement in step.statements():
                    await conn.execute(statement.encode())
            await conn.execute(
                f"SELECT tenantry.advance_schema_version({key}, {_lit(segment.start)}, "
                f"{_lit(segment.end)}, {_lit(self.settings.actor)})".encode()
            )
        finally:
            if not conn.closed:
                with contextlib.suppress(OperationalError):
                    await conn.execute(
                        "RESET search_path; RESET app.tenant_id; RESET lock_timeout; "
                        f"RESET statement_timeout; SELECT pg_advisory_unlock("
                        f"hashtextextended({key}, 7))"
                    )

    async def _record_failure(self, tenant: PendingTenant, error: str, report: FleetReport) -> None:
        # On a pool connection: the worker's own may be the one that just broke.
        report.failed.append(TenantFailure(tenant.slug, tenant.id, tenant.version, error))
        async with self.db.cell().owner_pool.connection() as conn:
            await conn.execute(
                "INSERT INTO tenantry.migration_failures "
                "(tenant_id, from_version, target_version, error) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (tenant_id) DO UPDATE SET from_version = excluded.from_version, "
                "target_version = excluded.target_version, error = excluded.error, "
                "attempts = tenantry.migration_failures.attempts + 1, failed_at = now()",
                (tenant.id, tenant.version, self.schema.head, error),
            )

    # -- control plane ----------------------------------------------------------------------
    async def _control_plan(
        self, conn: AsyncConnection[Any]
    ) -> tuple[str | None, tuple[CompiledStep, ...]]:
        cur = await conn.execute("SELECT version FROM tenantry.control_plane_version")
        row = await cur.fetchone()
        current: str | None = row[0] if row else None
        versions = [s.version for s in self.control]
        if current is None:
            return None, self.control
        if current not in versions:
            raise ControlPlaneMigrationError(
                f"the control plane is at version {current!r}, which this release's control "
                f"plane chain ({', '.join(versions) or 'empty'}) does not contain"
            )
        return current, self.control[versions.index(current) + 1 :]

    async def _migrate_control(
        self, conn: AsyncConnection[Any], current: str | None, steps: Sequence[CompiledStep]
    ) -> None:
        timeouts = (
            f"SET LOCAL lock_timeout = '{int(self.settings.lock_timeout_ms)}ms'; "
            f"SET LOCAL statement_timeout = '{int(self.settings.statement_timeout_ms)}ms';\n"
        )
        for segment in segments(steps, current):
            advance = (
                f"SELECT tenantry.advance_control_plane_version({_lit(segment.start)}, "
                f"{_lit(segment.end)});"
            )
            try:
                if segment.transactional:
                    await conn.execute(
                        f"BEGIN; {timeouts}{advance}\n{segment.sql}\nCOMMIT;".encode()
                    )
                else:
                    for step in segment.steps:
                        for statement in step.statements():
                            await conn.execute(statement.encode())
                    await conn.execute(advance.encode())
            except Exception as exc:
                if not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                    await conn.execute("ROLLBACK")
                if getattr(exc, "sqlstate", None) == LEDGER_MOVED:
                    continue  # another runner applied it
                raise ControlPlaneMigrationError(
                    f"control-plane migration to {segment.end!r} failed: {_describe(exc)}; no "
                    "tenant was migrated. Fix the cause and run 'tenantry migrate' again"
                ) from exc

    # -- dry run ----------------------------------------------------------------------------
    def dry_run_sql(
        self,
        control_from: str | None,
        control: Sequence[CompiledStep],
        pending: Sequence[PendingTenant],
    ) -> str:
        """The SQL a run would send: control plane, then one script per starting version."""
        out: list[str] = []
        if control:
            out.append(f"-- control plane: {control_from or 'base'} -> {self.control_head}")
            out += [f"-- step {s.version}\n{s.sql}" for s in control]
        groups: dict[str | None, list[PendingTenant]] = {}
        for tenant in pending:
            groups.setdefault(tenant.version, []).append(tenant)
        for version, tenants in groups.items():
            first = tenants[0]
            out.append(
                f"-- {len(tenants)} tenant(s) at {version or 'base'} -> {self.schema.head}; "
                f"shown for {first.slug} (the others differ only in search_path and "
                "app.tenant_id)"
            )
            try:
                steps = self.schema.pending(version)
            except SchemaDefinitionError as exc:
                out.append(f"-- cannot migrate: {exc}")
                continue
            for segment in segments(steps, version):
                if segment.transactional:
                    out.append(self.tenant_script(first, segment))
                else:
                    out.append("-- outside a transaction, one statement at a time:")
                    out += [f"{st};" for s in segment.steps for st in s.statements()]
        if not out:
            out.append("-- nothing to do: the control plane and every tenant are at head")
        return "\n".join(out)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    state = getattr(exc, "sqlstate", None)
    return f"{text} (SQLSTATE {state})" if state else text


__all__ = [
    "FleetMigrator",
    "FleetReport",
    "MigrationError",
    "MigrationSettings",
    "PendingTenant",
    "Progress",
    "TenantFailure",
]
