"""What every CLI command shares: settings from the environment (or from the state a
running ``tenantry up`` left in its data folder), the product's tenant schema, and a
platform opened for the duration of one command."""

from __future__ import annotations

import importlib
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NoReturn

import click

from tenantry.catalog.errors import (
    InvalidTenantIdentifierError,
    TenantExistsError,
    TenantNotFoundError,
    TenantStateError,
)
from tenantry.db import TenantSchema
from tenantry.errors import ConfigurationError, TenantryError
from tenantry.flags.errors import (
    FlagExistsError,
    FlagNotFoundError,
    FlagVersionConflictError,
    InvalidFlagError,
)
from tenantry.platform import Platform
from tenantry.settings import Settings

DEFAULT_DATA_DIR = ".tenantry"
DEFAULT_SCHEMA = "hr_example.schema:HR_SCHEMA"
DEFAULT_CONTROL_SCHEMA = "hr_example.schema:HR_CONTROL_PLANE"
DEFAULT_APP = "hr_example.app:create_app"
STATE_FILE = "state.json"

# Exit codes the CLI documents (README, "CLI").
EXIT_ERROR, EXIT_USAGE, EXIT_EXISTS, EXIT_NOT_FOUND, EXIT_STATE = 1, 2, 3, 4, 5


def resolve_data_dir(option: str | None = None) -> Path:
    """The data folder: ``--data-dir``, else ``$TENANTRY_DATA_DIR``, else ``./.tenantry``."""
    return Path(option or os.environ.get("TENANTRY_DATA_DIR") or DEFAULT_DATA_DIR).absolute()


def load_environment(folder: Path) -> dict[str, str]:
    """The process environment, completed by the embedded state of ``tenantry up``.

    Explicit environment variables always win over the recorded state.
    """
    env = dict(os.environ)
    state = folder / STATE_FILE
    if state.exists():
        recorded: Mapping[str, str] = json.loads(state.read_text())
        for key, value in recorded.items():
            env.setdefault(key, value)
    return env


def load_object(spec: str, what: str) -> Any:
    """Import ``module:attribute``."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"{what} must look like 'package.module:name', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"cannot import {what} {spec!r}: {exc}") from exc
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ConfigurationError(f"{module_name} has no {attribute!r} ({what})") from None


def tenant_schema(env: Mapping[str, str]) -> TenantSchema:
    """The product's tenant schema named by ``$TENANTRY_SCHEMA`` (default: the HR example)."""
    schema = load_object(env.get("TENANTRY_SCHEMA", DEFAULT_SCHEMA), "TENANTRY_SCHEMA")
    if not isinstance(schema, TenantSchema):
        raise ConfigurationError("TENANTRY_SCHEMA must name a tenantry.TenantSchema instance")
    return schema


def control_plane_schema(env: Mapping[str, str]) -> TenantSchema:
    """The product's control-plane chain named by ``$TENANTRY_CONTROL_SCHEMA``.

    Defaults to the HR example's when ``$TENANTRY_SCHEMA`` is unset too (never pairs
    another product's tenant schema with the example's control plane); empty otherwise.
    """
    spec = env.get("TENANTRY_CONTROL_SCHEMA")
    if spec is None and "TENANTRY_SCHEMA" not in env:
        spec = DEFAULT_CONTROL_SCHEMA
    if not spec:
        return TenantSchema(())
    schema = load_object(spec, "TENANTRY_CONTROL_SCHEMA")
    if not isinstance(schema, TenantSchema):
        raise ConfigurationError(
            "TENANTRY_CONTROL_SCHEMA must name a tenantry.TenantSchema instance"
        )
    return schema


@asynccontextmanager
async def open_platform(folder: Path) -> AsyncIterator[Platform]:
    """A started platform for one command (no catalog listener: commands are short)."""
    env = load_environment(folder)
    settings = Settings.from_env(env)
    if not settings.database.url:
        raise ConfigurationError(
            "DATABASE_URL is not set and no 'tenantry up' state was found in "
            f"{folder}; start 'make up' or export DATABASE_URL"
        )
    platform = Platform(settings, tenant_schema(env))
    await platform.start(listen=False)
    try:
        yield platform
    finally:
        await platform.stop()


def fail(exc: BaseException) -> NoReturn:
    """Print a tenantry error for a person and exit with its documented code."""
    codes: list[tuple[type[BaseException], int]] = [
        (InvalidTenantIdentifierError, EXIT_USAGE),
        (ConfigurationError, EXIT_USAGE),
        (TenantExistsError, EXIT_EXISTS),
        (TenantNotFoundError, EXIT_NOT_FOUND),
        (TenantStateError, EXIT_STATE),
        (InvalidFlagError, EXIT_USAGE),
        (FlagExistsError, EXIT_EXISTS),
        (FlagNotFoundError, EXIT_NOT_FOUND),
        (FlagVersionConflictError, EXIT_STATE),
    ]
    code = next((c for kind, c in codes if isinstance(exc, kind)), EXIT_ERROR)
    click.secho(f"error: {exc}", fg="red", err=True)
    sys.exit(code)


def guarded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command body, turning tenantry errors into messages and exit codes."""
    import functools

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except TenantryError as exc:
            fail(exc)

    return run
