"""What the benchmarks share: throw-away databases, timing statistics, tables, results.

Benchmarks are plain scripts (``.venv/bin/python bench/<name>.py``); they import this
module by its bare name because the script's own folder is first on ``sys.path``.
Nothing here asserts on timings: benchmarks measure, print ratios against a baseline
measured in the same run, and write a JSON file to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import platform
import random
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

# The benchmarks drive the apps through an httpx client: that client is apparatus, and its
# per-request INFO line (once the app configures logging) would be timed with the app.
logging.getLogger("httpx").setLevel(logging.WARNING)

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

DEFAULT_ADMIN_URL = os.environ.get(
    "TENANTRY_BENCH_PG_URL",
    os.environ.get(
        "TENANTRY_TEST_PG_URL",
        f"postgresql://postgres@127.0.0.1:{os.environ.get('TENANTRY_TEST_PG_PORT', '54329')}"
        "/postgres",
    ),
)


# -- command line ---------------------------------------------------------------------------
def base_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark takes."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--admin-url",
        default=DEFAULT_ADMIN_URL,
        help="superuser URL of a PostgreSQL server; the benchmark creates and drops its own "
        "database there (env TENANTRY_BENCH_PG_URL)",
    )
    parser.add_argument(
        "--keep-database",
        action="store_true",
        help="do not drop the throw-away database at the end (to inspect it)",
    )
    parser.add_argument(
        "--no-json", action="store_true", help="do not write bench/results/<name>.json"
    )
    return parser


# -- databases ------------------------------------------------------------------------------
def database_url(admin_url: str, name: str) -> str:
    """``admin_url`` pointed at database ``name`` (same server, user and options)."""
    head, _, tail = admin_url.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{name}" + (f"?{tail}" if tail else "")


@contextmanager
def throwaway_database(admin_url: str, prefix: str, *, keep: bool = False) -> Iterator[str]:
    """Create a fresh database, yield its (superuser) URL, drop it on the way out.

    The drop uses ``WITH (FORCE)`` so connections a crashed benchmark left open do not
    keep it alive.
    """
    name = f"{prefix}_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg.OperationalError as exc:
        raise SystemExit(
            f"cannot reach PostgreSQL at {admin_url} ({exc}); start it with "
            "'scripts/services start postgres' or pass --admin-url"
        ) from None
    note(f"created database {name}")
    try:
        yield database_url(admin_url, name)
    finally:
        if keep:
            note(f"kept database {name} (--keep-database)")
        else:
            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
            note(f"dropped database {name}")


def server_version(url: str) -> str:
    """The server's ``SHOW server_version``."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


# -- statistics -----------------------------------------------------------------------------
def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """n, min, p50, p95, p99, max and mean of ``values`` (in their own unit)."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "min": min(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


def ratio(value: float, baseline: float) -> float:
    """``value / baseline`` (NaN when the baseline is zero or missing)."""
    if not baseline or math.isnan(baseline):
        return math.nan
    return value / baseline


def ms_since(start: float) -> float:
    """Milliseconds elapsed since ``start`` (a ``time.perf_counter()`` reading)."""
    return (time.perf_counter() - start) * 1000.0


# -- timed calls ----------------------------------------------------------------------------
Call = Callable[[int], Awaitable[None]]
"""One unit of measured work; the argument is the call's index (to vary tenants, say)."""
T = TypeVar("T")


async def run_sequential(call: Call, count: int) -> list[float]:
    """``count`` calls one after another; each call's latency in ms."""
    out: list[float] = []
    for i in range(count):
        start = time.perf_counter()
        await call(i)
        out.append(ms_since(start))
    return out


async def run_concurrent(call: Call, count: int, concurrency: int) -> tuple[list[float], float]:
    """``count`` calls from ``concurrency`` workers; latencies in ms and the wall time in s."""
    out: list[float] = []
    todo = iter(range(count))

    async def worker() -> None:
        for i in todo:  # one shared iterator: workers take the next call as they free up
            start = time.perf_counter()
            await call(i)
            out.append(ms_since(start))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out, time.perf_counter() - start


