"""The handlers of /api/v1. Each gets the request and the caller's own `Connection` (see
`app.api`, which logs in, applies the CSRF rule and turns errors into the wire's error body).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from orbit_mq.client import Fabric
from orbit_mq.contract import Contract
from orbit_mq.errors import Conflict, EndpointNotFound, InvalidRequest
from orbit_mq.protocol import EndpointInfo, check_name
from orbit_mq.shorten import shorten
from orbit_mq.web.events import MAX_PATTERNS, MAX_STREAMS, Stream
from orbit_mq.web.identity import Connection
from orbit_mq.web.shortcuts import Shortcut

MAX_TIMEOUT = 600.0  # s a call may be given (`?timeout=`)
QUERY = {"reason": "invalid_query"}


class JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def name_of(request: Request, kind: str) -> str:
    value = str(request.path_params[kind])
    try:
        return check_name(kind, value)
    except ValueError as exc:
        raise EndpointNotFound(str(exc), endpoint=value) from None


async def json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"request body is not valid JSON ({shorten(str(exc))}); send a JSON object",
            {"reason": "malformed_json"},
        ) from None


def timeout_of(request: Request) -> float | None:
    text = request.query_params.get("timeout")
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise InvalidRequest(
            f"timeout must be a number of seconds, not {shorten(text)}", QUERY
        ) from None
    if not 0 < value <= MAX_TIMEOUT:
        raise InvalidRequest(f"timeout must be more than 0 and at most {MAX_TIMEOUT:g} s", QUERY)
    return value


# -- endpoints and plugins ----------------------------------------------------------------------


async def _info(fabric: Fabric, endpoint: str) -> EndpointInfo:
    infos = await fabric.endpoints()
    for info in infos:
        if info.endpoint == endpoint:
            return info
    online = ", ".join(info.endpoint for info in infos) or "none"
    raise EndpointNotFound(f"endpoint {endpoint!r} is not online; online: {online}", endpoint)


async def list_endpoints(request: Request, user: Connection) -> Response:
    infos = await user.fabric.endpoints()
    return JSON([info.model_dump(mode="json") for info in infos])


async def get_endpoint(request: Request, user: Connection) -> Response:
    info = await _info(user.fabric, name_of(request, "endpoint"))
    return JSON(info.model_dump(mode="json"))


async def describe_plugin(request: Request, user: Connection) -> Response:
    endpoint, plugin = name_of(request, "endpoint"), name_of(request, "plugin")
    info = await _info(user.fabric, endpoint)
    if plugin not in {p.name for p in info.plugins}:
        served = ", ".join(p.name for p in info.plugins)
        message = f"endpoint {endpoint!r} does not serve plugin {plugin!r}; it serves: {served}"
        raise EndpointNotFound(message, endpoint, plugin)
    contracts: dict[str, type[Contract]] = request.app.state.contracts
    contract = contracts.get(plugin)
    if contract is not None:
        return JSON(contract.description().model_dump(mode="json"))
    # a plugin none of the installed contracts describes: ask it
    described = await user.fabric.call(endpoint, plugin, "describe", {})
    return JSON(described)


# -- calls --------------------------------------------------------------------------------------


async def call_method(request: Request, user: Connection) -> Response:
    endpoint, plugin = name_of(request, "endpoint"), name_of(request, "plugin")
    method = str(request.path_params["method"])
    params = await json_body(request)
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise InvalidRequest(
            f"request body must be a JSON object of parameters, not {type(params).__name__}",
            {"reason": "not_an_object"},
        )
    result = await user.fabric.call(endpoint, plugin, method, params, timeout=timeout_of(request))
    return JSON(result)


def shortcut_handler(shortcut: Shortcut) -> Any:
    async def handle(request: Request, user: Connection) -> Response:
        endpoint = name_of(request, "endpoint")
        body = await json_body(request) if shortcut.body is not None else None
        path = {key: str(value) for key, value in request.path_params.items()}
        params = shortcut.params(path, dict(request.query_params), body)
        timeout = timeout_of(request)
        result = await user.fabric.call(
            endpoint, shortcut.plugin, shortcut.spec.name, params, timeout=timeout
        )
        return JSON(result)

    handle.__name__ = shortcut.operation_id.replace(".", "_")
    return handle


# -- events -------------------------------------------------------------------------------------


async def _stream(user: Connection, patterns: tuple[str, ...]) -> Stream:
    """The user's stream for `patterns`, listened to once more (a new one if needed)."""
    stream = user.streams.get(patterns)
    if stream is None or stream.ended:
        await _make_room(user)
        stream = Stream(user.fabric, patterns)
    await stream.attach()  # a bad pattern: ConfigError, before the stream is kept
    user.streams[patterns] = stream
    return stream


async def _make_room(user: Connection) -> None:
    """Keep at most MAX_STREAMS streams (and durable queues) per user: the oldest one nobody
    listens to goes; when all are listened to, the request is refused."""
    if len(user.streams) < MAX_STREAMS:
        return
    for patterns, stream in list(user.streams.items()):
        if stream.listeners == 0:
            del user.streams[patterns]
            await stream.retire()
            return
    raise Conflict(f"{MAX_STREAMS} event streams are open already; close one first")


async def events(request: Request, user: Connection) -> Response:
    patterns = tuple(sorted(set(request.query_params.getlist("pattern"))))
    if not patterns:
        message = "give at least one pattern: ?pattern={endpoint}.{plugin}.{topic}"
        raise InvalidRequest(message, QUERY)
    if len(patterns) > MAX_PATTERNS:
        raise InvalidRequest(f"at most {MAX_PATTERNS} patterns per stream", QUERY)
    stream = await _stream(user, patterns)
    after = stream.start_after(request.headers.get("last-event-id"))
    keep_alive: float = request.app.state.keep_alive

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in stream.frames(after, keep_alive):
                yield chunk
        finally:
            await stream.detach()
            user.touch()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body(), media_type="text/event-stream", headers=headers)


async def openapi(request: Request, user: Connection) -> Response:
    return JSON(request.app.state.openapi)
