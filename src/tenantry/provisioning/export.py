"""Tenant export: one ``.tar.gz`` archive per tenant.

Layout::

    manifest.json           format, tenant, schema version, time, per-table rows + sha256
    tables/<table>.jsonl    one JSON object per row

Rows are read as the tenant (application role, row-level security on) in one
REPEATABLE READ snapshot, so the archive is consistent even while the tenant is served.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from psycopg import sql

from tenantry.catalog.models import Tenant
from tenantry.db import Database
from tenantry.provisioning.errors import ExportError

FORMAT = "tenantry-export/1"
ProgressCallback = Callable[[str, int], None]


@dataclass(frozen=True, slots=True)
class ExportResult:
    """Where the archive is and what it holds."""

    path: Path
    manifest: dict[str, Any]

    @property
    def total_rows(self) -> int:
        """Rows across all tables."""
        return sum(table["rows"] for table in self.manifest["tables"])


async def export_tenant(
    db: Database,
    tenant: Tenant,
    tables: tuple[str, ...],
    out_dir: Path,
    *,
    on_table: ProgressCallback | None = None,
) -> ExportResult:
    """Write ``<out_dir>/<slug>-<timestamp>.tar.gz`` for ``tenant`` and return it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC)
    path = out_dir / f"{tenant.slug}-{stamp.strftime('%Y%m%dT%H%M%S%fZ')}.tar.gz"
    entries: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="tenantry-export-") as tmp:
        work = Path(tmp)
        async with db.tenant_transaction(tenant.context(), snapshot=True) as conn:
            for table in tables:
                target = work / f"{table}.jsonl"
                digest = hashlib.sha256()
                rows = 0
                query = sql.SQL("SELECT row_to_json(r)::text FROM {} r").format(
                    sql.Identifier(table)
                )
                with target.open("wb") as fh:
                    async with conn.cursor(name=f"export_{len(entries)}") as cur:
                        await cur.execute(query)
                        while batch := await cur.fetchmany(2000):
                            for (text,) in batch:
                                line = text.encode() + b"\n"
                                digest.update(line)
                                fh.write(line)
                            rows += len(batch)
                entries.append(
                    {
                        "name": table,
                        "file": f"tables/{table}.jsonl",
                        "rows": rows,
                        "sha256": digest.hexdigest(),
                    }
                )
                if on_table is not None:
                    on_table(table, rows)
        manifest = {
            "format": FORMAT,
            "tenant": tenant.as_dict(),
            "schema_version": tenant.schema_version,
            "exported_at": stamp.isoformat(),
            "tables": entries,
        }
        partial = path.with_suffix(".partial")
        with tarfile.open(partial, "w:gz") as tar:
            data = json.dumps(manifest, indent=2).encode()
            info = tarfile.TarInfo("manifest.json")
            info.size = len(data)
            info.mtime = int(stamp.timestamp())
            tar.addfile(info, io.BytesIO(data))
            for entry in entries:
                tar.add(work / f"{entry['name']}.jsonl", arcname=entry["file"])
        partial.rename(path)  # an archive is either whole or absent
    return ExportResult(path, manifest)


def verify_export(path: Path) -> dict[str, Any]:
    """Check an archive against its manifest; return the manifest or raise ExportError."""
    with tarfile.open(path, "r:gz") as tar:
        member = tar.extractfile("manifest.json")
        if member is None:
            raise ExportError(f"{path} has no manifest.json")
        manifest: dict[str, Any] = json.loads(member.read())
        for entry in manifest["tables"]:
            handle = tar.extractfile(entry["file"])
            if handle is None:
                raise ExportError(f"{path}: {entry['file']} is missing")
            data = handle.read()
            if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                raise ExportError(f"{path}: checksum mismatch for {entry['file']}")
            if data.count(b"\n") != entry["rows"]:
                raise ExportError(f"{path}: row count mismatch for {entry['file']}")
    return manifest
