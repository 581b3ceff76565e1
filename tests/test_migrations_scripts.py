"""Authoring migrations: script folders become ordered chains, Alembic operations render
to SQL, ``tenantry migrations new`` scaffolds the next revision, and compile cuts the
chain per step exactly as provisioning concatenates it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from hr_example.schema import HR_CONTROL_PLANE, HR_SCHEMA
from tenantry import SchemaStep, TenantSchema
from tenantry.cli import cli
from tenantry.db import SchemaDefinitionError
from tenantry.migrations import (
    MigrationScriptError,
    load_revisions,
    load_schema,
    new_revision,
)

INITIAL = """\
-- revision: 0001
-- down_revision: None
-- message: notes
CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL);
"""


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def python_revision(revision: str, down: str | None, body: str, transactional: bool = True) -> str:
    return (
        f'"""revision {revision}"""\n\nimport sqlalchemy as sa\n\n'
        f"revision = {revision!r}\ndown_revision = {down!r}\ntransactional = {transactional!r}\n\n"
        f"def upgrade(op):\n    {body}\n"
    )


def test_chain_is_ordered_by_down_revision_and_renders_alembic_operations(
    tmp_path: Path,
) -> None:
    """File names do not order the chain, links do; ops render to PostgreSQL DDL."""
    write(tmp_path, "0001_notes.sql", INITIAL)
    write(
        tmp_path,
        "a_index.py",
        python_revision(
            "0003",
            "0002",
            'op.create_index("notes_tag_idx", "notes", ["tag"], postgresql_concurrently=True)',
            transactional=False,
        ),
    )
    write(
        tmp_path,
        "z_tag.py",
        python_revision("0002", "0001", 'op.add_column("notes", sa.Column("tag", sa.String(20)))'),
    )
    schema = load_schema(tmp_path)
    assert [s.version for s in schema.steps] == ["0001", "0002", "0003"]
    assert schema.source == tmp_path
    assert schema.steps[0].description == "notes"
    assert "ALTER TABLE notes ADD COLUMN tag VARCHAR(20);" in schema.steps[1].sql
    assert schema.steps[2].sql == "CREATE INDEX CONCURRENTLY notes_tag_idx ON notes (tag);"
    assert not schema.steps[2].transactional
    assert schema.steps[2].transactional_sql == "CREATE INDEX notes_tag_idx ON notes (tag);"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"b.sql": "-- revision: 0002b\n-- down_revision: 0001\nSELECT 1;"}, "both follow"),
        ({"b.sql": "-- revision: 0001\n-- down_revision: None\nSELECT 1;"}, "declared by both"),
        ({"b.sql": "-- revision: 0009\n-- down_revision: 0007\nSELECT 1;"}, "not linked"),
    ],
)
def test_forks_duplicates_and_orphans_are_refused(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    """A chain that is not one straight line is an error naming the files involved."""
    write(tmp_path, "0001.sql", INITIAL)
    write(tmp_path, "0002.sql", "-- revision: 0002\n-- down_revision: 0001\nSELECT 2;")
    for name, text in files.items():
        write(tmp_path, name, text)
    with pytest.raises(MigrationScriptError, match=message):
        load_revisions(tmp_path)


def test_migrations_new_scaffolds_the_next_linked_revision(tmp_path: Path) -> None:
    """``tenantry migrations new`` writes NNNN_<message>.py after the current head, and the
    scaffold loads as a valid (empty) revision."""
    runner = CliRunner()
    first = runner.invoke(cli, ["migrations", "new", "Create notes", "--dir", str(tmp_path)])
    assert first.exit_code == 0, first.output
    second = runner.invoke(
        cli,
        ["migrations", "new", "index notes", "--dir", str(tmp_path), "--non-transactional"],
    )
    assert second.exit_code == 0, second.output
    assert Path(second.output.strip()).name == "0002_index_notes.py"
    revisions = load_revisions(tmp_path)
    assert [(r.revision, r.down_revision, r.transactional) for r in revisions] == [
        ("0001", None, True),
        ("0002", "0001", False),
    ]
    assert revisions[0].message == "Create notes"
    assert revisions[0].sql == ""
    assert new_revision(tmp_path, "third").name == "0003_third.py"


def test_hr_example_is_a_migration_chain() -> None:
    """The HR example's schemas come from its migration folders."""
    assert HR_SCHEMA.head == "0002"
    assert HR_SCHEMA.source is not None
    assert "CREATE TABLE employees" in HR_SCHEMA.steps[0].sql
    assert HR_CONTROL_PLANE.head == "0001"
    assert "CREATE TABLE hr_shared.public_holidays" in HR_CONTROL_PLANE.steps[0].sql


async def test_compile_cuts_the_chain_per_step_as_provisioning_concatenates_it(
    database_url: str,
) -> None:
    """Each compiled step carries its own safety net; the provisioning script is exactly the
    steps in order; online steps keep CONCURRENTLY for the migrator only."""
    schema = TenantSchema.of(
        SchemaStep("0001", "CREATE TABLE notes (id bigint PRIMARY KEY, tag text);"),
        SchemaStep("0002", "CREATE TABLE tags (name text PRIMARY KEY);"),
        SchemaStep(
            "0003", "CREATE INDEX CONCURRENTLY notes_tag_idx ON notes (tag);", transactional=False
        ),
    )
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        compiled = await schema.compile(conn, app_role="tenantry_app")
    assert compiled.versions == ("0001", "0002", "0003")
    assert [s.tables for s in compiled.steps] == [("notes",), ("tags",), ()]
    assert 'CREATE POLICY tenant_isolation ON "tags"' in compiled.steps[1].sql
    assert '"notes"' not in compiled.steps[1].sql
    assert compiled.ddl == "\n".join(f"-- step {s.version}\n{s.sql}" for s in compiled.steps)
    assert "CONCURRENTLY" not in compiled.ddl
    assert compiled.steps[2].statements() == [
        "CREATE INDEX CONCURRENTLY notes_tag_idx ON notes (tag)"
    ]
    assert [s.version for s in compiled.pending("0001")] == ["0002", "0003"]
    with pytest.raises(SchemaDefinitionError, match="not in this tenant schema chain"):
        compiled.pending("0042")


async def test_non_transactional_steps_may_not_create_tables(database_url: str) -> None:
    """Tables need their safety net in the same transaction, so an online step cannot
    create one."""
    schema = TenantSchema.of(
        SchemaStep("0001", "CREATE TABLE notes (id bigint PRIMARY KEY);", transactional=False)
    )
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        with pytest.raises(SchemaDefinitionError, match="non-transactional"):
            await schema.compile(conn, app_role="tenantry_app")
