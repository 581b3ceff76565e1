"""Migration scripts: a folder of Alembic-style revisions, rendered once to SQL.

Each revision is one file, ``NNNN_message.py`` (or ``.sql``), in a folder per target —
``migrations/tenant`` for the tenant schema, ``migrations/control`` for the control
plane. A Python revision reads like an Alembic one::

    revision = "0002"
    down_revision = "0001"
    transactional = True  # False for CREATE INDEX CONCURRENTLY and friends

    def upgrade(op: Operations) -> None:
        op.add_column("employees", sa.Column("badge_code", sa.String(32)))
        op.create_index("employees_badge_code_idx", "employees", ["badge_code"])

``upgrade`` receives Alembic's :class:`~alembic.operations.Operations` in offline mode
(``as_sql``): it runs once per process, against no database, and what it renders becomes
a :class:`~tenantry.db.SchemaStep`. That SQL is what every tenant then runs — provisioning
concatenates it for a new tenant, the fleet migrator applies the missing steps to the
others — so the two can never drift. A ``.sql`` revision carries the same fields as
header comments (``-- revision: 0001``, ``-- down_revision:``, ``-- transactional: false``).

Revisions are ordered by ``down_revision`` links, not by file name; a fork (two revisions
after the same one) or an orphan is refused with the files named.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext

from tenantry.db import SchemaStep, TenantSchema
from tenantry.migrations.errors import MigrationScriptError

_HEADER = re.compile(r"^--\s*(revision|down_revision|transactional|message)\s*:\s*(.*?)\s*$")
_SLUG = re.compile(r"[^a-z0-9]+")

SCRIPT_TEMPLATE = '''"""{message}"""

from __future__ import annotations

from alembic.operations import Operations

revision = "{revision}"
down_revision = {down_revision!r}
# False for statements PostgreSQL refuses inside a transaction (CREATE INDEX CONCURRENTLY):
# the step then runs on its own, outside a transaction, and must be safe to run again.
transactional = {transactional!r}


def upgrade(op: Operations) -> None:
    """{message}"""
    # New tables get tenant_id, row-level security and grants from tenantry, as at
    # provisioning. Expand/contract: add (nullable columns, new tables, indexes) now;
    # drop or tighten only once no running release uses the old shape. For example:
    #   op.add_column("employees", sa.Column("badge_code", sa.String(32)))
    #   op.create_index("employees_badge_code_idx", "employees", ["badge_code"])
'''


@dataclass(frozen=True, slots=True)
class Revision:
    """One migration script, rendered."""

    revision: str
    down_revision: str | None
    message: str
    transactional: bool
    sql: str
    path: Path

    def step(self) -> SchemaStep:
        """The runtime form of this revision."""
        return SchemaStep(self.revision, self.sql, self.message, self.transactional)


def render_operations(upgrade: Callable[[Operations], Any]) -> str:
    """The SQL that ``upgrade(op)`` emits with Alembic in offline (``as_sql``) mode."""
    buffer = io.StringIO()
    context = MigrationContext.configure(
        dialect_name="postgresql",
        opts={"as_sql": True, "output_buffer": buffer, "literal_binds": True},
    )
    upgrade(Operations(context))
    return buffer.getvalue().strip()


def _load_python(path: Path) -> Revision:
    digest = hashlib.sha1(str(path.resolve()).encode(), usedforsecurity=False).hexdigest()[:10]
    spec = importlib.util.spec_from_file_location(f"tenantry_revision_{digest}", path)
    if spec is None or spec.loader is None:
        raise MigrationScriptError(f"cannot load migration script {path}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise MigrationScriptError(f"migration script {path} failed to import: {exc}") from exc
    revision = getattr(module, "revision", None)
    upgrade = getattr(module, "upgrade", None)
    if not isinstance(revision, str) or not revision or not callable(upgrade):
        raise MigrationScriptError(
            f"migration script {path} needs a string 'revision' and an 'upgrade(op)' function"
        )
    try:
        sql = render_operations(upgrade)
    except Exception as exc:
        raise MigrationScriptError(f"migration {revision} ({path.name}) failed: {exc}") from exc
    doc = (module.__doc__ or "").strip().splitlines()
    return Revision(
        revision,
        getattr(module, "down_revision", None),
        doc[0] if doc else "",
        bool(getattr(module, "transactional", True)),
        sql,
        path,
    )


def _load_sql(path: Path) -> Revision:
    fields: dict[str, str] = {}
    body: list[str] = []
    for line in path.read_text().splitlines():
        match = _HEADER.match(line)
        if match and not body:
            fields[match.group(1)] = match.group(2)
        elif line.strip().rstrip(";").strip().upper() not in {"BEGIN", "COMMIT"}:
            body.append(line)
    revision = fields.get("revision") or path.stem
    down = fields.get("down_revision") or None
    return Revision(
        revision,
        None if down in (None, "None", "none") else down,
        fields.get("message", ""),
        fields.get("transactional", "true").lower() not in {"false", "no", "0"},
        "\n".join(body).strip(),
        path,
    )


def load_revisions(folder: Path) -> list[Revision]:
    """Every revision in ``folder``, in chain order (base first)."""
    if not folder.is_dir():
        raise MigrationScriptError(f"migration folder {folder} does not exist")
    files = sorted(
        p for p in folder.iterdir() if p.suffix in {".py", ".sql"} and not p.name.startswith("_")
    )
    revisions = [_load_python(p) if p.suffix == ".py" else _load_sql(p) for p in files]
    by_id: dict[str, Revision] = {}
    after: dict[str | None, Revision] = {}
    for rev in revisions:
        if rev.revision in by_id:
            raise MigrationScriptError(
                f"revision {rev.revision!r} is declared by both {by_id[rev.revision].path.name} "
                f"and {rev.path.name}; renumber one of them"
            )
        by_id[rev.revision] = rev
        if rev.down_revision in after:
            raise MigrationScriptError(
                f"{after[rev.down_revision].path.name} and {rev.path.name} both follow "
                f"{rev.down_revision!r}: the chain forked (two branches merged?). Point one "
                "of them at the other with down_revision"
            )
        after[rev.down_revision] = rev
    ordered: list[Revision] = []
    current = after.get(None)
    while current is not None:
        ordered.append(current)
        current = after.get(current.revision)
    if len(ordered) != len(revisions):
        stray = sorted(r.path.name for r in revisions if r not in ordered)
        raise MigrationScriptError(
            f"migration scripts not linked to the chain from its base: {', '.join(stray)} "
            "(check their down_revision)"
        )
    return ordered


def load_schema(folder: Path) -> TenantSchema:
    """The chain of ``folder`` as a :class:`~tenantry.db.TenantSchema` (one step each)."""
    return TenantSchema(tuple(rev.step() for rev in load_revisions(folder)), folder)


def new_revision(folder: Path, message: str, *, transactional: bool = True) -> Path:
    """Write the next revision's script (``NNNN_<message>.py``) in ``folder``; its path."""
    if not message.strip():
        raise MigrationScriptError("a migration needs a message, e.g. 'add badge code'")
    folder.mkdir(parents=True, exist_ok=True)
    chain = load_revisions(folder)
    numbers = [int(m.group(0)) for r in chain if (m := re.match(r"\d+", r.revision))]
    revision = f"{max([len(chain), *numbers]) + 1:04d}"
    slug = _SLUG.sub("_", message.lower()).strip("_")[:40] or "migration"
    path = folder / f"{revision}_{slug}.py"
    path.write_text(
        SCRIPT_TEMPLATE.format(
            message=message.strip().replace('"""', "'''"),
            revision=revision,
            down_revision=chain[-1].revision if chain else None,
            transactional=transactional,
        )
    )
    return path
