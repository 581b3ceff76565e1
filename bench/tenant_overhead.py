"""What tenant routing costs on a read endpoint, against a single-tenant baseline.

The same HR read, ``GET /api/employees?limit=50`` (a page of 50 seeded rows), served two
ways in one process, on the same FastAPI, psycopg pool size, SQL and response model:

* **tenant-routed**: the HR example app (``hr_example.create_app``). ``X-Tenant-ID`` goes
  through ``TenantMiddleware`` (cached tenant directory), the handler's connection opens
  with ``BEGIN; SET LOCAL search_path = ...; SET LOCAL app.tenant_id = ...``
  as the application role, and row-level security filters the rows.
* **single-tenant baseline**: a FastAPI app with the one route, no middleware and no
  tenant context; a pool whose connections have ``search_path`` fixed to a schema built
  from the HR example's own DDL (no ``tenant_id``, no RLS), a plain ``BEGIN`` through
  ``tenantry.db.transaction.run_transaction``.

A third variant, on by default (``--rotate``), spreads tenant-routed requests over
several tenants, as a real fleet would, through an app instance (and pools) of its own:
its connections switch ``search_path`` between transactions, which makes PostgreSQL
re-plan the statements psycopg has prepared on them.

The apps are driven in-process through ``httpx.ASGITransport`` (no sockets), after a
warm-up, in interleaved rounds whose variant order rotates: one request at a time
(latency; the variants alternate call by call, A, B, A, B..., so machine noise hits them
alike), then ``--concurrency`` at once (throughput; the variants take turns by block).
Last, the same SELECT straight through ``tenantry.db`` (no HTTP):
``Database.tenant_transaction`` against ``run_transaction`` with a plain ``BEGIN``.

    .venv/bin/python bench/tenant_overhead.py [--rounds 20] [--concurrency 16]
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
import psycopg
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from psycopg import AsyncConnection, sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

import _common as common
import hr_example
from hr_example.api import After, Limit
from hr_example.models import Employee, Page
from hr_example.schema import HR_SCHEMA
from tenantry import Platform, Settings, TenantContext
from tenantry.db.binding import PLAIN_BEGIN
from tenantry.db.transaction import run_transaction

NAME = "tenant_overhead"
BASELINE_SCHEMA = "hr_baseline"
PATH = "/api/employees"

# The HR example's query, word for word (hr_example.api.list_employees without a filter).
_EMPLOYEE = (
    "id, first_name, last_name, email, title, department_id, hired_on, created_at, updated_at"
)
EMPLOYEES_QUERY = f"SELECT {_EMPLOYEE} FROM employees WHERE id > %s ORDER BY id LIMIT %s"
EMPLOYEES_BY_DEPARTMENT_QUERY = (
    f"SELECT {_EMPLOYEE} FROM employees WHERE id > %s AND department_id = %s ORDER BY id LIMIT %s"
)

SEED_DEPARTMENTS = (
    "INSERT INTO departments (name) SELECT 'Department ' || g FROM generate_series(1, %s) g"
)
SEED_EMPLOYEES = (
    "INSERT INTO employees (first_name, last_name, email, title, department_id, hired_on) "
    "SELECT 'First' || g, 'Last' || g, 'employee' || g || '@example.com', 'Title ' || (g %% 7), "
    "(g %% %s) + 1, DATE '2020-01-01' + g FROM generate_series(1, %s) g"
)
DEPARTMENTS = 5


# -- the single-tenant baseline app ---------------------------------------------------------
async def _baseline_connection(request: Request) -> AsyncIterator[AsyncConnection[Any]]:
    pool: AsyncConnectionPool[AsyncConnection[Any]] = request.app.state.pool
    async with run_transaction(pool, PLAIN_BEGIN) as conn:
        yield conn


# Function-scoped like tenantry's TenantConnection: COMMIT before the response is sent.
BaselineConnection = Annotated[
    AsyncConnection[Any], Depends(_baseline_connection, scope="function")
]
baseline_router = APIRouter(prefix="/api")


@baseline_router.get("/employees")
async def list_employees(
    conn: BaselineConnection,
    limit: Limit = 50,
    after: After = 0,
    department_id: Annotated[int | None, Query(gt=0)] = None,
) -> Page[Employee]:
    """The HR example's handler, minus the tenant."""
    if department_id is None:
        query = EMPLOYEES_QUERY
        params: tuple[Any, ...] = (after,)
    else:
        query = EMPLOYEES_BY_DEPARTMENT_QUERY
        params = (after, department_id)
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, (*params, limit + 1))
        rows = await cur.fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return Page[Employee](
        items=[Employee(**row) for row in rows], next=rows[-1]["id"] if more else None
    )


