"""What Redis buys and costs: cached vs uncached HR reads, and the price of rate limiting.

Three measurements, every one against a baseline taken in the same run:

1. **Cached vs uncached read.** ``GET /api/departments`` (departments with their headcount,
   the HR example's cached read) served by two instances of the HR app on one database:
   one with Redis (cache hits), one without ``REDIS_URL`` (the loader runs every time).
   One request at a time, alternating A, B, A, B...; p50 and p95 of each and their ratio.
2. **Rate-limit check cost.** ``RateLimiter.acquire`` called directly, one at a time, on a
   single Valkey node and (if reachable) on the 3-master cluster: latency per check, and
   the Redis commands it sends (counted, not assumed). With a concurrency cap each
   request also gives its slot back (a second command); that pair is timed too.
3. **Throughput with and without rate limiting.** The same endpoint on apps that differ
   only in rate limiting (off; GCRA without a concurrency cap; GCRA with the cap),
   ``--concurrency`` requests in flight, in blocks whose order rotates every round, for
   an uncached read (``GET /api/employees?limit=50``) and a cached one
   (``GET /api/departments``). The tenant's limits are raised so nothing is refused: what
   is measured is the check, not rejections.

Apps are driven in-process through ``httpx.ASGITransport`` (no sockets).

    .venv/bin/python bench/cache.py [--rounds 15] [--concurrency 16] [--requests 200]
"""

from __future__ import annotations

import asyncio
import gc
import os
import secrets
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
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
    RateDecision,
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
    parser.add_argument("--rounds", type=int, default=15, help="throughput rounds")
    parser.add_argument("--requests", type=int, default=200, help="requests per block")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--latency-calls", type=int, default=1500, help="sequential calls")
    parser.add_argument("--checks", type=int, default=3000, help="rate-limit checks timed")
    return parser.parse_args(argv)


# -- apps -----------------------------------------------------------------------------------
def app_settings(url: str, redis_url: str | None, prefix: str, **env: str) -> Settings:
    """The HR app's settings: same database and pool size; Redis and limits per variant."""
    values = {"DATABASE_URL": url, "TENANTRY_DB_POOL_MAX": "16", **env}
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


# -- 2. the rate-limit check on its own -----------------------------------------------------
async def commands_sent(client: Any, action: Callable[[], Awaitable[None]]) -> list[str]:
    """The Redis commands ``action`` sends (counted at the client, not assumed)."""
    sent: list[str] = []
    original = client.execute_command

    async def counting(*args: Any, **kwargs: Any) -> Any:
        sent.append(str(args[0]))
        return await original(*args, **kwargs)

    client.execute_command = counting
    try:
        await action()
    finally:
        del client.execute_command
    return sent


async def measure_limiter(
    client: Any, keys: KeyBuilder, label: str, concurrency: int, checks: int
) -> list[Any]:
    """One limiter configuration: commands per check/release, and their latency."""
    limiter = RateLimiter(client, guard=RedisGuard(), keys=keys, settings=RateLimitSettings())
    limits = {"rate": 1_000_000, "burst": 1_000_000, "quota": 10**12, "concurrency": concurrency}
    ctx = TenantContext(
        id=uuid4(),
        slug="bench",
        tier="enterprise",
        schema="t_bench",
        attributes={"rate_limit": limits},
    )
    for _ in range(200):  # warm: script loaded, connections open
        limiter.release(await limiter.acquire(ctx))
    await limiter.drain()
    decisions: list[RateDecision] = []

    async def check() -> None:
        decisions.append(await limiter.acquire(ctx))

    async def release() -> None:
        limiter.release(decisions[-1])
        await limiter.drain()

    check_commands = len(await commands_sent(client, check))
    release_commands = len(await commands_sent(client, release))
    gc.collect()
    acquire_ms: list[float] = []
    pair_ms: list[float] = []
    for _ in range(checks):
        start = time.perf_counter()
        decision = await limiter.acquire(ctx)
        acquire_ms.append(common.ms_since(start))
        limiter.release(decision)
        await limiter.drain()
        pair_ms.append(common.ms_since(start))
    a, p = common.summarize(acquire_ms), common.summarize(pair_ms)
    return [label, check_commands, release_commands, a["p50"], a["p95"], p["p50"]]


async def check_cost(url: str, prefix: str, checks: int) -> list[list[Any]]:
    """Latency of ``acquire`` (and ``acquire`` + ``release`` with a cap), and commands sent."""
    client: Any = create_redis_client(RedisSettings(url=url))
    keys = KeyBuilder(prefix)
    try:
        return [
            await measure_limiter(client, keys, "GCRA + quota", 0, checks),
            await measure_limiter(client, keys, "GCRA + quota + concurrency cap", 1000, checks),
        ]
    finally:
        stale = [key async for key in client.scan_iter(match=f"{prefix}*")]
        for key in stale:
            await client.delete(key)
        await client.aclose()


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
            f"2. Rate-limit check cost, one at a time ({args.checks} each)",
            [
                "limiter",
                "cmds/check",
                "cmds/release",
                "check p50 ms",
                "check p95 ms",
                "check+release p50 ms",
            ],
            check_rows,
        )

        # 3. throughput with and without rate limiting.
        variants = ["cached", "limited-nocap", "limited"]
        labels = {
            "cached": "no rate limiting",
            "limited-nocap": "rate limit (GCRA + quota)",
            "limited": "rate limit + concurrency cap",
        }
        rows: list[list[Any]] = []
        results["throughput"] = {}
        for path in ("/api/employees?limit=50", "/api/departments"):
            calls = {name: get(clients[name], path, headers) for name in variants}
            for name in variants:
                await common.run_concurrent(calls[name], 200, args.concurrency)  # warm
            rps: dict[str, list[float]] = {name: [] for name in variants}
            for round_no in range(args.rounds):
                for name in common.rotated(variants, round_no):
                    gc.collect()
                    _, wall = await common.run_concurrent(
                        calls[name], args.requests, args.concurrency
                    )
                    rps[name].append(args.requests / wall)
            base = common.percentile(rps["cached"], 50)
            per_round_cost = {
                name: [
                    1 - (limited / unlimited)
                    for limited, unlimited in zip(rps[name], rps["cached"], strict=True)
                ]
                for name in variants[1:]
            }
            results["throughput"][path] = {"rps": rps, "cost": per_round_cost}
            for name in variants:
                median = common.percentile(rps[name], 50)
                if name == "cached":
                    cost, spread = "baseline", ""
                else:
                    costs = common.spread([c * 100 for c in per_round_cost[name]])
                    cost = f"{costs['median']:+.1f}%"
                    spread = f"{costs['min']:+.1f}% .. {costs['max']:+.1f}%"
                rows.append(
                    [f"{path}: {labels[name]}", median, common.ratio(median, base), cost, spread]
                )
        common.print_table(
            f"3. Throughput, {args.concurrency} in flight, {args.rounds} rounds x "
            f"{args.requests} requests per variant (median req/s; cost: throughput lost vs no "
            "rate limiting, median of per-round ratios, and their range)",
            ["endpoint: variant", "req/s", "vs none", "cost", "per-round range"],
            rows,
        )
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
