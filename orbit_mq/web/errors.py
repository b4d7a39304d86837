"""Errors as HTTP answers: the status of each wire error code (one table, `STATUS`) and the
body, which is the wire's own error reply (`{"ok": false, "error": {code, message, details}}`,
schemas/reply-error.json), whether the endpoint answered with it or the SDK raised it here.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from orbit_mq.errors import (
    AccessRefused,
    BrokerError,
    CallTimeout,
    ConfigError,
    EndpointNotFound,
    EndpointOffline,
    OrbitError,
    RemoteError,
    TransientError,
    to_error_info,
)
from orbit_mq.protocol import ErrorCode, ErrorInfo, ErrorReply
from orbit_mq.shorten import shorten

# The one table: the HTTP status of every wire error code.
STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_REQUEST: 422,  # parameters that do not fit the method's contract
    ErrorCode.NOT_FOUND: 404,  # unknown endpoint, plugin, method, job, …
    ErrorCode.CONFLICT: 409,
    ErrorCode.UNAUTHORIZED: 403,  # logged in, but not allowed: another user's job, no CSRF token
    ErrorCode.UNAVAILABLE: 503,  # the endpoint is offline, or the broker away
    ErrorCode.TIMEOUT: 504,  # no answer before the deadline
    ErrorCode.INTERNAL: 500,
}

# The wire code of the errors the SDK raises itself (before or instead of a reply), most
# specific first.
LOCAL_CODES: tuple[tuple[type[OrbitError], ErrorCode], ...] = (
    (EndpointNotFound, ErrorCode.NOT_FOUND),
    (EndpointOffline, ErrorCode.UNAVAILABLE),
    (CallTimeout, ErrorCode.TIMEOUT),
    (ConfigError, ErrorCode.INVALID_REQUEST),  # InvalidArguments, RequestTooLarge
    (AccessRefused, ErrorCode.UNAUTHORIZED),  # the broker refused this user a permission
    (TransientError, ErrorCode.UNAVAILABLE),  # BrokerUnavailable, ConnectionLost
    (BrokerError, ErrorCode.UNAVAILABLE),
)

LOGIN_REALM = 'Basic realm="orbit-mq", charset="UTF-8"'


def error_info(error: OrbitError) -> ErrorInfo:
    """The wire error for `error`: an endpoint's as it came, the SDK's with the code above."""
    if isinstance(error, RemoteError):
        return to_error_info(error)
    code = next((code for cls, code in LOCAL_CODES if isinstance(error, cls)), ErrorCode.INTERNAL)
    details: dict[str, Any] = {"type": type(error).__name__}
    for attribute in ("endpoint", "plugin"):
        value = getattr(error, attribute, None)
        if value is not None:
            details[attribute] = value
    return ErrorInfo(code=code, message=shorten(str(error), 1000), details=details)


def error_response(
    info: ErrorInfo, status: int | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = ErrorReply(error=info).model_dump(mode="json", exclude_none=True)
    return JSONResponse(body, status_code=status or STATUS[info.code], headers=headers)


def failure(error: OrbitError) -> JSONResponse:
    return error_response(error_info(error))


def problem(
    code: ErrorCode, message: str, status: int | None = None, **details: Any
) -> JSONResponse:
    """An error the gateway finds itself (a bad query, a missing content type, …)."""
    info = ErrorInfo(code=code, message=message, details={"type": "HttpError", **details})
    return error_response(info, status)


# The explorer page sends this header: it has a login form of its own, so its 401s come
# without the challenge that would make the browser pop up its own login dialog.
PAGE_HEADER = "x-orbit-page"


def login_throttled(message: str, retry_after: int) -> JSONResponse:
    """429: this user name was refused too often lately; `Retry-After` says when to retry."""
    details = {"type": "LoginThrottled", "retry_after": retry_after}
    info = ErrorInfo(code=ErrorCode.UNAUTHORIZED, message=message, details=details)
    return error_response(info, 429, {"Retry-After": str(retry_after)})


def login_required(message: str, page: bool = False) -> JSONResponse:
    """401 with the challenge, so that a browser or curl asks for the broker credentials
    (not for the explorer page's own requests)."""
    info = ErrorInfo(
        code=ErrorCode.UNAUTHORIZED, message=message, details={"type": "LoginRequired"}
    )
    return error_response(info, 401, None if page else {"WWW-Authenticate": LOGIN_REALM})
