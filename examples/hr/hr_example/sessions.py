"""Browser sessions for the HR API under ``/api/session``.

A client that holds a bearer token exchanges it for a server-side session (an opaque id
in an ``HttpOnly`` cookie): logging in rotates the id, and sessions end when idle, at
their absolute expiry, on logout, or everywhere at once. Sessions belong to the tenant
they were created in; a cookie replayed on another tenant is refused with 403.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from tenantry.web import (
    CurrentPrincipal,
    CurrentSession,
    HTTPProblem,
    Sessions,
    clear_session_cookie,
    set_session_cookie,
)

router = APIRouter(prefix="/api/session", tags=["sessions"])


def _view(user: str, data: dict[str, Any], expires_at: float) -> dict[str, Any]:
    return {"user": user, "role": data.get("role", "member"), "expires_at": expires_at}


@router.post("", status_code=201)
async def log_in(
    request: Request, response: Response, principal: CurrentPrincipal, sessions: Sessions
) -> dict[str, Any]:
    """Start a session for the bearer token's subject (a new id every time)."""
    if principal is None:
        raise HTTPProblem(
            401,
            "authentication_required",
            "log in with 'Authorization: Bearer <token>'",
            headers={"www-authenticate": "Bearer"},
        )
    previous = request.cookies.get(sessions.settings.cookie_name)
    session = await sessions.rotate(previous, principal.subject, {"role": principal.role})
    set_session_cookie(response, session, sessions)
    return _view(session.user_id, session.data, session.expires_at)


@router.get("")
async def who_am_i(session: CurrentSession) -> dict[str, Any]:
    """The session's user."""
    return _view(session.user_id, session.data, session.expires_at)


@router.delete("", status_code=204)
async def log_out(session: CurrentSession, sessions: Sessions) -> Response:
    """End this session."""
    await sessions.destroy(session.id)
    response = Response(status_code=204)
    clear_session_cookie(response, sessions)
    return response


@router.post("/logout-everywhere", status_code=204)
async def log_out_everywhere(session: CurrentSession, sessions: Sessions) -> Response:
    """End every session of this user in this tenant."""
    await sessions.logout_user(session.user_id)
    response = Response(status_code=204)
    clear_session_cookie(response, sessions)
    return response
