"""Helpers the cache, session and rate-limit tests share: apps of their own, ports, cookies."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from hr_example import create_app
from tenantry import Settings
from tenantry.catalog import Tenant

COOKIE = "tenantry_session"


def free_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    """The HR app built from ``settings``, started, with an in-process client."""
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as http,
    ):
        yield app, http


def tenant_headers(tenant: Tenant, **extra: str) -> dict[str, str]:
    """Headers naming ``tenant`` (plus any ``extra``)."""
    return {"X-Tenant-ID": tenant.slug, **extra}


def session_cookie(response: httpx.Response) -> str:
    """The session id a response sets (parsed by hand: the cookie is ``Secure``)."""
    header = response.headers["set-cookie"]
    name, _, rest = header.partition("=")
    assert name == COOKIE
    return rest.split(";", 1)[0]
