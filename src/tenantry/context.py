"""The tenant context: one source of truth for "which tenant is this work for".

A :class:`TenantContext` lives in a :class:`contextvars.ContextVar`. It is bound once at
the edge (HTTP middleware, event consumer, CLI or job runner) and read everywhere else:
the database layer, logs, metrics, cache keys and flag evaluation all take the tenant
from here, so it cannot be forgotten or passed wrongly.

asyncio tasks inherit the context they were created in. Threads and executors do not:
use :func:`wrap` / :func:`run_in_executor` (``asyncio.to_thread`` already copies it).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar
from uuid import UUID

from tenantry.errors import NoTenantContextError

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class TenantContext:
    """Who the current work is for, and where that tenant's data lives.

    Immutable, so one instance can be shared by every task of a request.
    """

    id: UUID
    slug: str
    tier: str
    schema: str
    ring: int = 0
    cell: str = "default"
    isolation: str = "schema"
    attributes: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def log_fields(self) -> dict[str, str]:
        """The fields every log line and event carries for this tenant."""
        return {"tenant_id": str(self.id), "tenant_slug": self.slug, "tier": self.tier}


_current: contextvars.ContextVar[TenantContext | None] = contextvars.ContextVar(
    "tenantry_tenant", default=None
)


def current_tenant() -> TenantContext:
    """Return the tenant bound to the current context.

    Raises :class:`NoTenantContextError` when none is bound: tenant-scoped work with no
    tenant fails closed rather than running against some default.
    """
    ctx = _current.get()
    if ctx is None:
        raise NoTenantContextError(
            "no tenant is bound to this context; bind one with tenantry.tenant_scope(...) "
            "or serve the request through TenantMiddleware"
        )
    return ctx


def current_tenant_or_none() -> TenantContext | None:
    """Return the bound tenant, or ``None`` outside any tenant scope."""
    return _current.get()


@contextmanager
def tenant_scope(ctx: TenantContext | None) -> Iterator[TenantContext | None]:
    """Bind ``ctx`` (or explicitly no tenant) for the duration of a ``with`` block.

    Works in sync and async code alike; the previous binding is restored on exit, even on
    error, so scopes nest.
    """
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


def bind_tenant(ctx: TenantContext | None) -> contextvars.Token[TenantContext | None]:
    """Low-level: bind ``ctx`` and return the token for :func:`unbind_tenant`.

    For edges (middleware, consumers) that cannot use a ``with`` block; everything else
    should use :func:`tenant_scope`.
    """
    return _current.set(ctx)


def unbind_tenant(token: contextvars.Token[TenantContext | None]) -> None:
    """Restore the binding that :func:`bind_tenant` replaced."""
    _current.reset(token)


def wrap(fn: Callable[P, R]) -> Callable[P, R]:
    """Return ``fn`` bound to a snapshot of the *current* context (tenant included).

    Use it to hand work to a thread, a thread pool or a callback registry, which would
    otherwise run with an empty context.
    """
    snapshot = contextvars.copy_context()

    @functools.wraps(fn)
    def bound(*args: P.args, **kwargs: P.kwargs) -> R:
        return snapshot.copy().run(fn, *args, **kwargs)

    return bound


async def run_in_executor(executor: Executor | None, fn: Callable[..., R], *args: Any) -> R:
    """``loop.run_in_executor`` that carries the current tenant into the worker thread."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, wrap(fn), *args)
