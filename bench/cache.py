"""What Redis buys and costs: cached vs uncached HR reads, and the price of rate limiting.

Three measurements, every one against a baseline taken in the same run:

1. **Cached vs uncached read.** ``GET /api/departments`` (departments with their headcount,
   the HR example's cached read) served by two instances of the HR app on one database:
   one with Redis (cache hits), one without ``REDIS_URL`` (the loader runs every time).
   One request at a time, alternating A, B, A, B...; p50 and p95 of each and their ratio.
2. **Rate-limit check cost.** ``RateLimiter.acquire`` called directly on a single Valkey
   node and (if reachable) on the 3-master cluster: the commands and writes one check
   sends (counted by the limiter's connection, not assumed), latency one at a time, and
   the client's CPU per check with 16 checks in flight (the figure that decides what rate
   limiting costs a busy API), against a baseline in the same run: the same script sent
   through redis-py one ``EVALSHA`` per check. With a concurrency cap each request also
   gives its slot back (a second command, never waited for: it rides with the next write).
   By default the limiter reserves tokens by the batch (and, with a cap, leases slots by
   the batch): those rows give the commands per check averaged over the sequential calls,
   and the CPU per admitted request.
3. **Throughput with and without rate limiting.** The same endpoint on apps that differ
   only in rate limiting (off; GCRA without a concurrency cap, checked in Redis on every
   request (``TENANTRY_RATE_LIMIT_RESERVE=0``); the same with local token reservation, the
   default; GCRA with the pro tier's concurrency cap, checked on every request
   (``TENANTRY_RATE_LIMIT_RESERVE=0``, how capped tenants were limited before slot
   leasing); the same with reserved tokens and leased slots, the default),
   ``--concurrency`` requests in flight, for an uncached read
   (``GET /api/employees?limit=50``) and a cached one (``GET /api/departments``). The
   tenant's limits are raised so nothing is refused: what is measured is the check, not
   rejections. On a shared 2-core machine one block can run at half the speed of the next,
   so the variants are interleaved: every round runs one short block of each (50 requests,
   a few tens of milliseconds: short blocks keep a round's blocks under the same machine
   conditions), in an order drawn at random every round (so no variant always follows the
   same other one and inherits its leftover work), and the cost is the **median of the
   per-round ratios** (each limited block against the unlimited block of its own round);
   the ratio of the totals is printed beside it. Every round's ratios are printed, so the
   noise is visible.

Apps run in-process. Sections 1 and 2 use ``httpx.ASGITransport``; section 3 calls the
ASGI app directly with a prebuilt scope (a few microseconds per request), because the
load generator shares the cores with what it measures: an expensive client would dilute
the server's cost, and with it the price of rate limiting.

    .venv/bin/python bench/cache.py [--rounds 200] [--concurrency 16] [--requests 50]
        [--only-throughput]
"""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from uuid import uuid4

import httpx
from fastapi import FastAPI

import _common as common
import hr_example
from tenantry import Platform, Settings, TenantContext
from tenantry.cache import (
    KeyBuilder,
    RateLimiter,
    RedisGuard,
    create_redis_client,
)
from tenantry.settings import RateLimitSettings, RedisSettings

NAME = "cache"
DEPARTMENTS = 8
EMPLOYEES = 200
SEED_DEPARTMENTS = (
    "INSERT INTO departments (name) SELECT 'Department ' || g FROM generate_series(1, %s) g"
)
SEED_EMPLOYEES = (
    "INSERT INTO employees (first_name, last_name, email, title, department_id, hired_on) "
    "SELECT 'First' || g, 'Last' || g, 'employee' || g || '@example.com', 'Title ' || (g %% 7), "
    "(g %% %s) + 1, DATE '2020-01-01' + g FROM generate_series(1, %s) g"
)
DEFAULT_REDIS = os.environ.get(
    "TENANTRY_BENCH_REDIS_URL",
    f"redis://127.0.0.1:{os.environ.get('TENANTRY_TEST_VALKEY_PORT', '63799')}/0",
)
DEFAULT_CLUSTER = os.environ.get(
    "TENANTRY_BENCH_REDIS_CLUSTER_URL",
    "redis+cluster://127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103",
)
UNLIMITED = {"rate_limit": {"rate": 1_000_000, "burst": 1_000_000}}