async def _autocommit(conn: AsyncConnection[Any]) -> None:
    await conn.set_autocommit(True)  # as tenantry's pools: transactions opened explicitly


def create_baseline_app(url: str, *, pool_size: int) -> FastAPI:
    """One route, one fixed schema, no tenant anything."""
    pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
        url,
        min_size=pool_size,
        max_size=pool_size,
        kwargs={
            "application_name": "bench-baseline",
            "options": f"-c search_path={BASELINE_SCHEMA}",
        },
        configure=_autocommit,
        open=False,
        name="bench-baseline",
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pool.open(wait=True, timeout=30)
        try:
            yield
        finally:
            await pool.close()

    app = FastAPI(title="single-tenant baseline", lifespan=lifespan)
    app.state.pool = pool
    app.include_router(baseline_router)
    return app


# -- setup ----------------------------------------------------------------------------------
def create_baseline_schema(url: str, employees: int) -> None:
    """The HR example's tables (its own step SQL), without tenant_id or RLS, seeded."""
    ident = sql.Identifier(BASELINE_SCHEMA)
    with psycopg.connect(url) as conn:  # one transaction, committed on exit
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(ident))
        for step in HR_SCHEMA.steps:
            conn.execute(step.sql.encode())
        conn.execute(SEED_DEPARTMENTS, (DEPARTMENTS,))
        conn.execute(SEED_EMPLOYEES, (DEPARTMENTS, employees))


async def seed_tenant(platform: Platform, ctx: TenantContext, employees: int) -> None:
    """The same rows as the baseline, written as the tenant."""
    async with platform.db.tenant_transaction(ctx) as conn:
        await conn.execute(SEED_DEPARTMENTS, (DEPARTMENTS,))
        await conn.execute(SEED_EMPLOYEES, (DEPARTMENTS, employees))


def vacuum_analyze(url: str) -> None:
    """Fresh statistics and hint bits everywhere, so both sides plan and read alike."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")


# -- measurement ----------------------------------------------------------------------------
@dataclass
class Variant:
    """One way of serving the read, and what was measured for it."""

    key: str
    label: str
    call: common.Call
    samples: dict[str, list[float]] = field(default_factory=dict)  # phase -> latencies (ms)
    rounds: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # phase -> per round


def http_call(
    client: httpx.AsyncClient, headers: Sequence[dict[str, str]], limit: int
) -> common.Call:
    """A GET of the employees page, cycling through ``headers`` (one per tenant)."""
    params = {"limit": str(limit)}
    count = len(headers)

    async def call(i: int) -> None:
        response = await client.get(PATH, params=params, headers=headers[i % count])
        if response.status_code != 200:
            raise SystemExit(f"GET {PATH} answered {response.status_code}: {response.text[:300]}")

    return call


def db_call(open_transaction: Callable[[int], Any], limit: int) -> common.Call:
    """The page's SELECT inside the transaction ``open_transaction(i)`` opens."""
    params = (0, limit + 1)

    async def call(i: int) -> None:
        async with open_transaction(i) as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(EMPLOYEES_QUERY, params)
            rows = await cur.fetchall()
        if len(rows) != limit + 1:
            raise SystemExit(f"the SELECT returned {len(rows)} rows, expected {limit + 1}")

    return call