async def run_alternating(calls: Sequence[Call], count: int) -> list[list[float]]:
    """``count`` calls of each, one at a time, alternating A, B, A, B...; ms per call.

    Alternating call by call puts every variant under the same machine noise, which a
    shared 2-core box has plenty of.
    """
    out: list[list[float]] = [[] for _ in calls]
    for i in range(count):
        for latencies, call in zip(out, calls, strict=True):
            start = time.perf_counter()
            await call(i)
            latencies.append(ms_since(start))
    return out


def rotated(items: Sequence[T], by: int) -> list[T]:
    """``items`` starting at ``by`` (mod len): every item gets every slot in turn."""
    by %= len(items)
    return [*items[by:], *items[:by]]


def shuffled(items: Sequence[T], seed: int) -> list[T]:
    """``items`` in an order drawn from ``seed``: over many rounds every item gets every
    slot and every neighbour. With more than two variants a rotation keeps the same item
    before each one, and work left over by one block (a flush, a timer) always lands on
    the same other variant."""
    order = list(items)
    random.Random(seed).shuffle(order)
    return order


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of per-round ratios."""
    return {"median": percentile(values, 50), "min": min(values), "max": max(values)}


# -- CPU of processes on this machine ---------------------------------------------------------
def process_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system, all threads) process ``pid`` has used, from ``/proc``
    (Linux), or NaN if it cannot be read (gone, or no ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    return _stat_cpu(stat)


def _stat_cpu(stat: str) -> float:
    fields = stat.rsplit(") ", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


CpuSnapshot = dict[tuple[str, int], float]
"""CPU seconds used so far, per (part, process id); ``("machine", 0)``: all CPUs' busy time."""


def cpu_by_part(part_of: Callable[[int, str], str | None]) -> CpuSnapshot:
    """CPU seconds used so far by each process of a system running on this machine that
    ``part_of(pid, command name)`` names a part of, plus the busy seconds of every CPU
    (``/proc/stat``). Take it before and after a window; :func:`cpu_shares` tells each
    part's share. Empty without ``/proc``."""
    snapshot: CpuSnapshot = {}
    try:
        entries = list(Path("/proc").iterdir())
        first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return snapshot
    ticks = [int(v) for v in first]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    snapshot["machine", 0] = (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        pid = int(entry.name)
        part = part_of(pid, stat[stat.find("(") + 1 : stat.rfind(")")])
        if part is not None:
            snapshot[part, pid] = _stat_cpu(stat)
    return snapshot


def cpu_shares(before: CpuSnapshot, after: CpuSnapshot, seconds: float) -> dict[str, float]:
    """Each part's CPU between two snapshots ``seconds`` apart, in % of one core
    (``machine``: of all CPUs together, up to 100 % times their number). A process that
    started in between counts in full; one that ended in between is missing (its CPU
    cannot be read any more)."""
    shares: dict[str, float] = {}
    if seconds <= 0:
        return shares
    for (part, pid), used in after.items():
        spent = used - before.get((part, pid), 0.0)
        shares[part] = shares.get(part, 0.0) + 100.0 * spent / seconds
    return shares


# -- output ---------------------------------------------------------------------------------
def note(message: str) -> None:
    """A progress line on stderr (stdout carries only the report)."""
    print(f"  [{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table cell: fixed decimals for floats, thousands for ints."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:,.{digits}f}"
    return str(value)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a plain-text table: first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers]] + [
        [cell if isinstance(cell, str) else fmt(cell) for cell in row] for row in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        return "  ".join(parts).rstrip()

    print()
    print(title)
    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))


def environment(admin_url: str) -> dict[str, Any]:
    """Where the figures come from: machine, Python and PostgreSQL versions."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "postgres": server_version(admin_url),
    }


def public_config(args: argparse.Namespace) -> dict[str, Any]:
    """The options of a run, JSON-ready, with any password in a URL masked."""
    out: dict[str, Any] = {}
    for key, value in vars(args).items():
        if isinstance(value, str) and "://" in value:
            parts = urlsplit(value)
            if parts.password:
                netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
                value = urlunsplit(parts._replace(netloc=netloc))
        out[key] = str(value) if isinstance(value, Path) else value
    return out


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """Write ``bench/results/<name>.json`` (git-ignored) and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    document = {
        "benchmark": name,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        **payload,
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")
    return path
