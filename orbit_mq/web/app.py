"""`create_app(settings)`: the HTTP API gateway as a Starlette application.

Every route under /api/v1 needs a broker user: HTTP Basic (`identity`) or the session cookie
of `POST /api/v1/login` (`login`, `sessions`); state-changing calls need `Content-Type:
application/json`, which a cross-site HTML form cannot send without the browser asking first,
and under a session its X-CSRF-Token too (CSRF). Errors are the wire's error body with the
status of its code (`errors.STATUS`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from orbit_mq.config import Settings
from orbit_mq.contract import Contract
from orbit_mq.contracts import installed_contracts
from orbit_mq.errors import OrbitError
from orbit_mq.protocol import ErrorCode
from orbit_mq.web import files, hooks, login, routes, taskhooks
from orbit_mq.web.errors import failure, problem
from orbit_mq.web.events import KEEP_ALIVE
from orbit_mq.web.identity import DEFAULT_IDLE, Connection, Users
from orbit_mq.web.openapi import API, openapi_document
from orbit_mq.web.sessions import Sessions, SessionTerms
from orbit_mq.web.shortcuts import SHORTCUTS
from orbit_mq.webhooks import SUBSCRIPTION

log = logging.getLogger("orbit_mq.web")
Handler = Callable[[Request, Connection], Awaitable[Response]]
STATIC = Path(__file__).resolve().parent / "static"  # resolved: an editable install links files


def api(handler: Handler, *, upload: bool = False) -> Callable[[Request], Awaitable[Response]]:
    """A route: the CSRF rules, the login (Basic or session), then `handler` as the caller,
    errors answered. An `upload` (a body of raw bytes) needs the X-Orbit-Upload header
    instead of JSON."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        refused = login.content_rule(request, upload)
        if refused is not None:
            return refused
        who = await login.caller(request)
        if isinstance(who, Response):
            return who
        request.state.caller = who
        user = who.connection
        try:
            return login.held(await handler(request, user), who, request.app.state.sessions)
        except OrbitError as exc:
            return failure(exc)
        finally:
            user.touch()

    return endpoint


def _routes() -> list[Route]:
    base = f"{API}/endpoints/{{endpoint}}"
    found = [
        Route(f"{API}/login", login.login, methods=["POST"]),
        Route(f"{API}/logout", login.logout, methods=["POST"]),
        Route(f"{API}/session", api(login.whoami), methods=["GET"]),
        Route(f"{API}/openapi.json", api(routes.openapi), methods=["GET"]),
        Route(f"{API}/events", api(routes.events), methods=["GET"]),
        Route(f"{API}/endpoints", api(routes.list_endpoints), methods=["GET"]),
        Route(f"{API}/webhooks", api(hooks.list_hooks), methods=["GET"]),
        Route(base, api(routes.get_endpoint), methods=["GET"]),
        Route(base + "/files", api(files.download), methods=["GET"]),
        Route(base + "/files", api(files.upload, upload=True), methods=["PUT"]),
        Route(base + "/jobs/{job_id}/webhook", api(hooks.register), methods=["POST"]),
        Route(base + "/tasks", api(taskhooks.submit), methods=["POST"]),
        Route(base + "/tasks/webhook", api(taskhooks.register), methods=["POST"]),
    ]
    # before the generic routes, which would take /jobs for a plugin's name
    for shortcut in SHORTCUTS:
        handler = api(routes.shortcut_handler(shortcut))
        found.append(Route(base + shortcut.path, handler, methods=[shortcut.verb]))
    found.append(Route(base + "/{plugin}", api(routes.describe_plugin), methods=["GET"]))
    found.append(Route(base + "/{plugin}/{method}", api(routes.call_method), methods=["POST"]))
    return found


async def _index(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def _page() -> list[BaseRoute]:
    """The explorer page: static files only (everything it shows comes from the API)."""
    return [Route("/", _index), Mount("/static", StaticFiles(directory=STATIC), name="static")]


async def _internal(request: Request, exc: Exception) -> Response:
    """A fault of the gateway itself: logged here, answered with the wire's internal error."""
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return problem(ErrorCode.INTERNAL, "the gateway failed; its log says why", 500)


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    code = ErrorCode.NOT_FOUND if status == 404 else ErrorCode.INVALID_REQUEST
    return problem(code, f"{request.method} {request.url.path}: {exc}", status)


def create_app(
    settings: Settings | None = None,
    *,
    idle: float = DEFAULT_IDLE,
    keep_alive: float = KEEP_ALIVE,
    contracts: list[type[Contract]] | None = None,
    webhooks: str | None = SUBSCRIPTION,
    sessions: SessionTerms | None = None,
    secure_cookie: bool | None = None,
) -> Starlette:
    """The gateway for the broker of `settings` (its URL's host, port, vhost and TLS options;
    each request logs in with its own user). `idle`: seconds a user's connection is kept
    after its last request; `keep_alive`: seconds between comments on a quiet event stream;
    `webhooks`: the name of the durable subscription webhooks are delivered from (None: no
    webhooks); `sessions`: how long login sessions last and how many there may be;
    `secure_cookie`: whether the session cookie is `Secure` (None: when the request came by
    HTTPS)."""
    settings = settings or Settings()
    users = Users(settings, idle)
    logins = Sessions(sessions)
    deliveries = hooks.Deliveries()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        reapers = [asyncio.create_task(users.reap()), asyncio.create_task(logins.reap())]
        if webhooks is not None:
            await deliveries.start(settings, webhooks)
        try:
            yield
        finally:
            await deliveries.close()
            for reaper in reapers:
                reaper.cancel()
                with suppress(asyncio.CancelledError):
                    await reaper
            logins.close()  # everyone is logged out: sessions live in this process only
            await users.close()

    app = Starlette(
        routes=[*_routes(), *_page()],
        lifespan=lifespan,
        exception_handlers={404: _http_error, 405: _http_error, Exception: _internal},
    )
    known = contracts if contracts is not None else installed_contracts()
    app.state.users = users
    app.state.sessions = logins
    app.state.secure_cookie = secure_cookie
    app.state.deliveries = deliveries
    app.state.keep_alive = keep_alive
    app.state.contracts = {**Contract.known, **{c.name: c for c in known}}
    app.state.openapi = openapi_document(known)
    return app
