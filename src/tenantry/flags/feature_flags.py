"""``platform.flags``: evaluation from the in-memory snapshot, kept current by the listener,
plus the control-plane operations that the CLI, the admin API and tests all call.

Every write is one transaction: lock the row, apply the change, store the next version with
an audit row (who, when, before, after) and notify. The writing process installs the new
version itself right after the commit; every other process gets it through
``LISTEN tenantry_flags``.
"""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from uuid import UUID

from psycopg import AsyncConnection

from tenantry.catalog import TenantCatalog
from tenantry.db import Database
from tenantry.flags.compiler import BrokenFlag
from tenantry.flags.errors import FlagNotFoundError, FlagVersionConflictError, InvalidFlagError
from tenantry.flags.evaluator import FlagEvaluator
from tenantry.flags.model import (
    Flag,
    FlagChange,
    FlagType,
    FlagValue,
    Rule,
    check_value,
    validate_key,
)
from tenantry.flags.resolution import Resolution
from tenantry.flags.store import FlagStore
from tenantry.flags.sync import FlagSync
from tenantry.settings import FlagSettings

Mutation = Callable[[Flag, AsyncConnection[Any]], Awaitable[Flag]]
_UNSET: Any = object()


class FeatureFlags(FlagEvaluator):
    """A :class:`FlagEvaluator` kept in sync with the control plane, and its admin operations."""

    def __init__(
        self,
        db: Database,
        settings: FlagSettings | None = None,
        *,
        catalog: TenantCatalog | None = None,
    ) -> None:
        super().__init__()
        self.db = db
        self.settings = settings or FlagSettings()
        self.catalog = catalog or TenantCatalog()
        self.store = FlagStore()
        self.sync = FlagSync(
            db.cell().app_url,
            self.store,
            self,
            reconnect_seconds=self.settings.reconnect_seconds,
            resync_seconds=self.settings.resync_seconds,
        )

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        """Load the snapshot and follow changes from every process."""
        await self.sync.start()

    async def stop(self) -> None:
        """Stop following changes (evaluations keep answering from the snapshot)."""
        await self.sync.stop()

    @property
    def listening(self) -> bool:
        """Whether changes are being received right now (``False`` while the database is
        unreachable: the last snapshot is being served)."""
        return self.sync.listening.is_set()

    async def refresh(self) -> None:
        """Reload the whole snapshot once (for short-lived processes that do not listen)."""
        async with self.db.cell().app_pool.connection() as conn:
            self.replace(await self.store.load_all(conn))

    # -- reading the control plane --------------------------------------------------------
    async def list(self) -> list[Flag | BrokenFlag]:
        """Every flag as stored, by key."""
        async with self.db.transaction(readonly=True) as conn:
            return await self.store.load_all(conn)

    async def get(self, key: str) -> Flag:
        """One flag as stored; :class:`FlagNotFoundError` if there is none."""
        async with self.db.transaction(readonly=True) as conn:
            return _usable(await self.store.get(conn, validate_key(key)), key)

    async def history(self, key: str, *, limit: int = 50) -> builtins.list[FlagChange]:
        """A flag's audited changes, newest first."""
        async with self.db.transaction(readonly=True) as conn:
            changes = await self.store.history(conn, validate_key(key), limit=limit)
        if not changes:
            raise _not_found(key)
        return changes

    async def evaluate_for(self, key: str, tenant: str | UUID) -> Resolution:
        """Evaluate ``key`` from this process's snapshot for a tenant named by slug or id."""
        async with self.db.transaction(readonly=True) as conn:
            found = await self.catalog.get(conn, tenant)
        return self.evaluate(key, found.context())

    # -- changing flags -------------------------------------------------------------------
    async def create(self, flag: Flag, *, actor: str, exist_ok: bool = False) -> Flag:
        """Store a new flag (version 1). With ``exist_ok`` an existing flag of that key is
        returned unchanged instead of raising :class:`FlagExistsError`."""
        async with self.db.transaction() as conn:
            if exist_ok:
                existing = await self.store.get(conn, flag.key)
                if existing is not None:
                    return _usable(existing, flag.key)
            saved = await self.store.insert(conn, flag, actor)
        self.apply([saved.key], [saved])
        return saved

    async def update(
        self,
        key: str,
        *,
        actor: str,
        description: str | None = None,
        default: FlagValue = _UNSET,
        enabled: bool | None = None,
        rules: Sequence[Rule] | None = None,
        targets: Mapping[UUID, FlagValue] | None = None,
        expected_version: int | None = None,
        action: str = "set",
    ) -> Flag:
        """Change some fields of a flag; the others keep their value."""
        changes: dict[str, Any] = {
            name: value
            for name, value in (
                ("description", description),
                ("enabled", enabled),
                ("rules", None if rules is None else tuple(rules)),
                ("targets", None if targets is None else dict(targets)),
            )
            if value is not None
        }
        if default is not _UNSET:
            changes["default"] = default

        async def mutate(flag: Flag, conn: AsyncConnection[Any]) -> Flag:
            return dataclasses.replace(flag, **changes)

        return await self._change(key, action, actor, mutate, expected_version)

    async def put(
        self,
        key: str,
        definition: Mapping[str, Any],
        *,
        actor: str,
        expected_version: int | None = None,
    ) -> Flag:
        """Replace a flag's whole definition (also repairs a stored definition that no
        longer parses)."""
        replacement = Flag.from_definition(key, definition)

        async def mutate(flag: Flag, conn: AsyncConnection[Any]) -> Flag:
            return replacement

        return await self._change(key, "put", actor, mutate, expected_version, repair=True)

    async def set_target(
        self, key: str, tenant: str | UUID, value: FlagValue = True, *, actor: str
    ) -> Flag:
        """Serve ``value`` to one tenant (slug or id), ahead of every rule."""

        async def mutate(flag: Flag, conn: AsyncConnection[Any]) -> Flag:
            found = await self.catalog.get(conn, tenant)
            served = check_value(flag.type, value, "target value")
            return dataclasses.replace(flag, targets={**flag.targets, found.id: served})

        return await self._change(key, "target", actor, mutate)

    async def remove_target(self, key: str, tenant: str | UUID, *, actor: str) -> Flag:
        """Stop targeting one tenant explicitly (rules apply to it again)."""

        async def mutate(flag: Flag, conn: AsyncConnection[Any]) -> Flag:
            found = await self.catalog.get(conn, tenant)
            targets = {t: v for t, v in flag.targets.items() if t != found.id}
            return dataclasses.replace(flag, targets=targets)

        return await self._change(key, "untarget", actor, mutate)

    async def rollout(
        self,
        key: str,
        percentage: int,
        *,
        actor: str,
        rule: str = "rollout",
        serve: FlagValue = _UNSET,
        tiers: Sequence[str] | None = None,
        rings: Sequence[int] | None = None,
        group: str | None = None,
    ) -> Flag:
        """Set the percentage of rule ``rule`` (appended last if it does not exist yet).

        A new rule on a boolean flag serves ``true`` unless ``serve`` says otherwise;
        ``tiers`` / ``rings`` / ``group``, when given, replace the rule's own.
        """

        async def mutate(flag: Flag, conn: AsyncConnection[Any]) -> Flag:
            existing = next((r for r in flag.rules if r.name == rule), None)
            if existing is None:
                if serve is _UNSET and flag.type is not FlagType.BOOLEAN:
                    raise InvalidFlagError(
                        f"rule {rule!r} is new: say what it serves (a {flag.type} value)"
                    )
                existing = Rule(name=rule, serve=True if serve is _UNSET else serve)
            updated = dataclasses.replace(
                existing,
                rollout=percentage,
                serve=existing.serve if serve is _UNSET else serve,
                tiers=existing.tiers if tiers is None else tuple(tiers),
                rings=existing.rings if rings is None else tuple(rings),
                group=existing.group if group is None else group,
            )
            if any(r.name == rule for r in flag.rules):
                rules = tuple(updated if r.name == rule else r for r in flag.rules)
            else:
                rules = (*flag.rules, updated)
            return dataclasses.replace(flag, rules=rules)

        return await self._change(key, "rollout", actor, mutate)

    async def kill(self, key: str, *, actor: str) -> Flag:
        """The kill switch: every tenant gets the flag's default, at once."""
        return await self.update(key, actor=actor, enabled=False, action="kill")

    async def revive(self, key: str, *, actor: str) -> Flag:
        """Undo :meth:`kill`: targets and rules apply again."""
        return await self.update(key, actor=actor, enabled=True, action="enable")

    async def _change(
        self,
        key: str,
        action: str,
        actor: str,
        mutate: Mutation,
        expected_version: int | None = None,
        *,
        repair: bool = False,
    ) -> Flag:
        validate_key(key)
        async with self.db.transaction() as conn:
            current = await self.store.get(conn, key, for_update=True)
            if current is None:
                raise _not_found(key)
            if expected_version is not None and current.version != expected_version:
                raise FlagVersionConflictError(
                    f"flag {key!r} is at version {current.version}, not {expected_version}; "
                    "read it again and reapply your change"
                )
            if isinstance(current, BrokenFlag):
                if not repair:
                    raise InvalidFlagError(f"flag {key!r}: {current.message}; replace it whole")
                before: dict[str, Any] | None = (
                    current.definition if isinstance(current.definition, dict) else None
                )
                changed = await mutate(_placeholder(key), conn)
            else:
                before = current.definition()
                changed = await mutate(current, conn)
                if changed.definition() == before:
                    return current  # nothing to record
            saved = await self.store.update(conn, before, changed, action=action, actor=actor)
        self.apply([key], [saved])
        return saved


def _not_found(key: str) -> FlagNotFoundError:
    return FlagNotFoundError(f"no flag {key!r}; list them with 'tenantry flags list'")


def _usable(found: Flag | BrokenFlag | None, key: str) -> Flag:
    if found is None:
        raise _not_found(key)
    if isinstance(found, BrokenFlag):
        raise InvalidFlagError(f"flag {key!r}: {found.message}; replace it whole")
    return found


def _placeholder(key: str) -> Flag:
    return Flag(key, FlagType.BOOLEAN, False)
