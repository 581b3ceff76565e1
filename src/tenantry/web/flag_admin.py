"""The flag admin API (``/admin/api/flags``), for platform operators only.

The same :class:`~tenantry.flags.FeatureFlags` operations as ``tenantry flags ...``, behind
a platform-admin bearer token; every change is versioned and audited under the token's
subject.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from tenantry.flags import Flag, Rule
from tenantry.flags.model import FlagType
from tenantry.web.dependencies import PlatformAdmin, PlatformDep
from tenantry.web.validation import PgText

router = APIRouter(prefix="/admin/api/flags", tags=["admin", "flags"])


class FlagCreate(BaseModel):
    """Body of ``POST /admin/api/flags``: a key and the flag's definition."""

    key: str = Field(min_length=1, max_length=64)
    type: FlagType
    default: Any
    description: PgText = Field(default="", max_length=500)
    enabled: bool = True
    targets: dict[str, Any] = Field(default_factory=dict)
    rules: list[dict[str, Any]] = Field(default_factory=list)


class FlagPatch(BaseModel):
    """Body of ``PATCH /admin/api/flags/{key}``: the fields to change."""

    description: PgText | None = Field(default=None, max_length=500)
    default: Any = None
    enabled: bool | None = None
    rules: list[dict[str, Any]] | None = None
    expected_version: int | None = Field(default=None, ge=1)


class TargetBody(BaseModel):
    """Body of ``PUT /admin/api/flags/{key}/targets/{tenant}``."""

    serve: Any = True


class RolloutBody(BaseModel):
    """Body of ``POST /admin/api/flags/{key}/rollout``."""

    percentage: int = Field(ge=0, le=100)
    rule: str = Field(default="rollout", min_length=1, max_length=64)
    serve: Any = None
    tiers: list[str] | None = None
    rings: list[int] | None = None
    group: PgText | None = Field(default=None, min_length=1, max_length=100)


@router.get("")
async def list_flags(platform: PlatformDep, admin: PlatformAdmin) -> dict[str, Any]:
    """Every flag (a definition that no longer parses is listed with its error)."""
    items = [
        flag.as_dict() if isinstance(flag, Flag) else {"key": flag.key, "error": flag.message}
        for flag in await platform.flags.list()
    ]
    return {"items": items, "count": len(items)}


@router.post("", status_code=201)
async def create_flag(
    body: FlagCreate, platform: PlatformDep, admin: PlatformAdmin
) -> dict[str, Any]:
    """Create a flag (version 1)."""
    definition = body.model_dump(exclude={"key"})
    flag = Flag.from_definition(body.key, definition)
    return (await platform.flags.create(flag, actor=admin.subject)).as_dict()


@router.get("/{key}")
async def show_flag(key: str, platform: PlatformDep, admin: PlatformAdmin) -> dict[str, Any]:
    """One flag as stored."""
    return (await platform.flags.get(key)).as_dict()


@router.patch("/{key}")
async def update_flag(
    key: str, body: FlagPatch, platform: PlatformDep, admin: PlatformAdmin
) -> dict[str, Any]:
    """Change some of a flag's fields (``expected_version`` guards against lost updates)."""
    current = await platform.flags.get(key)
    rules = (
        None
        if body.rules is None
        else [Rule.from_dict(rule, current.type, i) for i, rule in enumerate(body.rules)]
    )
    changes: dict[str, Any] = (
        {"default": body.default} if "default" in body.model_fields_set else {}
    )
    changed = await platform.flags.update(
        key,
        actor=admin.subject,
        description=body.description,
        enabled=body.enabled,
        rules=rules,
        expected_version=body.expected_version,
        **changes,
    )
    return changed.as_dict()


@router.put("/{key}")
async def replace_flag(
    key: str, body: dict[str, Any], platform: PlatformDep, admin: PlatformAdmin
) -> dict[str, Any]:
    """Replace a flag's whole definition (``expected_version`` may ride along)."""
    expected = body.pop("expected_version", None)
    if expected is not None and (isinstance(expected, bool) or not isinstance(expected, int)):
        expected = -1  # never matches: a conflict, not a crash
    return (
        await platform.flags.put(key, body, actor=admin.subject, expected_version=expected)
    ).as_dict()


@router.put("/{key}/targets/{tenant}")
async def set_target(
    key: str,
    tenant: str,
    platform: PlatformDep,
    admin: PlatformAdmin,
    body: TargetBody | None = None,
) -> dict[str, Any]:
    """Serve a value (``true`` by default) to one tenant (slug or id), ahead of every rule."""
    value = True if body is None else body.serve
    return (await platform.flags.set_target(key, tenant, value, actor=admin.subject)).as_dict()


@router.delete("/{key}/targets/{tenant}")
async def remove_target(
    key: str, tenant: str, platform: PlatformDep, admin: PlatformAdmin
) -> dict[str, Any]:
    """Stop targeting one tenant explicitly."""
    return (await platform.flags.remove_target(key, tenant, actor=admin.subject)).as_dict()


@router.post("/{key}/rollout")
async def rollout(
    key: str, body: RolloutBody, platform: PlatformDep, admin: PlatformAdmin
) -> dict[str, Any]:
    """Set the percentage of a rollout rule (created last if new)."""
    serve: dict[str, Any] = {"serve": body.serve} if "serve" in body.model_fields_set else {}
    changed = await platform.flags.rollout(
        key,
        body.percentage,
        actor=admin.subject,
        rule=body.rule,
        tiers=body.tiers,
        rings=body.rings,
        group=body.group,
        **serve,
    )
    return changed.as_dict()


@router.post("/{key}/kill")
async def kill(key: str, platform: PlatformDep, admin: PlatformAdmin) -> dict[str, Any]:
    """The kill switch: every tenant gets the default, in every process, at once."""
    return (await platform.flags.kill(key, actor=admin.subject)).as_dict()


@router.post("/{key}/enable")
async def enable(key: str, platform: PlatformDep, admin: PlatformAdmin) -> dict[str, Any]:
    """Undo the kill switch."""
    return (await platform.flags.revive(key, actor=admin.subject)).as_dict()


@router.get("/{key}/history")
async def history(
    key: str,
    platform: PlatformDep,
    admin: PlatformAdmin,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> dict[str, Any]:
    """The flag's audited changes, newest first: version, action, actor, at, before, after."""
    changes = await platform.flags.history(key, limit=limit)
    return {"items": [change.as_dict() for change in changes], "count": len(changes)}


@router.get("/{key}/evaluate/{tenant}")
async def evaluate(
    key: str, tenant: str, platform: PlatformDep, admin: PlatformAdmin
) -> dict[str, Any]:
    """What this process's snapshot answers for one tenant, and why."""
    return (await platform.flags.evaluate_for(key, tenant)).as_dict()