def parse_args(argv: Sequence[str] | None) -> Any:
    parser = common.base_parser(__doc__.splitlines()[0] if __doc__ else NAME)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS, help="a Valkey/Redis node")
    parser.add_argument(
        "--cluster-url",
        default=DEFAULT_CLUSTER,
        help="a Valkey/Redis cluster seed list ('' to skip the cluster measurements)",
    )
    parser.add_argument("--rounds", type=int, default=200, help="throughput rounds")
    parser.add_argument("--requests", type=int, default=50, help="requests per block")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--latency-calls", type=int, default=1500, help="sequential calls")
    parser.add_argument("--checks", type=int, default=3000, help="rate-limit checks timed")
    parser.add_argument(
        "--only-throughput", action="store_true", help="run section 3 only (quick iterations)"
    )
    return parser.parse_args(argv)


# -- apps -----------------------------------------------------------------------------------
def app_settings(url: str, redis_url: str | None, prefix: str, **env: str) -> Settings:
    """The HR app's settings: same database and pool size; Redis and limits per variant."""
    # No access log: a line per request written to the terminal would be most of what
    # is measured (and the same in every variant); metrics stay at their defaults.
    values = {"DATABASE_URL": url, "TENANTRY_DB_POOL_MAX": "16", "TENANTRY_ACCESS_LOG": "0", **env}
    if redis_url:
        values |= {"REDIS_URL": redis_url, "TENANTRY_REDIS_KEY_PREFIX": prefix}
    return Settings.from_env(values)


