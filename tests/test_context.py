"""TenantContext binding: one contextvar, bound at the edge, read everywhere, copied
explicitly across thread boundaries."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from uuid import uuid4

import pytest

from tenantry import (
    NoTenantContextError,
    TenantContext,
    current_tenant,
    current_tenant_or_none,
    run_in_executor,
    tenant_scope,
    wrap,
)


def make_ctx(slug: str) -> TenantContext:
    return TenantContext(id=uuid4(), slug=slug, tier="free", schema=f"t_{slug}")


ACME = make_ctx("acme")
GLOBEX = make_ctx("globex")


def test_current_tenant_raises_with_no_tenant_bound() -> None:
    """With nothing bound, current_tenant() fails closed; the _or_none variant says None."""
    with pytest.raises(NoTenantContextError, match="no tenant is bound"):
        current_tenant()
    assert current_tenant_or_none() is None


def test_tenant_scope_binds_and_unbinds() -> None:
    """Inside the block the tenant is bound; after it, nothing is."""
    with tenant_scope(ACME) as bound:
        assert bound is ACME
        assert current_tenant() is ACME
    assert current_tenant_or_none() is None


def test_tenant_scope_nests_and_restores_the_outer_tenant() -> None:
    """An inner scope (including an explicit "no tenant") shadows the outer one until it exits."""
    with tenant_scope(ACME):
        with tenant_scope(GLOBEX):
            assert current_tenant() is GLOBEX
            with tenant_scope(None), pytest.raises(NoTenantContextError):
                current_tenant()
            assert current_tenant() is GLOBEX
        assert current_tenant() is ACME
    assert current_tenant_or_none() is None


def test_tenant_scope_restores_on_exception() -> None:
    """An exception escaping an inner scope still restores the outer binding."""
    with tenant_scope(ACME):
        with pytest.raises(RuntimeError, match="boom"), tenant_scope(GLOBEX):
            raise RuntimeError("boom")
        assert current_tenant() is ACME
    assert current_tenant_or_none() is None


async def test_tenant_scope_works_across_awaits() -> None:
    """A scope opened in a coroutine survives awaits and is gone after the block."""
    with tenant_scope(ACME):
        await asyncio.sleep(0)
        assert current_tenant() is ACME
    assert current_tenant_or_none() is None


async def test_asyncio_tasks_inherit_the_tenant() -> None:
    """A task created inside a scope runs as that tenant, even after the scope has ended."""
    seen: list[TenantContext | None] = []
    gate = asyncio.Event()

    async def work() -> None:
        await gate.wait()
        seen.append(current_tenant_or_none())

    with tenant_scope(ACME):
        task = asyncio.create_task(work())
    gate.set()
    await task
    assert seen == [ACME]


async def test_concurrent_tasks_keep_their_own_tenants() -> None:
    """Tasks bound to different tenants interleave without seeing each other's binding."""

    async def as_tenant(ctx: TenantContext) -> list[str]:
        slugs = []
        with tenant_scope(ctx):
            for _ in range(5):
                await asyncio.sleep(0)
                slugs.append(current_tenant().slug)
        return slugs

    acme, globex = await asyncio.gather(as_tenant(ACME), as_tenant(GLOBEX))
    assert acme == ["acme"] * 5
    assert globex == ["globex"] * 5


async def test_rebinding_inside_a_task_does_not_leak_to_the_parent() -> None:
    """A task that binds another tenant changes only its own copy of the context."""

    async def switch() -> str:
        with tenant_scope(GLOBEX):
            return current_tenant().slug

    with tenant_scope(ACME):
        assert await asyncio.create_task(switch()) == "globex"
        assert current_tenant() is ACME


def test_bare_executor_submit_runs_without_the_tenant() -> None:
    """Threads start with an empty context: a plain submit() does not carry the tenant."""
    with ThreadPoolExecutor(max_workers=1) as pool, tenant_scope(ACME):
        assert pool.submit(current_tenant_or_none).result() is None
        with pytest.raises(NoTenantContextError):
            pool.submit(current_tenant).result()


def test_wrap_carries_the_tenant_into_a_thread_pool() -> None:
    """wrap() snapshots the context, so the worker thread runs as the tenant."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        with tenant_scope(ACME):
            wrapped = wrap(current_tenant)
        # Called after the scope closed: the snapshot, not the caller's state, decides.
        assert pool.submit(wrapped).result() is ACME
        # The worker thread's own context is not polluted by the wrapped call.
        assert pool.submit(current_tenant_or_none).result() is None


def test_wrap_passes_arguments_and_keeps_the_function_name() -> None:
    """A wrapped function takes the same arguments and keeps its metadata."""

    def describe(prefix: str, *, suffix: str) -> str:
        return f"{prefix}{current_tenant().slug}{suffix}"

    with tenant_scope(GLOBEX):
        wrapped = wrap(describe)
    assert wrapped.__name__ == "describe"
    with ThreadPoolExecutor(max_workers=1) as pool:
        assert pool.submit(wrapped, "<", suffix=">").result() == "<globex>"


def test_wrap_in_a_plain_thread() -> None:
    """wrap() also works for a raw threading.Thread target."""
    seen: list[TenantContext | None] = []
    with tenant_scope(ACME):
        thread = threading.Thread(target=wrap(lambda: seen.append(current_tenant_or_none())))
    thread.start()
    thread.join()
    assert seen == [ACME]


async def test_run_in_executor_carries_the_tenant() -> None:
    """run_in_executor() runs the function in the pool as the current tenant."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        with tenant_scope(GLOBEX):
            got = await run_in_executor(pool, lambda: current_tenant())
            other_thread = await run_in_executor(pool, threading.get_ident)
        assert got is GLOBEX
        assert other_thread != threading.get_ident()
        # A bare loop.run_in_executor does not carry it (the contrast run_in_executor fixes).
        with tenant_scope(GLOBEX):
            bare = await asyncio.get_running_loop().run_in_executor(pool, current_tenant_or_none)
        assert bare is None


async def test_run_in_executor_with_the_default_executor_and_arguments() -> None:
    """With executor=None the loop's default pool is used and positional args pass through."""
    with tenant_scope(ACME):
        got = await run_in_executor(None, lambda a, b: (a, b, current_tenant().slug), 1, 2)
    assert got == (1, 2, "acme")


async def test_to_thread_copies_the_context() -> None:
    """asyncio.to_thread already copies the context, as the module docstring promises."""
    with tenant_scope(ACME):
        assert await asyncio.to_thread(current_tenant) is ACME


def test_log_fields_name_the_tenant() -> None:
    """Every log line carries tenant id, slug and tier."""
    assert ACME.log_fields() == {"tenant_id": str(ACME.id), "tenant_slug": "acme", "tier": "free"}
