"""Milliseconds per tenant to provision a fleet, against the raw DDL of the same schema.

On a fresh database, ``--tenants`` tenants (default 1000) are created one after another
through ``Platform(...).tenants.create`` with the reference 15-table HR schema
(``../shared/bench/hr15.sql``, loaded with ``TenantSchema.from_sql_files``): catalog row,
schema, tables, ``tenant_id`` columns, row-level security, policies and grants, in one
transaction sent as one message.

The baseline, measured in the same run and on the same growing database, is the raw
``hr15`` DDL alone: ``BEGIN; CREATE SCHEMA; <hr15 statements>; COMMIT`` in one message on
the same owner pool, with no catalog row, no RLS and no grants. ``--raw-schemas`` of them
(default 100) are spread evenly through the fleet, so both sides see the same catalog
sizes; the ratio tenantry/raw is what tenantry's extras cost.

    .venv/bin/python bench/provision.py [--tenants 1000] [--schema-file PATH]
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from psycopg import sql

import _common as common
from tenantry import Platform, Settings, TenantSchema
from tenantry.cli.runtime import load_object

NAME = "provision"
DEFAULT_SCHEMA_FILE = common.REPO_DIR.parent / "shared" / "bench" / "hr15.sql"
WINDOW = 100  # the "first N vs last N" comparison


def parse_args(argv: Sequence[str] | None) -> Any:
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=1000, help="tenants to provision")
    parser.add_argument(
        "--schema-file",
        type=Path,
        default=DEFAULT_SCHEMA_FILE,
        help="the tenant schema: a .sql file (unqualified names) or module:object",
    )
    parser.add_argument(
        "--raw-schemas",
        type=int,
        default=100,
        help="raw-DDL baseline schemas, spread through the run",
    )
    parser.add_argument(
        "--warmup", type=int, default=3, help="uncounted creates of each kind before measuring"
    )
    parser.add_argument(
        "--spares",
        type=int,
        default=200,
        help="then: build this many spare schemas and sign up as many tenants from them (0: skip)",
    )
    parser.add_argument(
        "--progress-every", type=int, default=100, help="tenants between progress lines on stderr"
    )
    args = parser.parse_args(argv)
    if args.tenants < 1 or args.raw_schemas < 1:
        parser.error("--tenants and --raw-schemas must be at least 1")
    if args.schema_file.suffix == ".sql" and not args.schema_file.is_file():
        parser.error(f"--schema-file {args.schema_file} does not exist")
    return args


def raw_script(schema: str, ddl: str) -> bytes:
    """The baseline: the schema and its tables, one transaction, one message, nothing else."""
    ident = sql.Identifier(schema).as_string(None)
    return (
        f"BEGIN; SELECT set_config('search_path', {sql.Literal(ident).as_string(None)}, true);\n"
        f"CREATE SCHEMA {ident};\n{ddl}\nCOMMIT;"
    ).encode()


def schedule(tenants: int, raws: int) -> list[tuple[str, int]]:
    """Tenant creates in order, with the raw schemas slotted in at even intervals."""
    slots: dict[int, list[int]] = {}
    for j in range(raws):
        slots.setdefault(min(tenants - 1, int((j + 0.5) * tenants / raws)), []).append(j)
    plan: list[tuple[str, int]] = []
    for i in range(tenants):
        plan += [("raw", j) for j in slots.get(i, [])]
        plan.append(("tenant", i))
    return plan


def load_schema(spec: Path) -> TenantSchema:
    """A ``.sql`` file (its own BEGIN/COMMIT dropped, as tenantry does) or a
    ``module:object`` naming a TenantSchema, e.g. ``hr_example.schema:HR_SCHEMA``."""
    if spec.suffix == ".sql":
        return TenantSchema.from_sql_files([spec])
    schema = load_object(str(spec), "--schema-file")
    if not isinstance(schema, TenantSchema):
        raise SystemExit(f"{spec} is not a TenantSchema")
    return schema


async def run(args: Any, url: str) -> dict[str, Any]:
    schema = load_schema(args.schema_file)
    ddl = "".join(step.sql.strip().rstrip(";") + ";\n" for step in schema.steps)
    platform = Platform(Settings.from_env({"DATABASE_URL": url}), schema)
    await platform.start()
    try:
        compiled = platform.compiled_schema
        common.note(
            f"compiled {args.schema_file.name}: {len(compiled.tables)} tables, "
            f"{len(compiled.sequences)} sequences"
        )
        owner_pool = platform.db.cell().owner_pool

        async def create_raw(name: str) -> float:
            async with owner_pool.connection() as conn:
                start = time.perf_counter()
                await conn.execute(raw_script(name, ddl))
                return common.ms_since(start)

        async def create_tenant(slug: str) -> float:
            start = time.perf_counter()
            await platform.tenants.create(slug)
            return common.ms_since(start)

        for w in range(args.warmup):
            await create_tenant(f"warm-{w}")
            await create_raw(f"raw_warm_{w}")

        tenant_ms: list[float] = []
        raw_ms: list[tuple[int, float]] = []  # (fleet size when created, ms)
        started = time.perf_counter()
        last = started
        for kind, i in schedule(args.tenants, args.raw_schemas):
            if kind == "raw":
                raw_ms.append((len(tenant_ms), await create_raw(f"raw_{i:05d}")))
                continue
            tenant_ms.append(await create_tenant(f"bench-{i:05d}"))
            done = len(tenant_ms)
            if done % args.progress_every == 0 or done == args.tenants:
                now = time.perf_counter()
                recent = tenant_ms[-args.progress_every :]
                common.note(
                    f"{done}/{args.tenants} tenants, median of last {len(recent)} "
                    f"{common.percentile(recent, 50):.1f} ms, "
                    f"{len(recent) / (now - last):.1f} tenants/s "
                    f"(overall {done / (now - started):.1f}/s)"
                )
                last = now
        elapsed = time.perf_counter() - started
        async with owner_pool.connection() as conn:
            cur = await conn.execute("SELECT count(*) FROM pg_class")
            row = await cur.fetchone()
            relations = int(row[0]) if row else 0
    finally:
        await platform.stop()
    spare_build_ms, claim_ms = await run_spares(args, url, schema) if args.spares else ([], [])
    return {
        "tables": len(compiled.tables),
        "tenant_ms": tenant_ms,
        "raw_ms": raw_ms,
        "elapsed_s": elapsed,
        "relations": relations,
        "spare_build_ms": spare_build_ms,
        "claim_ms": claim_ms,
    }


async def run_spares(args: Any, url: str, schema: TenantSchema) -> tuple[list[float], list[float]]:
    """On the grown fleet: build ``--spares`` spare schemas (the background work), then sign
    up as many tenants, each of which claims a spare (one DML statement, no DDL)."""
    settings = Settings.from_env({"DATABASE_URL": url, "TENANTRY_SPARE_SCHEMAS": str(args.spares)})
    platform = Platform(settings, schema)
    await platform.start(listen=False)  # no background refill: the phases stay separate
    try:
        assert platform.spares is not None
        build_ms: list[float] = []
        mark = time.perf_counter()

        def built(done: int, total: int) -> None:
            nonlocal mark
            now = time.perf_counter()
            build_ms.append((now - mark) * 1000)
            mark = now

        mark = time.perf_counter()
        await platform.spares.fill(on_built=built)
        common.note(f"built {len(build_ms)} spare schemas")
        claim_ms: list[float] = []
        for i in range(args.spares):
            start = time.perf_counter()
            await platform.tenants.create(f"signup-{i:05d}")
            claim_ms.append(common.ms_since(start))
        async with platform.db.transaction(readonly=True) as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM tenantry.lifecycle_log WHERE action = 'create' "
                "AND detail->>'schema_source' = 'spare'"
            )
            row = await cur.fetchone()
        if not row or row[0] != args.spares:
            raise SystemExit(f"expected {args.spares} sign-ups from spares, the log says {row}")
    finally:
        await platform.stop()
    return build_ms, claim_ms


def by_fleet_size(
    tenant_ms: list[float], raw_ms: list[tuple[int, float]], parts: int = 10
) -> list[dict[str, Any]]:
    """Medians per slice of the run (by fleet size), both kinds, and their ratio."""
    n = len(tenant_ms)
    out = []
    for k in range(parts):
        lo, hi = k * n // parts, (k + 1) * n // parts
        if hi <= lo:
            continue
        mine = tenant_ms[lo:hi]
        raws = [ms for size, ms in raw_ms if lo <= size < hi]
        tenant_p50 = common.percentile(mine, 50)
        raw_p50 = common.percentile(raws, 50)
        out.append(
            {
                "fleet": f"{lo + 1}-{hi}",
                "tenants": len(mine),
                "tenant_p50_ms": tenant_p50,
                "raw": len(raws),
                "raw_p50_ms": raw_p50,
                "ratio_p50": common.ratio(tenant_p50, raw_p50),
            }
        )
    return out


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with common.throwaway_database(
        args.admin_url, "tenantry_bench_provision", keep=args.keep_database
    ) as url:
        result = asyncio.run(run(args, url))
        env = common.environment(args.admin_url)
    tenant_ms = result["tenant_ms"]
    raw_values = [ms for _, ms in result["raw_ms"]]
    tenant = common.summarize(tenant_ms)
    raw = common.summarize(raw_values)
    window = min(WINDOW, len(tenant_ms))
    first = common.percentile(tenant_ms[:window], 50)
    final = common.percentile(tenant_ms[-window:], 50)
    slices = by_fleet_size(tenant_ms, result["raw_ms"])

    print(
        f"\nprovisioning: {args.schema_file.name} ({result['tables']} tables) per tenant, "
        f"{len(tenant_ms)} tenants on a fresh database"
    )
    print(
        f"PostgreSQL {env['postgres']}, Python {env['python']}, {env['cpus']} CPUs; "
        f"{len(raw_values)} raw-DDL schemas interleaved as the same-run baseline; "
        f"{result['relations']:,} relations in the database at the end"
    )
    common.print_table(
        "ms per tenant",
        ["variant", "n", "median", "p95", "p99", "min", "max", "mean"],
        [
            [
                "tenantry tenants.create",
                tenant["n"],
                tenant["p50"],
                tenant["p95"],
                tenant["p99"],
                tenant["min"],
                tenant["max"],
                tenant["mean"],
            ],
            [
                "raw DDL alone (baseline)",
                raw["n"],
                raw["p50"],
                raw["p95"],
                raw["p99"],
                raw["min"],
                raw["max"],
                raw["mean"],
            ],
            [
                "ratio tenantry/raw",
                "",
                common.ratio(tenant["p50"], raw["p50"]),
                common.ratio(tenant["p95"], raw["p95"]),
                common.ratio(tenant["p99"], raw["p99"]),
                common.ratio(tenant["min"], raw["min"]),
                common.ratio(tenant["max"], raw["max"]),
                common.ratio(tenant["mean"], raw["mean"]),
            ],
        ],
    )
    common.print_table(
        "by fleet size (medians, ms)",
        ["tenants", "tenantry", "raw", "n raw", "ratio"],
        [
            [s["fleet"], s["tenant_p50_ms"], s["raw_p50_ms"], s["raw"], s["ratio_p50"]]
            for s in slices
        ],
    )
    print(
        f"\nmedian of the first {window} tenants: {first:.2f} ms; of the last {window}: "
        f"{final:.2f} ms; last/first {common.ratio(final, first):.3f}"
    )
    print(f"tenantry/raw at the median: {common.ratio(tenant['p50'], raw['p50']):.3f}")
    print(
        f"{len(tenant_ms)} tenants in {result['elapsed_s']:.1f} s "
        f"({len(tenant_ms) / result['elapsed_s']:.1f} tenants/s, raw schemas included)"
    )
    warm: dict[str, Any] = {}
    if result["claim_ms"]:
        claim = common.summarize(result["claim_ms"])
        build = common.summarize(result["spare_build_ms"])
        warm = {"claim_ms": claim, "spare_build_ms": build}
        common.print_table(
            f"sign-up from the warm pool (fleet of {len(tenant_ms)} + spares), ms",
            ["variant", "n", "median", "p95", "p99", "min", "max"],
            [
                [
                    "create, spare in stock",
                    claim["n"],
                    claim["p50"],
                    claim["p95"],
                    claim["p99"],
                    claim["min"],
                    claim["max"],
                ],
                [
                    "build one spare (background)",
                    build["n"],
                    build["p50"],
                    build["p95"],
                    build["p99"],
                    build["min"],
                    build["max"],
                ],
                [
                    "create, building (above)",
                    tenant["n"],
                    tenant["p50"],
                    tenant["p95"],
                    tenant["p99"],
                    tenant["min"],
                    tenant["max"],
                ],
            ],
        )
        print(
            f"sign-up from a spare vs building at the median: "
            f"{common.ratio(claim['p50'], tenant['p50']):.3f} "
            f"({common.ratio(tenant['p50'], claim['p50']):.1f}x faster)"
        )
    if not args.no_json:
        path = common.write_results(
            NAME,
            {
                "config": common.public_config(args),
                "environment": env,
                "tables": result["tables"],
                "relations_at_end": result["relations"],
                "elapsed_s": result["elapsed_s"],
                "tenant_ms": tenant,
                "raw_ms": raw,
                "ratio_p50": common.ratio(tenant["p50"], raw["p50"]),
                "ratio_p95": common.ratio(tenant["p95"], raw["p95"]),
                "first_window_p50_ms": first,
                "last_window_p50_ms": final,
                "window": window,
                "by_fleet_size": slices,
                "warm_pool": warm,
                "samples": {"tenant_ms": tenant_ms, "raw_ms": result["raw_ms"]},
            },
        )
        print(f"results: {path.relative_to(common.REPO_DIR)}")


if __name__ == "__main__":
    sys.exit(main())
