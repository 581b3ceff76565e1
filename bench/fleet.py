"""Fleet schema evolution: provisioning, a no-op migrate and an additive migrate over N
tenants — tenantry, and django-tenants side by side on the same PostgreSQL.

tenantry side, on a fresh database: the reference 15-table HR schema
(``../shared/bench/hr15.sql``) is the tenant chain's first step (tenantry adds tenant_id,
RLS, policies and grants). ``--tenants`` tenants are created one after another through
``Platform.tenants.create`` (ms per tenant at the start and at the end of the run); then
``tenantry migrate`` with nothing to do; then a release adding
``../shared/bench/hr15_additive.sql`` (a nullable column plus an index) as step 0002 is
rolled out over the whole fleet by the fleet migrator.

django-tenants side (``--django``, on by default): a virtualenv in ``bench/.venv-django``
(git-ignored) with django, django-tenants and psycopg2-binary from PyPI; a project
generated in ``bench/.django-work`` whose ``hr`` app mirrors hr15 as Django models; the
same N tenants created with ``Client(...).save()`` (its auto_create_schema), then
``migrate_schemas --executor=multiprocessing`` with nothing to do and with the same
additive change, against its own throw-away database on the same server. Ratios are
django-tenants / tenantry.

Creation is measured two ways on the tenantry side. **Cold**: the schema built from
scratch at every create (the N tenants above; first and last 100 compared, to show the
cost stays flat as the fleet grows). **Warm pool**: after the migrations, on the grown
fleet (N tenants, head schema), ``--warm-signups`` spares are built first (their build
time is reported: that is the background refill's work), then as many tenants sign up
one after another from that **pre-stocked** pool, no refill running meanwhile. Sign-ups
with durable claims (the default) and with ``synchronous_claims`` off alternate one by
one, and so does a one-row ``INSERT`` + commit on the same server: the commit's WAL flush
is the floor a durable sign-up cannot go under, measured under the same load. Before
the sign-ups are timed the server settles (``--settle``: a ``CHECKPOINT``, then up to
that many seconds for autovacuum to go idle), so the timings are those of a grown fleet
and not of the tail of a bulk build of N schemas in minutes; each sign-up's announcement
to other processes (sent after its claim, off its path) finishes between timed calls.

    .venv/bin/python bench/fleet.py [--tenants 1000] [--no-django] [--concurrency N]
        [--warm-signups 200]
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from psycopg import AsyncConnection

import _common as common
import django_side
from tenantry import Platform, SchemaStep, Settings, TenantSchema
from tenantry.migrations import FleetMigrator, MigrationSettings
from tenantry.migrations import command as commands

NAME = "fleet"
SHARED = common.REPO_DIR.parent / "shared" / "bench"
WINDOW = 100


def parse_args(argv: Sequence[str] | None) -> Any:
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=1000, help="fleet size")
    parser.add_argument("--schema-file", type=Path, default=SHARED / "hr15.sql")
    parser.add_argument("--additive-file", type=Path, default=SHARED / "hr15_additive.sql")
    parser.add_argument(
        "--concurrency", type=int, default=None, help="migrator concurrency (default: derived)"
    )
    parser.add_argument(
        "--create-concurrency",
        type=int,
        default=1,
        help="tenantry creates at once while provisioning (1: one after another, as measured)",
    )
    parser.add_argument("--no-django", action="store_true", help="skip the django-tenants side")
    parser.add_argument(
        "--django-tenants",
        type=int,
        default=None,
        help="fleet size on the django-tenants side (default: --tenants)",
    )
    parser.add_argument(
        "--warm-signups",
        type=int,
        default=200,
        help="sign-ups from a pre-stocked warm pool, per variant (0: skip)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=300.0,
        help="before timing sign-ups: CHECKPOINT, then wait up to this many seconds for "
        "autovacuum to go idle (0: time them right away)",
    )
    parser.add_argument("--progress-every", type=int, default=500)
    args = parser.parse_args(argv)
    if args.tenants < 1:
        parser.error("--tenants must be at least 1")
    return args


def chains(args: Any) -> tuple[TenantSchema, TenantSchema]:
    base = TenantSchema.from_sql_files([args.schema_file])
    base = TenantSchema((SchemaStep("0001", base.steps[0].sql, "hr15"),))
    additive = SchemaStep("0002", args.additive_file.read_text(), "hr15 additive")
    return base, TenantSchema.of(*base.steps, additive)


async def tenantry_side(args: Any, url: str) -> dict[str, Any]:
    base, head = chains(args)
    settings = Settings.from_env({"DATABASE_URL": url})
    out: dict[str, Any] = {}
    platform = Platform(settings, base)
    await platform.start(listen=False)
    try:
        create_ms: list[float] = []
        started = time.perf_counter()
        todo = iter(range(args.tenants))

        async def worker() -> None:
            for i in todo:
                t0 = time.perf_counter()
                await platform.tenants.create(f"b{i:06d}")
                create_ms.append(common.ms_since(t0))
                if len(create_ms) % args.progress_every == 0:
                    window = create_ms[-WINDOW:]
                    common.note(
                        f"tenantry: {len(create_ms)} tenants, median of the last "
                        f"{len(window)}: {common.percentile(window, 50):.1f} ms"
                    )

        await asyncio.gather(*(worker() for _ in range(args.create_concurrency)))
        out["create_s"] = time.perf_counter() - started
        out["create_ms"] = create_ms

        t0 = time.perf_counter()
        noop = await commands.upgrade(
            platform, settings=MigrationSettings(concurrency=args.concurrency)
        )
        out["noop_s"] = time.perf_counter() - t0
        assert noop.planned == 0
        assert noop.ok
        t0 = time.perf_counter()
        status = await commands.status(platform)
        out["status_ms"] = common.ms_since(t0)
        assert status.up_to_date
    finally:
        await platform.stop()

    t0 = time.perf_counter()
    platform = Platform(settings, head)
    await platform.start(listen=False)
    out["start_new_release_s"] = time.perf_counter() - t0
    try:
        migrator = FleetMigrator(
            platform.db,
            platform.compiled_schema,
            settings=MigrationSettings(concurrency=args.concurrency),
        )
        out["concurrency"] = migrator.concurrency
        last = [time.perf_counter()]

        def progress(p: Any) -> None:
            if p.done % args.progress_every == 0:
                now = time.perf_counter()
                common.note(f"tenantry migrate: {p.wave} {p.done}/{p.total}")
                last[0] = now

        t0 = time.perf_counter()
        report = await migrator.run(on_progress=progress)
        out["additive_s"] = time.perf_counter() - t0
        out["additive_report"] = report.as_dict()
        assert report.ok, report.as_dict()
        assert report.migrated == args.tenants
        t0 = time.perf_counter()
        again = await migrator.run()
        out["noop_after_s"] = time.perf_counter() - t0
        assert again.planned == 0
    finally:
        await platform.stop()
    if args.warm_signups:
        out["warm"] = await warm_pool(args, url, head)
    return out


async def warm_pool(args: Any, url: str, head: TenantSchema) -> dict[str, Any]:
    """Pre-stock spares on the grown fleet, then time sign-ups from them: durable and
    asynchronous-commit claims alternating, with a one-row commit as the floor."""
    n = args.warm_signups
    durable = Platform(
        Settings.from_env({"DATABASE_URL": url, "TENANTRY_SPARE_SCHEMAS": str(2 * n)}), head
    )
    relaxed = Platform(
        Settings.from_env(
            {
                "DATABASE_URL": url,
                "TENANTRY_SPARE_SCHEMAS": str(2 * n),
                "TENANTRY_SPARE_SYNCHRONOUS_CLAIMS": "off",
            }
        ),
        head,
    )
    out: dict[str, Any] = {"signups": n, "pool": "pre-stocked (no refill while timed)"}
    # listen=False: no background refill, so the timed sign-ups are claims and nothing else.
    await durable.start(listen=False)
    await relaxed.start(listen=False)
    try:
        assert durable.spares is not None
        build_ms: list[float] = []
        mark = [time.perf_counter()]

        def built(done: int, total: int) -> None:
            now = time.perf_counter()
            build_ms.append((now - mark[0]) * 1000)
            mark[0] = now
            if done % args.progress_every == 0:
                common.note(f"warm pool: built {done}/{total} spares")

        mark[0] = time.perf_counter()
        await durable.spares.fill(on_built=built)
        out["spare_build_ms"] = build_ms
        if args.settle:
            out["settle"] = await settle(url, args.settle)
        common.note(f"warm pool: {len(build_ms)} spares in stock; signing up {n} + {n}")
        pool = durable.db.cell().owner_pool
        async with pool.connection() as conn:
            await conn.execute("CREATE TABLE IF NOT EXISTS public.bench_commit_probe (x int)")
        series: dict[str, list[float]] = {"durable": [], "relaxed": [], "commit": []}
        for i in range(n):
            for kind in common.rotated(list(series), i):
                t0 = time.perf_counter()
                if kind == "commit":
                    async with pool.connection() as conn:
                        await conn.execute(
                            "INSERT INTO public.bench_commit_probe VALUES (1)", prepare=True
                        )
                else:
                    platform = durable if kind == "durable" else relaxed
                    await platform.tenants.create(f"w{kind[0]}{i:06d}")
                series[kind].append(common.ms_since(t0))
                # The announcement to other processes' caches goes out after the claim,
                # off the sign-up's path; let it finish before the next timed call.
                for platform in (durable, relaxed):
                    assert platform.spares is not None
                    await platform.spares.announced()
        out |= {f"{kind}_ms": ms for kind, ms in series.items()}
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*) FROM tenantry.lifecycle_log WHERE action = 'create' "
                "AND detail->>'schema_source' = 'spare'"
            )
            row = await cur.fetchone()
            await conn.execute("DROP TABLE public.bench_commit_probe")
        if not row or row[0] != 2 * n:
            raise SystemExit(f"expected {2 * n} sign-ups from spares, the log says {row}")
    finally:
        await relaxed.stop()
        await durable.stop()
    return out


async def settle(url: str, limit_s: float) -> dict[str, Any]:
    """Let the server digest the bulk build before sign-ups are timed: a ``CHECKPOINT``
    (the build's dirty pages are written now, not under the timed commits), then wait (at
    most ``limit_s``) until no autovacuum worker is busy (building thousands of schemas in
    minutes leaves millions of new catalog rows for it to vacuum and analyze). A fleet
    grown over months has neither backlog. Returns what it waited for."""
    t0 = time.perf_counter()
    async with await AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute("CHECKPOINT")
        checkpoint_s = time.perf_counter() - t0
        workers: list[str] = []
        while time.perf_counter() - t0 < limit_s:
            cur = await conn.execute(
                "SELECT coalesce(query, '') FROM pg_stat_activity "
                "WHERE backend_type = 'autovacuum worker'"
            )
            workers = [str(q) for (q,) in await cur.fetchall()]
            if not workers:
                break
            await asyncio.sleep(1.0)
    waited = time.perf_counter() - t0
    common.note(
        f"settled in {waited:.1f} s (checkpoint {checkpoint_s:.1f} s)"
        + (f"; autovacuum still busy: {workers}" if workers else "")
    )
    return {"seconds": waited, "checkpoint_s": checkpoint_s, "autovacuum_busy": workers}


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with common.throwaway_database(
        args.admin_url, "tenantry_bench_fleet", keep=args.keep_database
    ) as url:
        mine = asyncio.run(tenantry_side(args, url))
    env = common.environment(args.admin_url)
    theirs: dict[str, Any] | None = None
    django_error: str | None = None
    if not args.no_django:
        n = args.django_tenants or args.tenants
        try:
            with common.throwaway_database(
                args.admin_url, "tenantry_bench_django", keep=args.keep_database
            ) as durl:
                theirs = django_side.run(durl, n, args.schema_file)
        except (subprocess.CalledProcessError, OSError, RuntimeError) as exc:
            django_error = f"{type(exc).__name__}: {exc}"
            common.note(f"django-tenants side failed: {django_error}")

    create = mine["create_ms"]
    window = min(WINDOW, len(create))
    first = common.percentile(create[:window], 50)
    last = common.percentile(create[-window:], 50)
    n = args.tenants
    print(
        f"\nfleet: {args.schema_file.name} per tenant, {n:,} tenants; PostgreSQL "
        f"{env['postgres']}, Python {env['python']}, {env['cpus']} CPUs"
    )
    summary = common.summarize(create)
    rows: list[list[Any]] = [
        ["tenantry: provision (total s)", mine["create_s"], "", ""],
        ["tenantry: provision median ms/tenant", summary["p50"], "", ""],
        [f"tenantry: first {window} median ms", first, "", ""],
        [f"tenantry: last {window} median ms", last, "", ""],
        ["tenantry: no-op migrate (s)", mine["noop_s"], "", ""],
        ["tenantry: migrate status (ms)", mine["status_ms"], "", ""],
        [
            f"tenantry: additive migrate (s, concurrency {mine['concurrency']})",
            mine["additive_s"],
            "",
            "",
        ],
        ["tenantry: no-op after additive (s)", mine["noop_after_s"], "", ""],
    ]
    warm = mine.get("warm")
    if warm:
        durable = common.summarize(warm["durable_ms"])
        relaxed = common.summarize(warm["relaxed_ms"])
        floor = common.summarize(warm["commit_ms"])
        spare = common.summarize(warm["spare_build_ms"])
        rows += [
            [
                f"tenantry: warm-pool sign-up, durable median ms ({warm['signups']}, pre-stocked)",
                durable["p50"],
                "p95",
                durable["p95"],
            ],
            [
                "tenantry: warm-pool sign-up, synchronous_claims off, median ms",
                relaxed["p50"],
                "p95",
                relaxed["p95"],
            ],
            ["  floor: one-row INSERT + commit, median ms", floor["p50"], "p95", floor["p95"]],
            ["  background: build one spare, median ms", spare["p50"], "", ""],
            [
                "  cold median / warm durable median",
                common.ratio(summary["p50"], durable["p50"]),
                "",
                "",
            ],
        ]
    if theirs is not None:
        dn = theirs["tenants"]
        dcreate = theirs["create_ms"]
        dwindow = min(WINDOW, len(dcreate))
        scale = n / dn if dn else 1.0
        rows += [
            [f"django-tenants ({dn:,} tenants): provision (total s)", theirs["create_s"], "", ""],
            [
                "django-tenants: provision median ms/tenant",
                common.percentile(dcreate, 50),
                "vs tenantry cold",
                common.ratio(common.percentile(dcreate, 50), summary["p50"]),
            ],
            *(
                [
                    [
                        "django-tenants: provision median ms/tenant",
                        common.percentile(dcreate, 50),
                        f"vs tenantry warm, {label}",
                        common.ratio(
                            common.percentile(dcreate, 50), common.percentile(warm[key], 50)
                        ),
                    ]
                    for key, label in (("durable_ms", "durable"), ("relaxed_ms", "sync off"))
                ]
                if warm
                else []
            ),
            [
                f"django-tenants: first {dwindow} median ms",
                common.percentile(dcreate[:dwindow], 50),
                "",
                "",
            ],
            [
                f"django-tenants: last {dwindow} median ms",
                common.percentile(dcreate[-dwindow:], 50),
                "",
                "",
            ],
            [
                "django-tenants: no-op migrate_schemas (s)",
                theirs["noop_s"],
                "vs tenantry",
                common.ratio(theirs["noop_s"] * scale, mine["noop_s"]),
            ],
            [
                "django-tenants: additive migrate_schemas (s)",
                theirs["additive_s"],
                "vs tenantry",
                common.ratio(theirs["additive_s"] * scale, mine["additive_s"]),
            ],
        ]
    common.print_table("results", ["measure", "value", "", "ratio"], rows)
    print(
        f"\ntenantry provisioning: median of the first {window} {first:.2f} ms, of the last "
        f"{window} {last:.2f} ms (last/first {common.ratio(last, first):.3f})"
    )
    if warm:
        print(
            f"tenantry warm-pool sign-up ({warm['signups']} per variant, pool pre-stocked, "
            f"fleet of {n:,}): median {common.percentile(warm['durable_ms'], 50):.3f} ms durable "
            f"(p95 {common.percentile(warm['durable_ms'], 95):.3f}), "
            f"{common.percentile(warm['relaxed_ms'], 50):.3f} ms with synchronous_claims off; "
            f"a bare one-row commit: {common.percentile(warm['commit_ms'], 50):.3f} ms"
        )
        if "settle" in warm:
            busy = warm["settle"]["autovacuum_busy"]
            print(
                f"  timed after the server settled for {warm['settle']['seconds']:.1f} s "
                f"(CHECKPOINT {warm['settle']['checkpoint_s']:.1f} s"
                + (f"; autovacuum still busy: {len(busy)} worker(s))" if busy else ")")
            )
    print(
        f"tenantry additive migrate: {n / mine['additive_s']:.0f} tenants/s; "
        f"no-op migrate {mine['noop_s'] * 1000:.1f} ms for {n:,} tenants"
    )
    if theirs is not None:
        dn = theirs["tenants"]
        note = "" if dn == n else f" (django-tenants scaled linearly from {dn:,} tenants)"
        dmedian = common.percentile(theirs["create_ms"], 50)
        if warm:
            print(
                f"django-tenants / tenantry tenant creation: cold {dmedian / summary['p50']:.1f}x, "
                f"warm pool {dmedian / common.percentile(warm['durable_ms'], 50):.0f}x (durable), "
                f"{dmedian / common.percentile(warm['relaxed_ms'], 50):.0f}x "
                "(synchronous_claims off)"
            )
        print(
            "django-tenants / tenantry: provision median "
            f"{common.ratio(dmedian, summary['p50']):.1f}x, "
            f"no-op migrate {common.ratio(theirs['noop_s'] * n / dn, mine['noop_s']):.0f}x, "
            "additive migrate "
            f"{common.ratio(theirs['additive_s'] * n / dn, mine['additive_s']):.1f}x" + note
        )
    elif django_error:
        print(f"django-tenants side: not measured ({django_error})")
    if not args.no_json:
        path = common.write_results(
            NAME,
            {
                "config": common.public_config(args),
                "environment": env,
                "tenantry": {**mine, "create_summary_ms": summary},
                "django_tenants": theirs,
                "django_error": django_error,
            },
        )
        print(f"results: {path.relative_to(common.REPO_DIR)}")
    json.dumps(mine, default=str)  # results must be serialisable


if __name__ == "__main__":
    sys.exit(main())
