"""FastAPI integration of server-side sessions: the cookie, and the current session.

The cookie (``TENANTRY_SESSION_COOKIE``, default ``tenantry_session``) holds only the
session's opaque id; it is ``HttpOnly``, ``SameSite=Lax`` and ``Secure`` unless configured
otherwise. The session is looked up in the request's tenant: a cookie from another
tenant is refused with 403 ``session_tenant_mismatch`` (and logged); a store that cannot
be reached is a 503 ``session_store_unavailable``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, Response

from tenantry.cache import Session, SessionStore
from tenantry.web.dependencies import platform_of
from tenantry.web.errors import HTTPProblem


async def get_session_store(request: Request) -> SessionStore:
    """The platform's :class:`~tenantry.cache.SessionStore`."""
    return platform_of(request).sessions


def session_id_from(request: Request) -> str | None:
    """The session id the request's cookie carries, if any."""
    return request.cookies.get(platform_of(request).sessions.settings.cookie_name)


async def get_optional_session(request: Request) -> Session | None:
    """The request's live session, or ``None`` (no cookie, ended or unknown session)."""
    session_id = session_id_from(request)
    if not session_id:
        return None
    return await platform_of(request).sessions.get(session_id)


async def get_current_session(
    session: Annotated[Session | None, Depends(get_optional_session)],
) -> Session:
    """The request's live session; 401 ``session_required`` without one."""
    if session is None:
        raise HTTPProblem(401, "session_required", "log in first: this needs a session")
    return session


def set_session_cookie(response: Response, session: Session, store: SessionStore) -> None:
    """Send the session's id in the session cookie."""
    settings = store.settings
    response.set_cookie(
        settings.cookie_name,
        session.id,
        max_age=int(settings.absolute_ttl),
        httponly=True,
        secure=settings.cookie_secure,
        samesite=settings.cookie_samesite,
        path="/",
    )


def clear_session_cookie(response: Response, store: SessionStore) -> None:
    """Tell the browser to forget the session cookie."""
    settings = store.settings
    response.delete_cookie(
        settings.cookie_name,
        path="/",
        secure=settings.cookie_secure,
        httponly=True,
        samesite=settings.cookie_samesite,
    )


OptionalSession = Annotated[Session | None, Depends(get_optional_session)]
CurrentSession = Annotated[Session, Depends(get_current_session)]
Sessions = Annotated[SessionStore, Depends(get_session_store)]
