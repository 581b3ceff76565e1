"""What the hash-chained audit trail adds to a publishing transaction's commit, in
PostgreSQL alone.

A procedure commits ``--transactions`` publishing transactions in a loop (each binds one of
8 tenants and calls ``tenantry.append_events`` with ``size`` events, then ``COMMIT``: the
deferred trigger ``tenantry.chain_audit`` appends the events to the tenant's chain at that
commit). The same loop runs with the trigger disabled. No client and no network are in the
loop, so what differs between the two is the chain's work. The variants alternate
(rotated) over ``--rounds`` rounds; the outbox is emptied after every run, and every
tenant's chain is verified at the end.

    .venv/bin/python bench/audit_chain.py [--sizes 1,5,20,1000] [--rounds 5]
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from _common import (
    base_parser,
    environment,
    note,
    percentile,
    print_table,
    process_cpu_seconds,
    public_config,
    rotated,
    throwaway_database,
    write_results,
)
from hr_example import HR_SCHEMA
from tenantry import Platform, Settings

TENANTS = 8
LOOP = """
CREATE PROCEDURE public.bench_publish(transactions integer, size integer, tenants uuid[])
LANGUAGE plpgsql AS $$
DECLARE
    v_events jsonb;
BEGIN
    FOR i IN 1..transactions LOOP
        SELECT jsonb_agg(jsonb_build_object(
                   'id', gen_random_uuid(), 'type', 'bench.audit', 'topic', 'bench.audit',
                   'subject', NULL, 'version', 1, 'payload', jsonb_build_object('i', i, 'k', k)))
        INTO v_events FROM generate_series(1, size) AS k;
        PERFORM set_config('app.tenant_id',
                           tenants[1 + i % array_length(tenants, 1)]::text, false);
        PERFORM tenantry.append_events('pro', now(), NULL, v_events);
        COMMIT;
    END LOOP;
END $$;
"""


async def run(url: str, sizes: list[int], args: Any) -> tuple[dict[str, Any], int]:
    """Tenants through the platform, the loops (in a thread: plain psycopg), then every
    tenant's chain verified."""
    platform = Platform(Settings.from_env({"DATABASE_URL": url}), HR_SCHEMA)
    await platform.start(listen=False)
    try:
        tenants = [await platform.tenants.create(f"audit{i}", tier="pro") for i in range(TENANTS)]
        results = await asyncio.to_thread(measure, url, [t.id for t in tenants], sizes, args)
        entries = 0
        for tenant in tenants:
            report = await platform.events.audit.verify(tenant.id)
            if not report.ok:
                raise SystemExit(f"the audit chain of {tenant.slug} does not verify: {report}")
            entries += report.entries
    finally:
        await platform.stop()
    return results, entries


def measure(url: str, ids: list[Any], sizes: list[int], args: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(LOOP)
        pid = conn.info.backend_pid
        for size in sizes:
            transactions = max(10, args.events // size)
            runs: dict[str, list[float]] = {"chain": [], "no chain": []}
            cpu: dict[str, list[float]] = {"chain": [], "no chain": []}
            conn.execute("CALL public.bench_publish(%s, %s, %s)", (10, size, ids))  # warm-up
            for round_ in range(args.rounds):
                for variant in rotated(list(runs), round_):
                    state = "ENABLE" if variant == "chain" else "DISABLE"
                    conn.execute(f"ALTER TABLE tenantry.outbox {state} TRIGGER outbox_audit_chain")
                    start, used = time.perf_counter(), process_cpu_seconds(pid)
                    conn.execute("CALL public.bench_publish(%s, %s, %s)", (transactions, size, ids))
                    runs[variant].append((time.perf_counter() - start) * 1000 / transactions)
                    cpu[variant].append((process_cpu_seconds(pid) - used) * 1000 / transactions)
                    conn.execute("TRUNCATE tenantry.outbox")
            conn.execute("ALTER TABLE tenantry.outbox ENABLE TRIGGER outbox_audit_chain")
            with_chain = percentile(runs["chain"], 50)
            without = percentile(runs["no chain"], 50)
            out[str(size)] = {"transactions": transactions, "runs_ms": runs, "cpu_ms": cpu}
            out[str(size)] |= {"chain_ms": with_chain, "no_chain_ms": without}
            out[str(size)] |= {
                "chain_cpu_ms": percentile(cpu["chain"], 50),
                "no_chain_cpu_ms": percentile(cpu["no chain"], 50),
            }
            note(
                f"{size} per transaction: {with_chain:.3f} ms with the chain, "
                f"{without:.3f} ms without"
            )
    return out


def main() -> None:
    parser = base_parser(__doc__.splitlines()[0] if __doc__ else "audit chain")
    parser.add_argument(
        "--sizes", default="1,5,20,1000", help="events per transaction, comma-separated"
    )
    parser.add_argument("--rounds", type=int, default=5, help="runs of each variant per size")
    parser.add_argument(
        "--events", type=int, default=5000, help="events per run (at least 10 transactions)"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 1 or args.rounds < 1:
        parser.error("--sizes must be positive integers and --rounds at least 1")
    with throwaway_database(args.admin_url, "tenantry_bench_audit", keep=args.keep_database) as url:
        results, entries = asyncio.run(run(url, sizes, args))
    note(f"{entries:,} audit entries verified")
    for kind, key in (("wall time", "ms"), ("server CPU", "cpu_ms")):
        rows = []
        for size, r in results.items():
            added = r[f"chain_{key}"] - r[f"no_chain_{key}"]
            rows.append(
                [
                    size,
                    r[f"no_chain_{key}"],
                    r[f"chain_{key}"],
                    added,
                    added * 1000 / int(size),
                    r[f"chain_{key}"] / r[f"no_chain_{key}"],
                ]
            )
        print_table(
            f"Publishing transactions in PostgreSQL alone, {kind}, medians of {args.rounds} runs",
            ["events/tx", "no chain ms/tx", "chain ms/tx", "chain adds ms/tx", "us/event", "ratio"],
            rows,
        )
    if not args.no_json:
        path = write_results(
            "audit_chain",
            {
                "config": public_config(args),
                "environment": environment(args.admin_url),
                "results": results,
                "verified_entries": entries,
            },
        )
        note(f"wrote {path}")


if __name__ == "__main__":
    main()