async def measure(
    phase: str,
    variants: Sequence[Variant],
    *,
    rounds: int,
    count: int,
    concurrency: int,
    warmup: int,
) -> None:
    """Interleaved rounds of one phase; fills each variant's samples and per-round stats.

    At concurrency 1 the variants alternate call by call; under concurrency they take
    turns by block. Either way the order rotates every round.
    """
    for variant in variants:
        if concurrency > 1:
            await common.run_concurrent(variant.call, warmup, concurrency)
        else:
            await common.run_sequential(variant.call, warmup)
        variant.samples[phase] = []
        variant.rounds[phase] = []
    for r in range(rounds):
        order = common.rotated(variants, r)
        measured: list[tuple[Variant, list[float], float]] = []
        if concurrency > 1:
            for variant in order:
                gc.collect()
                latencies, wall = await common.run_concurrent(variant.call, count, concurrency)
                measured.append((variant, latencies, wall))
        else:
            gc.collect()
            for variant, latencies in zip(
                order, await common.run_alternating([v.call for v in order], count), strict=True
            ):
                measured.append((variant, latencies, sum(latencies) / 1000.0))
        for variant, latencies, wall in measured:
            variant.samples[phase] += latencies
            variant.rounds[phase].append(
                {
                    "p50_ms": common.percentile(latencies, 50),
                    "p95_ms": common.percentile(latencies, 95),
                    "per_s": count / wall,
                }
            )
        if (r + 1) % 5 == 0 or r + 1 == rounds:
            common.note(f"{phase}: round {r + 1}/{rounds}")


# -- report ---------------------------------------------------------------------------------
def phase_report(phase: str, variants: Sequence[Variant], baseline: Variant) -> dict[str, Any]:
    """Summaries and ratios against ``baseline`` for one phase (for the table and JSON)."""
    base = common.summarize(baseline.samples[phase])
    base_rate = common.percentile([r["per_s"] for r in baseline.rounds[phase]], 50)
    report: dict[str, Any] = {}
    for variant in variants:
        stats = common.summarize(variant.samples[phase])
        rate = common.percentile([r["per_s"] for r in variant.rounds[phase]], 50)
        pairs = list(zip(variant.rounds[phase], baseline.rounds[phase], strict=True))
        # Ratios within a round compare neighbours in time: the most noise-proof figure.
        p50_ratios = [common.ratio(mine["p50_ms"], base["p50_ms"]) for mine, base in pairs]
        rate_ratios = [common.ratio(mine["per_s"], base["per_s"]) for mine, base in pairs]
        report[variant.key] = {
            "label": variant.label,
            "latency_ms": stats,
            "per_s_median_of_rounds": rate,
            "ratio_p50": common.ratio(stats["p50"], base["p50"]),
            "ratio_p95": common.ratio(stats["p95"], base["p95"]),
            "ratio_per_s": common.ratio(rate, base_rate),
            "per_round_p50_ratio": common.spread(p50_ratios),
            "per_round_per_s_ratio": common.spread(rate_ratios),
            "rounds": variant.rounds[phase],
        }
    return report


def span(entry: dict[str, float]) -> str:
    """A per-round spread as a table cell: ``median (min-max)``."""
    return f"{entry['median']:.3f} ({entry['min']:.3f}-{entry['max']:.3f})"


def print_latency(title: str, report: dict[str, Any], unit: str = "ms") -> None:
    """The latency table of a phase, in ``unit`` (ms or us)."""
    scale = 1000.0 if unit == "us" else 1.0
    headers = ["variant", "n", *(f"{q} {unit}" for q in ("p50", "p95", "p99", "mean"))]
    headers += ["p50 ratio", "p95 ratio", "per-round p50 ratio: median (min-max)"]
    rows = [
        [
            *(e["label"], e["latency_ms"]["n"]),
            *(e["latency_ms"][q] * scale for q in ("p50", "p95", "p99", "mean")),
            *(e["ratio_p50"], e["ratio_p95"], span(e["per_round_p50_ratio"])),
        ]
        for e in report.values()
    ]
    common.print_table(title, headers, rows)


def print_throughput(title: str, report: dict[str, Any]) -> None:
    """The throughput table: median req/s over rounds, latency under load, ratios."""
    headers = ["variant", "n", "req/s", "p50 ms", "p95 ms", "req/s ratio"]
    headers += ["per-round req/s ratio: median (min-max)", "p50 ratio", "p95 ratio"]
    rows = [
        [
            *(e["label"], e["latency_ms"]["n"], e["per_s_median_of_rounds"]),
            *(e["latency_ms"]["p50"], e["latency_ms"]["p95"], e["ratio_per_s"]),
            *(span(e["per_round_per_s_ratio"]), e["ratio_p50"], e["ratio_p95"]),
        ]
        for e in report.values()
    ]
    common.print_table(title, headers, rows)


