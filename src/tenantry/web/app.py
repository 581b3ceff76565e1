"""The app factory: a FastAPI application with tenantry wired in."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from tenantry.db import TenantSchema
from tenantry.errors import TenantryError
from tenantry.observability.logging import configure_logging
from tenantry.observability.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from tenantry.platform import Platform
from tenantry.settings import Settings
from tenantry.web.admin import router as admin_router
from tenantry.web.auth import TokenService
from tenantry.web.errors import problem_for, problem_response
from tenantry.web.flag_admin import router as flag_admin_router
from tenantry.web.middleware import DEFAULT_EXEMPT, TenantMiddleware
from tenantry.web.observability import REQUEST_ID_KEY, ObservabilityMiddleware
from tenantry.web.observability_admin import router as observability_admin_router
from tenantry.web.resolver import ChainResolver, TenantResolver

logger = logging.getLogger("tenantry.web")


def create_app(
    settings: Settings,
    tenant_schema: TenantSchema,
    *,
    routers: Sequence[APIRouter] = (),
    title: str = "tenantry",
    resolver: TenantResolver | None = None,
    exempt: Sequence[str] = DEFAULT_EXEMPT,
) -> FastAPI:
    """Build the ASGI app: platform lifecycle, tenant middleware, admin API, error shape.

    ``routers`` hold the product's own routes; they run with a tenant bound.
    """
    configure_logging(settings.log)
    platform = Platform(settings, tenant_schema)
    tokens = TokenService(settings.auth)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await platform.start()
        try:
            yield
        finally:
            await platform.stop()

    app = FastAPI(title=title, lifespan=lifespan)
    app.state.tenantry = platform
    app.state.tenantry_tokens = tokens
    app.add_middleware(
        TenantMiddleware,
        resolver=resolver
        or ChainResolver(
            platform.directory, settings.resolution, tokens, auth_required=settings.auth.required
        ),
        exempt=exempt,
        limiter=platform.rate_limiter,  # checked right after the tenant is bound
    )
    # Outermost: it times, counts and logs every request, refused ones included. With
    # metrics, traces, access log and usage all off there is nothing for it to do.
    if (
        settings.metrics.enabled
        or settings.tracing.enabled
        or settings.log.access_log
        or settings.usage.enabled
    ):
        app.add_middleware(
            ObservabilityMiddleware,
            observability=platform.observability,
            access_log=settings.log.access_log,
        )
    _install_error_handlers(app)
    # Routes match in order: the product's, which carry the traffic, go first.
    for router in routers:
        app.include_router(router)

    @app.get("/health", tags=["platform"])
    async def health() -> Response:
        report = await platform.health()
        ok = report["postgres"] == "ok"
        return JSONResponse({"status": "ok" if ok else "degraded", **report}, 200 if ok else 503)

    if settings.metrics.enabled:

        @app.get("/metrics", tags=["platform"], include_in_schema=False)
        async def metrics() -> Response:
            return Response(platform.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    app.include_router(admin_router)
    app.include_router(observability_admin_router)
    app.include_router(flag_admin_router)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(TenantryError)
    async def tenantry_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, TenantryError)
        problem = problem_for(exc)
        # 503s are outages (Redis down, say) that their capability logs once per interval.
        if problem.status >= 500 and problem.status != 503:
            logger.error("unhandled tenantry error on %s", request.url.path, exc_info=exc)
        return problem.response()

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, exc: Exception) -> Response:
        # Still the JSON error shape; the exception is logged with its traceback.
        logger.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        # Rendered outside the observability middleware: it left the request id here.
        request_id = (request.scope.get("state") or {}).get(REQUEST_ID_KEY)
        headers = {"X-Request-ID": request_id} if request_id else None
        return problem_response(500, "internal_error", "internal error", headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        fields: list[dict[str, Any]] = [
            {
                "loc": list(err.get("loc", ())),
                "message": err.get("msg", ""),
                "type": err.get("type"),
            }
            for err in exc.errors()
        ]
        return problem_response(422, "validation_error", "request validation failed", fields=fields)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed", 409: "conflict"}.get(
            exc.status_code, "http_error"
        )
        headers = dict(exc.headers) if exc.headers else None
        return problem_response(exc.status_code, code, str(exc.detail), headers=headers)
