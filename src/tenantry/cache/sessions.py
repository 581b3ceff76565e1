"""Server-side sessions bound to their tenant.

The cookie holds only an opaque, random id (256 bits); the session lives in Redis under
the tenant that created it, ``t:{<tenant_id>}:_session:<id>``. A session is looked up in
the *current* tenant only, so an id from tenant A presented on tenant B finds nothing
there; a small owner record (``p:session-owner:<id>``) then tells a stale cookie from a
cross-tenant replay, which is refused (:class:`SessionTenantMismatchError`) and logged.

A session ends ``idle_ttl`` after its last use and ``absolute_ttl`` after its creation,
whichever comes first (each use slides the key's TTL, never past the absolute end).
Logging in rotates the id. "Log out everywhere" for a user or a whole tenant is O(1):
each session records the user's and the tenant's session generation at creation, and
bumping one (``HINCRBY``) invalidates every older session at its next use.

Every lookup is one ``EVALSHA``. When Redis is unavailable, session operations raise
:class:`SessionUnavailableError` (HTTP 503): sessions cannot be served without their store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar
from uuid import UUID

from tenantry.cache.client import RedisClient
from tenantry.cache.degradation import RedisGuard
from tenantry.cache.errors import (
    RedisUnavailableError,
    SessionTenantMismatchError,
    SessionUnavailableError,
)
from tenantry.cache.keys import KeyBuilder, TenantRef, tenant_id_of
from tenantry.settings import SessionSettings

T = TypeVar("T")
logger = logging.getLogger("tenantry.sessions")

SESSION_ID = re.compile(r"[A-Za-z0-9_-]{43}")
MAX_USER_ID_LENGTH = 256

# KEYS: session, generations.  ARGV: user, data, created ms, expires ms, ttl ms.
_CREATE = """
local g = redis.call('HMGET', KEYS[2], '*', 'u:' .. ARGV[1])
redis.call('HSET', KEYS[1], 'u', ARGV[1], 'd', ARGV[2], 'c', ARGV[3], 'x', ARGV[4],
           'tg', g[1] or '0', 'ug', g[2] or '0')
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""
# KEYS: session, generations.  ARGV: now ms, idle ms.
# -> {1, user, data, created, expires} | {0} missing | {-1} logged out | {-2} expired
_LOAD = """
local s = redis.call('HMGET', KEYS[1], 'u', 'd', 'c', 'x', 'tg', 'ug')
if not s[1] then return {0} end
local g = redis.call('HMGET', KEYS[2], '*', 'u:' .. s[1])
if (g[1] or '0') ~= s[5] or (g[2] or '0') ~= s[6] then
  redis.call('DEL', KEYS[1])
  return {-1}
end
local left = tonumber(s[4]) - tonumber(ARGV[1])
if left <= 0 then
  redis.call('DEL', KEYS[1])
  return {-2}
end
redis.call('PEXPIRE', KEYS[1], math.min(left, tonumber(ARGV[2])))
return {1, s[1], s[2], s[3], s[4]}
"""
# KEYS: session.  ARGV: data.  Only an existing session is updated.
_SAVE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'd', ARGV[1])
  return 1