@asynccontextmanager
async def started(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and yield an in-process client."""
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://bench") as client,
    ):
        yield client


def get(client: httpx.AsyncClient, path: str, headers: dict[str, str]) -> common.Call:
    """One GET that must answer 200."""

    async def call(_: int) -> None:
        response = await client.get(path, headers=headers)
        if response.status_code != 200:
            raise SystemExit(f"GET {path} answered {response.status_code}: {response.text[:300]}")

    return call


def asgi_get(app: FastAPI, path: str, headers: dict[str, str]) -> common.Call:
    """One GET that must answer 200, as a direct ASGI call (no HTTP client at all)."""
    route, _, query = path.partition("?")
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": route,
        "raw_path": route.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"bench")]
        + [(name.lower().encode(), value.encode()) for name, value in headers.items()],
        "client": ("127.0.0.1", 40000),
        "server": ("bench", 80),
    }
    request = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> dict[str, Any]:
        return request

    async def call(_: int) -> None:
        status = 0

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await app(dict(scope), receive, send)  # a fresh scope: middleware writes into it
        if status != 200:
            raise SystemExit(f"GET {path} answered {status}")

    return call


# -- 2. the rate-limit check on its own -----------------------------------------------------
async def measure_limiter(
    client: Any, keys: KeyBuilder, label: str, concurrency: int, checks: int, reserve: float = 0
) -> list[Any]:
    """One limiter configuration: commands and writes per check, commands per release,
    latency one at a time, and client CPU per check with 16 checks in flight. With
    ``reserve`` (local token reservation) commands and writes per check are averaged over
    the sequential calls."""
    settings = RateLimitSettings(reserve=reserve)
    limiter = RateLimiter(client, guard=RedisGuard(), keys=keys, settings=settings)
    limits = {"rate": 1_000_000, "burst": 1_000_000, "quota": 10**12, "concurrency": concurrency}
    ctx = TenantContext(
        id=uuid4(),
        slug="bench",
        tier="enterprise",
        schema="t_bench",
        attributes={"rate_limit": limits},
    )
    try:
        for _ in range(200):  # warm: connection open, script loaded
            limiter.release(await limiter.acquire(ctx))
        await limiter.drain()
        stats = limiter.pipeline.stats
        commands, writes = stats.commands, stats.batches
        decision = await limiter.acquire(ctx)
        check_commands, check_writes = stats.commands - commands, stats.batches - writes
        commands = stats.commands
        limiter.release(decision)  # queued for the next write, counted when queued
        release_commands = stats.commands - commands
        await limiter.drain()
        gc.collect()
        acquire_ms: list[float] = []
        commands, writes = stats.commands, stats.batches
        for _ in range(checks):  # each release rides along with the next check
            start = time.perf_counter()
            decision = await limiter.acquire(ctx)
            acquire_ms.append(common.ms_since(start))
            limiter.release(decision)
        await limiter.drain()
        if reserve:
            check_commands = round((stats.commands - commands) / checks, 3)
            check_writes = round((stats.batches - writes) / checks, 3)
        cpu_us, per_write = await concurrent_cpu(limiter, ctx, checks)
    finally:
        await limiter.close()
    a = common.summarize(acquire_ms)
    return [
        label,
        check_commands,
        check_writes,
        release_commands,
        a["p50"],
        a["p95"],
        cpu_us,
        per_write,
    ]


async def concurrent_cpu(
    limiter: RateLimiter, ctx: TenantContext, checks: int
) -> tuple[float, float]:
    """Client CPU µs per check (acquire + release) with 16 in flight, and commands per write."""
    stats = limiter.pipeline.stats
    commands, writes = stats.commands, stats.batches

    async def worker() -> None:
        for _ in range(checks // 16):
            limiter.release(await limiter.acquire(ctx))

    gc.collect()
    cpu = time.process_time()
    await asyncio.gather(*(worker() for _ in range(16)))
    await limiter.drain()
    used = time.process_time() - cpu
    sent = stats.commands - commands
    return used / (checks // 16 * 16) * 1e6, sent / max(1, stats.batches - writes)


async def redis_py_baseline(client: Any, keys: KeyBuilder, checks: int) -> list[Any]:
    """The same script through redis-py, one ``EVALSHA`` per check and nothing shared
    (how the limiter sent its checks before its pipelined connection): the baseline."""
    limiter = RateLimiter(client, guard=RedisGuard(), keys=keys, settings=RateLimitSettings())
    ctx = TenantContext(
        id=uuid4(),
        slug="bench",
        tier="enterprise",
        schema="t_bench",
        attributes={"rate_limit": {"rate": 1_000_000, "burst": 1_000_000, "quota": 10**12}},
    )
    await limiter.acquire(ctx)  # loads the script
    await limiter.close()
    command = (*limiter._plan(ctx).command, 1, "")

    async def check(_: int = 0) -> None:
        await client.execute_command(*command)

    for _ in range(200):
        await check()
    gc.collect()
    latency = common.summarize(await common.run_sequential(check, checks))

    async def worker() -> None:
        for _ in range(checks // 16):
            await check()

    gc.collect()
    cpu = time.process_time()
    await asyncio.gather(*(worker() for _ in range(16)))
    cpu_us = (time.process_time() - cpu) / (checks // 16 * 16) * 1e6
    label = "redis-py, one EVALSHA per check (baseline)"
    return [label, 1, 1, 0, latency["p50"], latency["p95"], cpu_us, 1.0]


async def check_cost(url: str, prefix: str, checks: int) -> list[list[Any]]:
    """Latency of ``acquire`` (and ``acquire`` + ``release`` with a cap), and commands sent."""
    client: Any = create_redis_client(RedisSettings(url=url))
    keys = KeyBuilder(prefix)
    try:
        return [
            await redis_py_baseline(client, keys, checks),
            await measure_limiter(client, keys, "GCRA + quota", 0, checks),
            await measure_limiter(
                client, keys, "GCRA + quota, reserved tokens (default)", 0, checks, reserve=0.1
            ),
            await measure_limiter(client, keys, "GCRA + quota + concurrency cap", 1000, checks),
            await measure_limiter(
                client,
                keys,
                "GCRA + quota + cap, reserved tokens + leased slots (default)",
                1000,
                checks,
                reserve=0.1,
            ),
        ]
    finally:
        stale = [key async for key in client.scan_iter(match=f"{prefix}*")]
        for key in stale:
            await client.delete(key)
        await client.aclose()


# -- sections 1 and 2 -----------------------------------------------------------------------
async def latency_and_check_cost(
    args: Any,
    clients: dict[str, httpx.AsyncClient],
    headers: dict[str, str],
    prefix: str,
    results: dict[str, Any],
) -> None:
    """Section 1 (cached vs uncached read) and section 2 (the check on its own)."""
    # 1. cached vs uncached, one request at a time, alternating.
    departments = {name: get(c, "/api/departments", headers) for name, c in clients.items()}
    for name in ("cached", "uncached"):
        await common.run_sequential(departments[name], 200)  # warm
    gc.collect()
    cached, uncached = await common.run_alternating(
        [departments["cached"], departments["uncached"]], args.latency_calls
    )
    c, u = common.summarize(cached), common.summarize(uncached)
    results["read"] = {"cached": c, "uncached": u}
    common.print_table(
        f"1. GET /api/departments, one at a time ({args.latency_calls} each, ms)",
        ["variant", "p50", "p95", "p99"],
        [
            ["uncached (no Redis: SQL every time)", u["p50"], u["p95"], u["p99"]],
            ["cached (Redis hit, no SQL)", c["p50"], c["p95"], c["p99"]],
            [
                "cached / uncached",
                common.ratio(c["p50"], u["p50"]),
                common.ratio(c["p95"], u["p95"]),
                common.ratio(c["p99"], u["p99"]),
            ],
        ],
    )

    # 2. the check on its own.
    targets = [("single node", args.redis_url)]
    if args.cluster_url:
        targets.append(("3-master cluster", args.cluster_url))
    check_rows: list[list[Any]] = []
    for label, target in targets:
        try:
            rows = await check_cost(target, prefix, args.checks)
        except Exception as exc:  # an absent cluster skips its rows, loudly
            common.note(f"skipping {label} ({target}): {exc}")
            continue
        check_rows += [[f"{label}: {row[0]}", *row[1:]] for row in rows]
    results["check"] = check_rows
    common.print_table(
        f"2. Rate-limit check cost ({args.checks} checks each; latency one at a time, CPU "
        "with 16 in flight)",
        [
            "limiter",
            "cmds/check",
            "writes/check",
            "cmds/release",
            "check p50 ms",
            "check p95 ms",
            "CPU us/check @16",
            "cmds/write @16",
        ],
        check_rows,
    )


# -- 3. throughput, interleaved ---------------------------------------------------------------
VARIANTS = ("cached", "limited-checked", "limited-nocap", "limited-capchecked", "limited")
LABELS = {
    "cached": "no rate limiting",
    "limited-checked": "rate limit, a check per request",
    "limited-nocap": "rate limit, reserved tokens",
    "limited-capchecked": "rate limit + cap, per request",
    "limited": "rate limit + cap, leased slots",
}


async def throughput(
    args: Any, apps: dict[str, FastAPI], headers: dict[str, str]
) -> dict[str, Any]:
    """Requests/s and CPU per request of each variant, one short block each per round
    (see the module docstring)."""
    out: dict[str, Any] = {}
    rows: list[list[Any]] = []
    for path in ("/api/employees?limit=50", "/api/departments"):
        calls = {name: asgi_get(apps[name], path, headers) for name in VARIANTS}
        for name in VARIANTS:
            await common.run_concurrent(calls[name], 300, args.concurrency)  # warm
        rps: dict[str, list[float]] = {name: [] for name in VARIANTS}
        cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
        print(f"\n3. {path}: per round, req/s (x ratio to no rate limiting) and CPU us/request")
        print("round  " + "  ".join(f"{LABELS[n][:30]:>30}" for n in VARIANTS))
        for round_no in range(args.rounds):
            gc.collect()  # once a round: a full collection inside one block would skew it
            for name in common.shuffled(VARIANTS, round_no):
                used = time.process_time()
                _, wall = await common.run_concurrent(calls[name], args.requests, args.concurrency)
                cpu[name].append((time.process_time() - used) / args.requests * 1e6)
                rps[name].append(args.requests / wall)
            base = rps["cached"][-1]
            cells = [
                f"{rps[n][-1]:>6.0f} (x{rps[n][-1] / base:.3f}) {cpu[n][-1]:>6.0f} us".rjust(30)
                for n in VARIANTS
            ]
            print(f"{round_no + 1:>5}  " + "  ".join(cells), flush=True)
        per_round = {
            name: [lim / none for lim, none in zip(rps[name], rps["cached"], strict=True)]
            for name in VARIANTS[1:]
        }
        cpu_ratio = {
            name: [lim / none for lim, none in zip(cpu[name], cpu["cached"], strict=True)]
            for name in VARIANTS[1:]
        }
        out[path] = {"rps": rps, "ratio": per_round, "cpu_us": cpu, "cpu_ratio": cpu_ratio}
        for name in VARIANTS:
            median = common.percentile(rps[name], 50)
            cpu_us = common.percentile(cpu[name], 50)
            label = f"{path}: {LABELS[name]}"
            if name == "cached":
                rows.append([label, median, "baseline", "", "", "", cpu_us, "baseline"])
                continue
            # Every block serves the same number of requests: the totals compare wall times.
            totals = sum(1 / x for x in rps["cached"]) / sum(1 / x for x in rps[name])
            ratios = per_round[name]
            r = common.spread(ratios)
            q1, q3 = common.percentile(ratios, 25), common.percentile(ratios, 75)
            extra_cpu = common.percentile(cpu_ratio[name], 50) - 1
            rows.append(
                [
                    label,
                    median,
                    f"{(1 - r['median']) * 100:+.1f}%",
                    f"{(1 - totals) * 100:+.1f}%",
                    f"{(1 - q3) * 100:+.1f}% .. {(1 - q1) * 100:+.1f}%",
                    f"{(1 - r['max']) * 100:+.1f}% .. {(1 - r['min']) * 100:+.1f}%",
                    cpu_us,
                    f"{extra_cpu * 100:+.1f}%",
                ]
            )
    common.print_table(
        f"3. Throughput, {args.concurrency} in flight, {args.rounds} interleaved rounds x "
        f"{args.requests} requests per variant. req/s: median; cost: throughput lost = "
        "1 - median of the per-round limited/unlimited ratios, then 1 - the ratio of the "
        "totals, the middle half and the full range of the per-round costs; CPU: this "
        "process's CPU per request (load generator included), median, and the median "
        "per-round extra CPU",
        [
            "endpoint: variant",
            "req/s",
            "cost",
            "totals",
            "middle half",
            "range",
            "CPU us/req",
            "CPU",
        ],
        rows,
    )
    return out


# -- the run --------------------------------------------------------------------------------
async def run(args: Any, url: str) -> dict[str, Any]:
    prefix = f"bench-{secrets.token_hex(4)}:"
    results: dict[str, Any] = {}
    async with AsyncExitStack() as stack:
        apps = {
            "uncached": hr_example.create_app(app_settings(url, None, prefix)),
            "cached": hr_example.create_app(
                app_settings(url, args.redis_url, prefix, TENANTRY_RATE_LIMIT="off")
            ),
            "limited": hr_example.create_app(app_settings(url, args.redis_url, prefix)),
            "limited-nocap": hr_example.create_app(
                app_settings(url, args.redis_url, prefix, TENANTRY_RATE_LIMIT_PRO="concurrency=0")
            ),
            "limited-capchecked": hr_example.create_app(
                app_settings(url, args.redis_url, prefix, TENANTRY_RATE_LIMIT_RESERVE="0")
            ),
            "limited-checked": hr_example.create_app(
                app_settings(
                    url,
                    args.redis_url,
                    prefix,
                    TENANTRY_RATE_LIMIT_PRO="concurrency=0",
                    TENANTRY_RATE_LIMIT_RESERVE="0",
                )
            ),
        }
        clients = {
            name: await stack.enter_async_context(started(app)) for name, app in apps.items()
        }
        platform: Platform = apps["cached"].state.tenantry
        tenant = await platform.tenants.create(f"bench{secrets.token_hex(4)}", tier="pro")
        async with platform.db.tenant_transaction(tenant.context()) as conn:
            await conn.execute(SEED_DEPARTMENTS, (DEPARTMENTS,))
            await conn.execute(SEED_EMPLOYEES, (DEPARTMENTS, EMPLOYEES))
        await platform.tenants.update_attributes(tenant.slug, UNLIMITED)
        await asyncio.sleep(0.2)  # every app's directory hears the catalog change
        headers = {"X-Tenant-ID": tenant.slug}
        common.note(f"tenant {tenant.slug}: {DEPARTMENTS} departments, {EMPLOYEES} employees")

        if not args.only_throughput:
            await latency_and_check_cost(args, clients, headers, prefix, results)

        # 3. throughput with and without rate limiting, interleaved round by round.
        results["throughput"] = await throughput(args, apps, headers)
        redis = platform.redis
        assert redis is not None
        stale = [key async for key in redis.scan_iter(match=f"{prefix}*")]
        for key in stale:
            await redis.delete(key)
    return results


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    with common.throwaway_database(args.admin_url, "bench_cache", keep=args.keep_database) as url:
        results = asyncio.run(run(args, url))
        env = common.environment(args.admin_url)
    print(
        f"\n{env['python']} on {env['platform']}, {env['cpus']} CPUs, PostgreSQL {env['postgres']}"
    )
    if not args.no_json:
        path = common.write_results(
            NAME, {"config": common.public_config(args), "environment": env, **results}
        )
        common.note(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
