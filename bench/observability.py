"""What observability costs on the HR read endpoint: everything on vs everything off.

The same read, ``GET /api/employees?limit=50`` (a page of 50 seeded rows), served by two
instances of the HR example app in one process, on one database and tenant:

* **observed**: structured JSON access log (one line per request, written to a file),
  Prometheus metrics (request counter and latency histogram with the bounded tenant
  label, DB transaction histogram), usage metering, and OpenTelemetry tracing with
  parent-based sampling at ``--sample`` (10 %) -- server span, SQL spans of sampled
  requests, exported through a batch processor (to an exporter that drops the spans, so
  no collector is needed; OTLP's encoding and network are not measured);
* **off**: ``TENANTRY_METRICS``, ``TENANTRY_TRACING``, ``TENANTRY_ACCESS_LOG`` and
  ``TENANTRY_USAGE`` off, which leaves the observability middleware out entirely.

The apps are driven in-process through ``httpx.ASGITransport`` after a warm-up, in
interleaved rounds whose order alternates; each round serves ``--requests`` requests per
variant at ``--concurrency`` (short blocks, many rounds: a shared machine's noise hits
both alike). The figures are medians over rounds of the per-round ratios observed/off:
throughput (1.0 = free; 0.9 = 10 % cost) and this process's CPU time per request (the
app and the driver; PostgreSQL's work is not in it, so this ratio is the stricter one).
Last, ``--sequential`` requests each, one at a time, alternating call by call: the p50
and p95 latency ratios.

    .venv/bin/python bench/observability.py [--rounds 60] [--requests 100] [--concurrency 16]
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

import _common as common
import hr_example
from tenant_overhead import seed_tenant
from tenantry import Platform, Settings
from tenantry.observability import configure_logging

NAME = "observability"
PATH = "/api/employees"


class DiscardingExporter(SpanExporter):
    """Accepts finished spans and drops them (counts them, to show sampling worked)."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        """Nothing to release."""


def parse_args(argv: Sequence[str] | None) -> Any:
    parser = common.base_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=60, help="interleaved rounds")
    parser.add_argument("--requests", type=int, default=100, help="requests per variant per round")
    parser.add_argument("--concurrency", type=int, default=16, help="in-flight requests")
    parser.add_argument("--warmup", type=int, default=300, help="warm-up requests per variant")
    parser.add_argument(
        "--sequential", type=int, default=2000, help="alternating one-at-a-time requests each"
    )
    parser.add_argument("--employees", type=int, default=200, help="rows seeded")
    parser.add_argument("--page", type=int, default=50, help="page size (?limit=)")
    parser.add_argument("--sample", type=float, default=0.1, help="trace sample ratio")
    parser.add_argument("--pool-size", type=int, default=10, help="connections per pool")
    return parser.parse_args(argv)


def _settings(url: str, pool: int, observed: bool, sample: float) -> Settings:
    flag = "on" if observed else "off"
    return Settings.from_env(
        {
            "DATABASE_URL": url,
            "TENANTRY_DB_POOL_MIN": str(pool),
            "TENANTRY_DB_POOL_MAX": str(pool),
            "TENANTRY_METRICS": flag,
            "TENANTRY_TRACING": flag,
            "TENANTRY_TRACE_SAMPLE_RATIO": str(sample),
            "TENANTRY_ACCESS_LOG": flag,
            "TENANTRY_USAGE": flag,
        }
    )


async def run(args: Any, url: str, log_file: Path) -> dict[str, Any]:
    async with AsyncExitStack() as stack:

        async def serve(observed: bool) -> tuple[Platform, httpx.AsyncClient]:
            app = hr_example.create_app(_settings(url, args.pool_size, observed, args.sample))
            await stack.enter_async_context(app.router.lifespan_context(app))
            transport = httpx.ASGITransport(app=app)
            client = await stack.enter_async_context(
                httpx.AsyncClient(transport=transport, base_url="http://testserver")
            )
            return app.state.tenantry, client

        observed_platform, observed_client = await serve(True)
        _, off_client = await serve(False)
        # The app factory configured logging to stderr; the benchmark's lines go to a file.
        stream = log_file.open("w")
        stack.callback(stream.close)
        configure_logging(observed_platform.settings.log, stream=stream)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # the driver's own lines
        exporter = DiscardingExporter()
        observed_platform.observability.tracing.add_exporter(exporter, batch=True)

        tenant = await observed_platform.tenants.create("bench-obs")
        await seed_tenant(observed_platform, tenant.context(), args.employees)
        headers = {"X-Tenant-ID": tenant.slug}
        params = {"limit": str(args.page)}

        def call_of(client: httpx.AsyncClient) -> common.Call:
            async def call(i: int) -> None:
                response = await client.get(PATH, params=params, headers=headers)
                if response.status_code != 200:
                    raise SystemExit(f"GET {PATH} answered {response.status_code}")

            return call

        variants = {"observed": call_of(observed_client), "off": call_of(off_client)}
        for call in variants.values():
            await common.run_concurrent(call, args.warmup, args.concurrency)
        rates: dict[str, list[float]] = {key: [] for key in variants}
        cpu: dict[str, list[float]] = {key: [] for key in variants}
        ratios: list[float] = []
        cpu_ratios: list[float] = []
        for r in range(args.rounds):
            measured: dict[str, float] = {}
            used: dict[str, float] = {}
            for key in common.rotated(list(variants), r):
                gc.collect()
                started = time.process_time()
                _, wall = await common.run_concurrent(
                    variants[key], args.requests, args.concurrency
                )
                used[key] = (time.process_time() - started) / args.requests * 1e6
                measured[key] = args.requests / wall
                rates[key].append(measured[key])
                cpu[key].append(used[key])
            ratios.append(measured["observed"] / measured["off"])
            cpu_ratios.append(used["observed"] / used["off"])
            if (r + 1) % 5 == 0 or r + 1 == args.rounds:
                common.note(f"round {r + 1}/{args.rounds}")
        # Latency, one request at a time, the variants alternating call by call (A, B, A,
        # B...): both see the same machine noise, request by request.
        gc.collect()
        alternating = await common.run_alternating(
            [variants["observed"], variants["off"]], args.sequential
        )
        latency = {
            key: common.summarize(samples)
            for key, samples in zip(("observed", "off"), alternating, strict=True)
        }
        observed_platform.observability.tracing.provider.force_flush()  # type: ignore[union-attr]
        served = args.warmup + args.rounds * args.requests + args.sequential
        stream.flush()
        log_lines = sum(1 for _ in log_file.open())
        return {
            "rates": rates,
            "ratios": ratios,
            "cpu_us_per_request": cpu,
            "cpu_ratios": cpu_ratios,
            "latency_ms": latency,
            "spans_exported": exporter.spans,
            "requests_observed": served,
            "log_lines": log_lines,
            "series": observed_platform.metrics.series_count(),
        }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with (
        common.throwaway_database(args.admin_url, "bench_obs", keep=args.keep_database) as url,
        tempfile.TemporaryDirectory() as folder,
    ):
        result = asyncio.run(run(args, url, Path(folder) / "access.log"))
    on = common.percentile(result["rates"]["observed"], 50)
    off = common.percentile(result["rates"]["off"], 50)
    spread = common.spread(result["ratios"])
    cpu_spread = common.spread(result["cpu_ratios"])
    cpu_on = common.percentile(result["cpu_us_per_request"]["observed"], 50)
    cpu_off = common.percentile(result["cpu_us_per_request"]["off"], 50)
    common.print_table(
        f"GET {PATH}?limit={args.page}, {args.concurrency} in flight, "
        f"{args.rounds} rounds x {args.requests} requests",
        ["variant", "req/s (median of rounds)", "ratio", "app CPU us/request", "ratio"],
        [
            [
                f"observed (log + metrics + traces at {args.sample:.0%})",
                on,
                on / off,
                cpu_on,
                cpu_on / cpu_off,
            ],
            ["off", off, 1.0, cpu_off, 1.0],
        ],
    )
    print()
    print(
        f"per-round throughput ratio observed/off: median {spread['median']:.3f} "
        f"(min {spread['min']:.3f}, max {spread['max']:.3f}) -> cost "
        f"{(1 - spread['median']) * 100:.1f} %  (goal: <= 10 %)"
    )
    lat = result["latency_ms"]
    print(
        f"one at a time, alternating: p50 {lat['observed']['p50']:.3f} ms vs "
        f"{lat['off']['p50']:.3f} ms -> ratio {lat['observed']['p50'] / lat['off']['p50']:.3f}; "
        f"p95 ratio {lat['observed']['p95'] / lat['off']['p95']:.3f}"
    )
    print(
        f"per-round app CPU per request ratio observed/off: median {cpu_spread['median']:.3f} "
        f"(min {cpu_spread['min']:.3f}, max {cpu_spread['max']:.3f})"
    )
    print(
        f"sanity: {result['spans_exported']:,} spans exported for "
        f"{result['requests_observed']:,} observed requests (sample {args.sample:g}); "
        f"{result['log_lines']:,} log lines; {result['series']:,} metric series"
    )
    if not args.no_json:
        path = common.write_results(
            NAME,
            {
                "config": common.public_config(args),
                "environment": common.environment(args.admin_url),
                "per_round_ratio": spread,
                "per_round_cpu_ratio": cpu_spread,
                "req_per_s_median": {"observed": on, "off": off},
                **result,
            },
        )
        common.note(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