end
return 0
"""


@dataclass(frozen=True, slots=True)
class Session:
    """One server-side session. Times are Unix epoch seconds."""

    id: str = field(repr=False)
    tenant_id: UUID
    user_id: str
    data: dict[str, Any]
    created_at: float
    expires_at: float


class SessionStore:
    """Create, look up, rotate and end the current tenant's sessions."""

    def __init__(
        self,
        redis: RedisClient | None,
        *,
        guard: RedisGuard | None = None,
        keys: KeyBuilder | None = None,
        settings: SessionSettings | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.guard = guard or RedisGuard()
        self.keys = keys or KeyBuilder()
        self.settings = settings or SessionSettings()
        self._clock = clock
        if redis is not None:
            self._create = redis.register_script(_CREATE)
            self._load = redis.register_script(_LOAD)
            self._save = redis.register_script(_SAVE)

    async def create(
        self, user_id: str, data: Mapping[str, Any] | None = None, *, tenant: TenantRef = None
    ) -> Session:
        """Start a session for ``user_id`` in the tenant (default: the current one)."""
        tenant_id = tenant_id_of(tenant)
        if not user_id or len(user_id) > MAX_USER_ID_LENGTH:
            raise ValueError(f"user_id must be 1 to {MAX_USER_ID_LENGTH} characters")
        session_id = secrets.token_urlsafe(32)
        now = self._clock()
        expires = now + self.settings.absolute_ttl
        payload = json.dumps(dict(data or {}), separators=(",", ":"))
        ttl_ms = int(min(self.settings.idle_ttl, self.settings.absolute_ttl) * 1000)
        keys = [self._key(session_id, tenant_id), self._generations(tenant_id)]
        args: list[str | int] = [user_id, payload, int(now * 1000), int(expires * 1000)]
        args.append(max(1, ttl_ms))
        await self._run(lambda: self._create(keys=keys, args=args), "session create")
        owner = self.keys.platform("session-owner", session_id)
        absolute_ms = max(1, int(self.settings.absolute_ttl * 1000))
        await self._run(
            lambda: self._client().set(owner, str(tenant_id), px=absolute_ms), "session create"
        )
        return Session(session_id, tenant_id, user_id, json.loads(payload), now, expires)

    async def get(self, session_id: str, *, tenant: TenantRef = None) -> Session | None:
        """The live session with this id in the tenant, or ``None``.

        Raises :class:`SessionTenantMismatchError` (and logs it) when the id belongs to a
        session of another tenant.
        """
        tenant_id = tenant_id_of(tenant)
        if not SESSION_ID.fullmatch(session_id):
            return None
        keys = [self._key(session_id, tenant_id), self._generations(tenant_id)]
        idle_ms = max(1, int(self.settings.idle_ttl * 1000))
        now_ms = int(self._clock() * 1000)
        reply = await self._run(
            lambda: self._load(keys=keys, args=[now_ms, idle_ms]), "session read"
        )
        if reply[0] == 1:
            user, data, created, expires = (_text(part) for part in reply[1:5])
            return Session(
                session_id,
                tenant_id,
                user,
                json.loads(data),
                int(created) / 1000,
                int(expires) / 1000,
            )
        if reply[0] == 0:
            owner = self.keys.platform("session-owner", session_id)
            found = await self._run(lambda: self._client().get(owner), "session read")
            if found is not None and _text(found) != str(tenant_id):
                logger.warning(
                    "rejected a session of tenant %s presented on tenant %s (session %s)",
                    _text(found),
                    tenant_id,
                    _fingerprint(session_id),
                )
                raise SessionTenantMismatchError(
                    "this session belongs to another tenant; log in to this one"
                )
        return None

    async def save(self, session: Session, data: Mapping[str, Any]) -> Session | None:
        """Replace the session's data; ``None`` if the session has ended meanwhile."""
        payload = json.dumps(dict(data), separators=(",", ":"))
        key = self._key(session.id, session.tenant_id)
        saved = await self._run(lambda: self._save(keys=[key], args=[payload]), "session write")
        if not saved:
            return None
        return Session(
            session.id,
            session.tenant_id,
            session.user_id,
            json.loads(payload),
            session.created_at,
            session.expires_at,
        )

    async def rotate(
        self,
        previous: str | None,
        user_id: str,
        data: Mapping[str, Any] | None = None,
        *,
        tenant: TenantRef = None,
    ) -> Session:
        """Log in: a new session (new id, new lifetime) replaces ``previous``.

        Without ``data`` the previous session's data carries over. A fresh id at login
        defeats session fixation.
        """
        tenant_id = tenant_id_of(tenant)
        carried: Mapping[str, Any] = {}
        if previous:
            try:
                old = await self.get(previous, tenant=tenant_id)
            except SessionTenantMismatchError:
                old = None
            if old is not None:
                carried = old.data
                await self.destroy(previous, tenant=tenant_id)
        return await self.create(user_id, carried if data is None else data, tenant=tenant_id)

    async def destroy(self, session_id: str, *, tenant: TenantRef = None) -> None:
        """Log out one session (a no-op for an unknown id)."""
        tenant_id = tenant_id_of(tenant)
        if not SESSION_ID.fullmatch(session_id):
            return
        key = self._key(session_id, tenant_id)
        owner = self.keys.platform("session-owner", session_id)
        await self._run(lambda: self._client().delete(key), "session delete")
        await self._run(lambda: self._client().delete(owner), "session delete")

    async def logout_user(self, user_id: str, *, tenant: TenantRef = None) -> None:
        """End every session of ``user_id`` in the tenant, in O(1)."""
        generations = self._generations(tenant_id_of(tenant))
        await self._run(
            lambda: self._client().hincrby(generations, f"u:{user_id}", 1), "session logout"
        )

    async def logout_tenant(self, tenant: TenantRef = None) -> None:
        """End every session of the tenant (on suspension, say), in O(1)."""
        generations = self._generations(tenant_id_of(tenant))
        await self._run(lambda: self._client().hincrby(generations, "*", 1), "session logout")

    def _key(self, session_id: str, tenant_id: UUID) -> str:
        return self.keys.internal("_session", session_id, tenant_id)

    def _generations(self, tenant_id: UUID) -> str:
        return self.keys.internal("_sessions", "generations", tenant_id)

    def _client(self) -> RedisClient:
        if self.redis is None:
            raise SessionUnavailableError("sessions need Redis: set REDIS_URL")
        return self.redis

    async def _run(self, call: Callable[[], Awaitable[T]], what: str) -> T:
        self._client()
        try:
            return await self.guard.run(call, what)
        except RedisUnavailableError as exc:
            raise SessionUnavailableError(
                "the session store is unavailable; try again in a moment"
            ) from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _fingerprint(session_id: str) -> str:
    # Enough to correlate log lines, useless to replay the session.
    return hashlib.sha256(session_id.encode()).hexdigest()[:12]