# -- main -----------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> Any:
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rounds", type=int, default=20, help="interleaved rounds of the latency and DB phases"
    )
    parser.add_argument(
        "--requests",
        type=int,
        default=100,
        help="sequential requests per variant per round (latency)",
    )
    parser.add_argument(
        "--throughput-rounds",
        type=int,
        default=40,
        help="rounds of the throughput phase (short blocks, many rounds: noise evens out)",
    )
    parser.add_argument(
        "--concurrent-requests",
        type=int,
        default=200,
        help="requests per variant per round at --concurrency (throughput)",
    )
    parser.add_argument("--concurrency", type=int, default=16, help="in-flight requests")
    parser.add_argument(
        "--db-requests",
        type=int,
        default=250,
        help="transactions per variant per round in the DB-level phase",
    )
    parser.add_argument("--warmup", type=int, default=200, help="warm-up calls per variant")
    parser.add_argument("--employees", type=int, default=200, help="rows seeded per schema")
    parser.add_argument("--page", type=int, default=50, help="page size (?limit=)")
    parser.add_argument(
        "--pool-size",
        type=int,
        default=10,
        help="connections per pool (min = max), the same for both apps",
    )
    parser.add_argument(
        "--rotate",
        type=int,
        default=8,
        help="tenants for the rotating variant (0 or 1: leave it out)",
    )
    parser.add_argument("--skip-db", action="store_true", help="skip the DB-level phase")
    return parser.parse_args(argv)


async def run(args: Any, url: str) -> dict[str, Any]:
    settings = Settings.from_env(
        {
            "DATABASE_URL": url,
            "TENANTRY_DB_POOL_MIN": str(args.pool_size),
            "TENANTRY_DB_POOL_MAX": str(args.pool_size),
        }
    )
    rotate = args.rotate > 1
    create_baseline_schema(url, args.employees)
    async with AsyncExitStack() as stack:

        async def serve(app: FastAPI) -> httpx.AsyncClient:
            await stack.enter_async_context(app.router.lifespan_context(app))
            transport = httpx.ASGITransport(app=app)
            return await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url="http://testserver")
            )

        baseline_app = create_baseline_app(url, pool_size=args.pool_size)
        tenant_app = hr_example.create_app(settings)
        baseline_client = await serve(baseline_app)
        tenant_client = await serve(tenant_app)
        # The rotating variant gets an app (platform, pools) of its own: sharing the first
        # app's connections would make the 1-tenant variant pay for re-planning too.
        rotating_app = hr_example.create_app(settings) if rotate else None
        rotating_client = await serve(rotating_app) if rotating_app else None

        platform: Platform = tenant_app.state.tenantry
        tenants = []
        for i in range(args.rotate if rotate else 1):
            tenant = await platform.tenants.create(f"bench-t{i}")
            await seed_tenant(platform, tenant.context(), args.employees)
            tenants.append(tenant)
        vacuum_analyze(url)
        common.note(
            f"seeded {len(tenants)} tenant(s) and the baseline, {args.employees} employees each"
        )
        one = [{"X-Tenant-ID": tenants[0].slug}]
        every = [{"X-Tenant-ID": t.slug} for t in tenants]
        await check_same_page(tenant_client, baseline_client, one[0], args.page)

        http = [
            Variant(
                "baseline", "single-tenant baseline", http_call(baseline_client, one, args.page)
            ),
            Variant("tenant", "tenant-routed (1 tenant)", http_call(tenant_client, one, args.page)),
        ]
        if rotating_client is not None:
            http.append(
                Variant(
                    "tenant_rotating",
                    f"tenant-routed ({len(tenants)} tenants rotating)",
                    http_call(rotating_client, every, args.page),
                )
            )
        gc.collect()
        gc.freeze()  # setup garbage stays out of the measured collections
        await measure(
            "latency",
            http,
            rounds=args.rounds,
            count=args.requests,
            concurrency=1,
            warmup=args.warmup,
        )
        await measure(
            "throughput",
            http,
            rounds=args.throughput_rounds,
            count=args.concurrent_requests,
            concurrency=args.concurrency,
            warmup=args.warmup,
        )
        reports = {
            "latency": phase_report("latency", http, http[0]),
            "throughput": phase_report("throughput", http, http[0]),
        }
        if not args.skip_db:
            pool: AsyncConnectionPool[AsyncConnection[Any]] = baseline_app.state.pool
            db = platform.db
            contexts = [t.context() for t in tenants]
            direct = [
                Variant(
                    "plain",
                    "run_transaction (plain BEGIN)",
                    db_call(lambda i: run_transaction(pool, PLAIN_BEGIN), args.page),
                ),
                Variant(
                    "tenant",
                    "tenant_transaction (1 tenant)",
                    db_call(lambda i: db.tenant_transaction(contexts[0]), args.page),
                ),
            ]
            if rotating_app is not None:
                other = rotating_app.state.tenantry.db
                direct.append(
                    Variant(
                        "tenant_rotating",
                        f"tenant_transaction ({len(contexts)} rotating)",
                        db_call(
                            lambda i: other.tenant_transaction(contexts[i % len(contexts)]),
                            args.page,
                        ),
                    )
                )
            await measure(
                "db",
                direct,
                rounds=args.rounds,
                count=args.db_requests,
                concurrency=1,
                warmup=args.warmup,
            )
            reports["db"] = phase_report("db", direct, direct[0])
        gc.unfreeze()
    return reports


