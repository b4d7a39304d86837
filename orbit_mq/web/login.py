"""Who is asking, and the CSRF rules: HTTP Basic or the session cookie, and the routes that
log in and out (the sessions themselves: `sessions`).

    POST /api/v1/login    {"user": …, "password": …}  → Set-Cookie, {"user", "csrf_token", …}
    POST /api/v1/logout   ends the cookie's session and clears the cookie
    GET  /api/v1/session  who the caller is, and the session's CSRF token (to resume a page)

A request with an `Authorization` header is HTTP Basic's alone: the cookie is not looked at,
so a request is never half one login and half another. Without one, the session cookie
decides. CSRF: every state-changing call must say `Content-Type: application/json` (an
upload: `X-Orbit-Upload: 1`), which no cross-site form can send; under a session it must
also carry the session's `X-CSRF-Token`; the cookie itself is `SameSite=Strict`. The login
takes JSON too, and is refused when the browser says it comes from another site
(`Sec-Fetch-Site`), so no other site can log a browser in as someone else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from orbit_mq.errors import OrbitError, Unavailable, invalid_params
from orbit_mq.protocol import ErrorCode
from orbit_mq.web.errors import PAGE_HEADER, failure, login_required, login_throttled, problem
from orbit_mq.web.files import UPLOAD_HEADER
from orbit_mq.web.identity import (
    Connection,
    Credentials,
    LoginFailed,
    LoginThrottled,
    Users,
    basic_credentials,
)
from orbit_mq.web.routes import JSON, json_body
from orbit_mq.web.sessions import (
    COOKIE,
    CSRF_HEADER,
    SECURE_COOKIE,
    Session,
    Sessions,
    SessionsFull,
)

log = logging.getLogger("orbit_mq.web")

JSON_TYPE = "application/json"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SAME_ORIGIN = frozenset({"same-origin", "none"})  # Sec-Fetch-Site values a login may carry
NO_STORE = {"Cache-Control": "no-store"}
ENDED = "your session has ended (expired, logged out, or the gateway restarted): log in again"


@dataclass
class Caller:
    """The broker user of a request, their connection, and the session if by cookie."""

    user: str
    connection: Connection
    session: Session | None = None


def json_content(request: Request) -> bool:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    return media == JSON_TYPE


def content_rule(request: Request, upload: bool = False) -> Response | None:
    """The answer to a state-changing call a cross-site form could have sent, else None."""
    if upload and request.headers.get(UPLOAD_HEADER) != "1":
        message = f"send the header {UPLOAD_HEADER}: 1 (uploads need it: CSRF protection)"
        return problem(ErrorCode.INVALID_REQUEST, message, 400)
    if not upload and request.method not in SAFE_METHODS and not json_content(request):
        message = f"send {JSON_TYPE} (state-changing calls need it: CSRF protection)"
        return problem(ErrorCode.INVALID_REQUEST, message, 415)
    return None


def _secure(request: Request) -> bool:
    forced: bool | None = request.app.state.secure_cookie
    return request.url.scheme == "https" if forced is None else forced


def _cookie_secret(request: Request) -> str | None:
    return request.cookies.get(SECURE_COOKIE) or request.cookies.get(COOKIE)


def _set_cookie(response: Response, request: Request, value: str, max_age: int) -> None:
    secure = _secure(request)
    response.set_cookie(
        SECURE_COOKIE if secure else COOKIE,
        value,
        max_age=max_age,
        path="/",
        secure=secure,
        httponly=True,
        samesite="strict",
    )


def _forget(response: Response, request: Request) -> Response:
    """`response`, clearing the session cookie in the browser."""
    if _cookie_secret(request) is not None:
        _set_cookie(response, request, "", 0)
    return response


def csrf_rejected() -> Response:
    message = f"send the session's {CSRF_HEADER} header (state-changing calls need it: CSRF)"
    return problem(ErrorCode.UNAUTHORIZED, message, type="CsrfRejected")


async def caller(request: Request) -> Caller | Response:
    """Who sent `request` (the Basic header, else the cookie), with their connection; or the
    answer refusing it (401, 403 for a missing CSRF token, the broker's error)."""
    users: Users = request.app.state.users
    page = PAGE_HEADER in request.headers
    header = request.headers.get("authorization")
    if header is None and _cookie_secret(request) is not None:
        return await _by_session(request, users, page)
    try:
        credentials = basic_credentials(header)
        connection = await users.login(credentials)
    except LoginThrottled as exc:
        return login_throttled(str(exc), exc.retry_after)
    except LoginFailed as exc:
        return login_required(str(exc), page=page)
    except OrbitError as exc:
        return failure(exc)
    connection.basic_used = time.monotonic()
    return Caller(credentials.user, connection)


async def _by_session(request: Request, users: Users, page: bool) -> Caller | Response:
    sessions: Sessions = request.app.state.sessions
    secret = _cookie_secret(request)
    session = sessions.find(secret)
    if session is None or secret is None:
        return _forget(login_required(ENDED, page=page), request)
    if request.method not in SAFE_METHODS and not session.csrf_matches(
        request.headers.get(CSRF_HEADER)
    ):
        return csrf_rejected()
    try:
        connection = await users.login(Credentials(session.user, session.password(secret)))
    except LoginThrottled as exc:  # someone else's wrong passwords: the session stays
        return login_throttled(str(exc), exc.retry_after)
    except (LoginFailed, ValueError):
        sessions.end(session, "ended: the broker refused its password")
        return _forget(login_required(ENDED, page=page), request)
    except OrbitError as exc:
        return failure(exc)
    return Caller(session.user, connection, session)


def held(response: Response, who: Caller, sessions: Sessions) -> Response:
    """`response`; an event stream holds its login while it is open (so it is not idle) and,
    under a session, ends when the session does."""
    if isinstance(response, StreamingResponse):
        response.body_iterator = _holding(response.body_iterator, who, sessions)
    return response


async def _holding(body: AsyncIterable[Any], who: Caller, sessions: Sessions) -> AsyncIterator[Any]:
    session = who.session
    if session is None:
        who.connection.basic_streams += 1
    else:
        session.streams += 1
    try:
        async for chunk in body:
            # the stream's own beat (an event or a keep-alive comment) is when it learns that
            # the session ended; a logout that closes the connection ends it at once
            if session is not None and (
                session.ended.is_set() or time.monotonic() >= session.deadline(sessions.terms)
            ):
                return
            yield chunk
    finally:
        if session is None:
            who.connection.basic_streams -= 1
            who.connection.basic_used = time.monotonic()
        else:
            session.streams -= 1
            session.last_used = time.monotonic()


# -- the routes ---------------------------------------------------------------------------------


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user: str = Field(min_length=1, max_length=255, description="A broker user.")
    password: str = Field(max_length=4096, description="Their broker password.")


class SessionInfo(BaseModel):
    user: str = Field(description="The broker user every request is made as.")
    csrf_token: str | None = Field(
        description="Send it as X-CSRF-Token on state-changing calls (null: HTTP Basic)."
    )
    expires_in: float | None = Field(
        None, description="Seconds until the session ends whatever its use."
    )
    idle_timeout: float | None = Field(
        None, description="Seconds without a request after which it ends."
    )


def _info(session: Session, sessions: Sessions) -> dict[str, Any]:
    left = session.deadline(sessions.terms) - time.monotonic()
    info = SessionInfo(
        user=session.user,
        csrf_token=session.csrf,
        expires_in=round(max(left, 0.0), 3),
        idle_timeout=sessions.terms.idle,
    )
    return info.model_dump(mode="json")


async def login(request: Request) -> Response:
    """POST /api/v1/login: the broker checks the user and password (by opening, or reusing,
    their connection); a new session, its cookie and its CSRF token."""
    refused = content_rule(request)
    if refused is not None:
        return refused
    if request.headers.get("sec-fetch-site", "none") not in SAME_ORIGIN:
        message = "a login must come from this gateway's own pages"
        return problem(ErrorCode.UNAUTHORIZED, message, type="CrossSiteLogin")
    users: Users = request.app.state.users
    sessions: Sessions = request.app.state.sessions
    try:
        asked = LoginRequest.model_validate(await json_body(request))
        connection = await users.login(Credentials(asked.user, asked.password))
        secret, session = sessions.start(asked.user, asked.password)
    except ValidationError as exc:
        return failure(invalid_params("login", exc))
    except LoginThrottled as exc:
        return login_throttled(str(exc), exc.retry_after)
    except LoginFailed as exc:
        return login_required(str(exc), page=True)  # never the browser's dialog: a form
    except SessionsFull as exc:
        return failure(Unavailable(str(exc)))
    except OrbitError as exc:
        return failure(exc)
    connection.touch()
    previous = sessions.find(_cookie_secret(request))
    if previous is not None:  # a new login ends the browser's former session (a new id)
        sessions.end(previous, "ended: replaced by a new login")
    response = JSON(_info(session, sessions), headers=NO_STORE)
    _set_cookie(response, request, secret, int(sessions.terms.lifetime))
    return response


async def logout(request: Request) -> Response:
    """POST /api/v1/logout: the cookie's session ends (with its CSRF token, so no other site
    can log the browser out); the user's connection closes unless another session of theirs
    or an HTTP Basic client still uses it. No session: nothing to end, the cookie goes."""
    refused = content_rule(request)
    if refused is not None:
        return refused
    sessions: Sessions = request.app.state.sessions
    users: Users = request.app.state.users
    session = sessions.find(_cookie_secret(request))
    if session is not None:
        if not session.csrf_matches(request.headers.get(CSRF_HEADER)):
            return csrf_rejected()
        sessions.end(session, "logged out")
        connection = users.get(session.user)
        if (
            connection is not None
            and sessions.of_user(session.user) == 0
            and not connection.held_by_basic(users.idle)
        ):
            await users.drop(session.user)
    return _forget(Response(status_code=204, headers=NO_STORE), request)


async def whoami(request: Request, user: Connection) -> Response:
    """GET /api/v1/session: the caller, and under a session its CSRF token (a page that was
    reloaded resumes with it)."""
    who: Caller = request.state.caller
    if who.session is None:
        body = SessionInfo(user=who.user, csrf_token=None).model_dump(mode="json")
    else:
        body = _info(who.session, request.app.state.sessions)
    return JSON(body, headers=NO_STORE)
