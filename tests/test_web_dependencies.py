"""tenantry's FastAPI dependencies never cost a thread-pool hop."""

from __future__ import annotations

import inspect
import typing

import pytest
from fastapi.params import Depends

import tenantry.web as web


def _dependency(alias: object) -> typing.Callable[..., object]:
    marks = [m for m in typing.get_args(alias)[1:] if isinstance(m, Depends)]
    assert len(marks) == 1, alias
    call = marks[0].dependency
    assert call is not None
    return call


@pytest.mark.parametrize(
    "name",
    [
        name
        for name in web.__all__
        if typing.get_origin(getattr(web, name)) is typing.Annotated
        and any(isinstance(m, Depends) for m in typing.get_args(getattr(web, name))[1:])
    ],
)
def test_every_dependency_alias_is_async(name: str) -> None:
    """FastAPI runs a plain ``def`` dependency in its thread pool (a hop per request that
    costs more than a cached read): every alias tenantry exports must be ``async def``."""
    call = _dependency(getattr(web, name))
    assert inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call), (
        f"{name} depends on {call.__qualname__}, which FastAPI would run in a thread"
    )


def test_the_aliases_are_found() -> None:
    """The parametrisation above is not vacuous."""
    names = {
        name for name in web.__all__ if typing.get_origin(getattr(web, name)) is typing.Annotated
    }
    assert {"TenantConnection", "CurrentTenant", "PlatformDep", "CurrentFlags"} <= names