async def check_same_page(
    tenant: httpx.AsyncClient, baseline: httpx.AsyncClient, headers: dict[str, str], limit: int
) -> None:
    """Both apps must answer the same page, or the comparison means nothing."""
    pages = []
    for client in (tenant, baseline):
        response = await client.get(PATH, params={"limit": str(limit)}, headers=headers)
        if response.status_code != 200:
            raise SystemExit(f"GET {PATH} answered {response.status_code}: {response.text[:300]}")
        body = response.json()
        pages.append(([(e["id"], e["email"]) for e in body["items"]], body["next"]))
    if pages[0] != pages[1] or len(pages[0][0]) != limit:
        raise SystemExit("the tenant-routed and baseline apps do not answer the same page")


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    with common.throwaway_database(
        args.admin_url, "tenantry_bench_overhead", keep=args.keep_database
    ) as url:
        reports = asyncio.run(run(args, url))
        env = common.environment(args.admin_url)
    elapsed = time.perf_counter() - started

    print(
        f"\ntenant routing overhead: GET {PATH}?limit={args.page} "
        f"({args.page} of {args.employees} rows), in-process ASGI"
    )
    print(
        f"PostgreSQL {env['postgres']}, Python {env['python']}, {env['cpus']} CPUs; "
        f"pool {args.pool_size} connections per app; "
        "ratios are variant / baseline of this run"
    )
    print_latency(
        f"HTTP latency, concurrency 1 ({args.rounds} rounds x {args.requests} requests "
        "per variant, alternating call by call)",
        reports["latency"],
    )
    print_throughput(
        f"HTTP throughput, concurrency {args.concurrency} "
        f"({args.throughput_rounds} rounds x {args.concurrent_requests} requests per variant; "
        "req/s = median of rounds)",
        reports["throughput"],
    )
    if "db" in reports:
        print_latency(
            f"DB only, the same SELECT through tenantry.db ({args.rounds} rounds x "
            f"{args.db_requests} transactions per variant)",
            reports["db"],
            unit="us",
        )
    print("\nsummary, variant / baseline of this run:")
    for key, entry in reports["latency"].items():
        if key != "baseline":
            print(
                f"  HTTP p50 latency, concurrency 1, {entry['label']}: {entry['ratio_p50']:.3f} "
                f"(median of per-round ratios {entry['per_round_p50_ratio']['median']:.3f}; "
                "goal <= 1.05)"
            )
    for key, entry in reports["throughput"].items():
        if key != "baseline":
            print(
                f"  HTTP req/s, concurrency {args.concurrency}, {entry['label']}: "
                f"{entry['ratio_per_s']:.3f} (median of per-round ratios "
                f"{entry['per_round_per_s_ratio']['median']:.3f})"
            )
    for key, entry in reports.get("db", {}).items():
        if key != "plain":
            print(f"  DB-only p50, {entry['label']}: {entry['ratio_p50']:.3f}")
    print(f"finished in {elapsed:.0f} s")
    if not args.no_json:
        path = common.write_results(
            NAME,
            {
                "config": common.public_config(args),
                "environment": env,
                "elapsed_s": elapsed,
                "phases": reports,
            },
        )
        print(f"results: {path.relative_to(common.REPO_DIR)}")


if __name__ == "__main__":
    sys.exit(main())
