"""From a request message to its reply, independent of AMQP.

Admission (size, protocol, caller, deadline) comes first, then method lookup, JSON parsing,
parameter validation (the `@rpc` signature's model), the session, the call, and the result's
serialisation. Every failure becomes a structured error reply here, in one place.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from typing import Any

import orjson
from pydantic import ValidationError

from orbit_mq.errors import (
    InternalError,
    InvalidRequest,
    MethodNotFound,
    NotFound,
    OperationTimeout,
    PayloadTooLarge,
    RemoteError,
    SessionNotFound,
    Unauthorized,
    invalid_params,
)
from orbit_mq.protocol import BATCH_TYPE, REPLY_TO, SUPPORTED_PROTOCOLS, BatchCall
from orbit_mq.rpc import CallContext, RpcSpec, Session
from orbit_mq.shorten import shorten
from orbit_mq.wire import (
    Request,
    batch_item,
    batch_reply_body,
    error_body,
    parse_batch,
    success_body,
)
from orbit_mq.workers.logs import RefusalLog, bounded_logger
from orbit_mq.workers.ownership import serving
from orbit_mq.workers.plugin import Plugin

log = bounded_logger("orbit_mq.endpoint")

# reply_to, correlation_id, body, message type
ReplySink = Callable[[str, str | None, bytes, str | None], Awaitable[None]]


def _now_ms() -> int:
    return int(time.time() * 1000)


class Dispatcher:
    """Serves the requests of one plugin."""

    def __init__(
        self,
        plugin: Plugin,
        *,
        allowed_users: frozenset[str],
        max_message_size: int,
        executor: Executor | None = None,
        pool: str | None = None,
    ) -> None:
        self.plugin = plugin
        self.pool = pool
        self.allowed_users = allowed_users
        self.max_message_size = max_message_size
        self.executor = executor
        self.label = plugin.name
        self._running: dict[tuple[str, str], asyncio.Future[bytes]] = {}  # (user, message_id)
        self._refusals = RefusalLog(log)

    async def handle(self, request: Request, send: ReplySink) -> None:
        """Answer one request message; never raises for anything the message contains."""
        if not request.reply_to or not request.reply_to.startswith(REPLY_TO):
            # Answering any other address would let a caller make this endpoint write into
            # queues the caller itself may not write to.
            self._refusals.warning(
                request.user,
                "%s: dropped a %r request with reply_to %r (message_id=%s): only direct "
                "reply-to addresses (%s) are answered",
                self.label,
                request.method,
                request.reply_to,
                request.message_id,
                REPLY_TO,
            )
            return
        try:
            self._admit(request)
            if request.method == BATCH_TYPE:
                await self._handle_batch(request, send)
                return
            body = await self._answer_one(
                request.method,
                request.body,
                request.user or "",
                request.session,
                request.message_id,
                request.deadline_ms,
            )
        except RemoteError as error:
            body = error_body(error)
        await send(request.reply_to, request.correlation_id, body, None)

    async def refuse(self, request: Request, send: ReplySink, error: RemoteError) -> None:
        """Answer `request` (every call of a batch) with `error`."""
        if request.reply_to and request.reply_to.startswith(REPLY_TO):
            await send(request.reply_to, request.correlation_id, error_body(error), None)

    def _admit(self, request: Request) -> None:
        size = len(request.body)
        if size > self.max_message_size:
            raise PayloadTooLarge(
                f"request of {size} bytes exceeds the {self.max_message_size}-byte limit; "
                "send large data in chunks (staging plugin)",
                {"size": size, "limit": self.max_message_size},
            )
        if request.protocol and request.protocol.split(".")[0] not in SUPPORTED_PROTOCOLS:
            raise InvalidRequest(
                f"protocol version {request.protocol!r} is not supported; "
                f"this endpoint speaks {', '.join(SUPPORTED_PROTOCOLS)}",
                {"supported": list(SUPPORTED_PROTOCOLS)},
            )
        if request.user not in self.allowed_users:
            self.plugin.context.ownership.audit(
                "refused",
                request.user or "",
                f"{self.label}.{request.method}",
                "endpoint",
                [self.plugin.context.endpoint],
            )
            raise Unauthorized(
                f"user {request.user!r} may not use this endpoint"
                if request.user
                else "request has no user_id property; set it to your broker user",
                {"user": request.user},
            )

    async def _answer_one(
        self,
        method: str | None,
        params: bytes | dict[str, Any],
        user: str,
        session_id: str | None,
        message_id: str | None,
        deadline_ms: int | None,
    ) -> bytes:
        """The reply body of one call, success or error."""
        try:
            if deadline_ms is not None and deadline_ms < _now_ms():
                raise OperationTimeout(
                    f"request expired {_now_ms() - deadline_ms} ms before it could run; "
                    "it was not executed",
                    {"deadline": deadline_ms},
                )
            spec = self._lookup(method)
            call = functools.partial(
                self._run, spec, params, user, session_id, message_id, deadline_ms
            )
            if spec.dedupe and message_id:
                return await self._once(user, message_id, call)
            return await call()
        except RemoteError as error:
            if isinstance(error, InvalidRequest | MethodNotFound):
                self._refusals.warning(user, "%s.%s: %s", self.label, method, str(error))
            if self.pool is not None and _elsewhere_maybe(error):
                # What this member does not have another member of its pool may: the caller
                # asks them (PluginProxy._elsewhere_in_pool, orbit_mq/proxy.py).
                error.details.update(pool=self.pool, member=self.plugin.context.endpoint)
            return error_body(error)

    async def _run(
        self,
        spec: RpcSpec,
        params: bytes | dict[str, Any],
        user: str,
        session_id: str | None,
        message_id: str | None,
        deadline_ms: int | None,
    ) -> bytes:
        arguments = self._validate(spec, params)
        session = self._session(spec, session_id, user)
        ctx = CallContext(
            endpoint=self.plugin.context.endpoint,
            plugin=self.plugin.name,
            method=spec.name,
            user=user,
            message_id=message_id,
            deadline_ms=deadline_ms,
            session=session,
        )
        result = await self._invoke(spec, arguments, ctx)
        return self._serialise(spec, result)

    async def _once(self, user: str, message_id: str, run: Callable[[], Awaitable[bytes]]) -> bytes:
        """Run a dedupe method once per caller and message_id: a repeat gets the stored reply,
        and a repeat arriving while the first still runs waits for its reply. Another user's
        repeat of the same message_id is a call of its own."""
        journal = self.plugin.context.journal
        stored = journal.stored_reply(self.label, user, message_id)
        if stored is not None:
            log.info("%s: answered repeated message %s from the journal", self.label, message_id)
            return stored
        key = (user, message_id)
        running = self._running.get(key)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._running[key] = future
        try:
            body = await run()  # a success: errors raise (they may be transient: run again)
            await journal.store_reply(self.label, user, message_id, body)
            future.set_result(body)
            return body
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here; a waiting repeat re-raises it
            raise
        finally:
            del self._running[key]

    def _lookup(self, method: str | None) -> RpcSpec:
        spec = self.plugin.rpc_methods.get(method or "")
        if spec is None:
            methods = sorted(self.plugin.rpc_methods)
            raise MethodNotFound(
                f"plugin {self.label!r} has no method {shorten(method)!r}; it has: "
                f"{', '.join(methods)}",
                {"method": shorten(method), "methods": methods},
            )
        return spec

    def _validate(self, spec: RpcSpec, params: bytes | dict[str, Any]) -> dict[str, Any]:
        if isinstance(params, bytes | bytearray):
            try:
                params = orjson.loads(params) if params.strip() else {}
            except orjson.JSONDecodeError as exc:
                raise InvalidRequest(
                    f"request body is not valid JSON ({shorten(str(exc))}); send a JSON object "
                    "of parameters",
                    {"reason": "malformed_json"},
                ) from None
        if not isinstance(params, dict):
            raise InvalidRequest(
                f"request body must be a JSON object of parameters, not {type(params).__name__}",
                {"reason": "not_an_object"},
            )
        try:
            model = spec.params.model_validate(params)
        except ValidationError as exc:
            raise invalid_params(f"{self.label}.{spec.name}", exc) from None
        return dict(model)

    def _session(self, spec: RpcSpec, session_id: str | None, user: str) -> Session | None:
        """One rule for every method: a request that names a session must name a live one of
        its caller (any use resets its idle clock); a method that needs one refuses without."""
        method = f"{self.label}.{spec.name}"
        session = self.plugin.sessions.use(session_id, user, method) if session_id else None
        if session is None and spec.session_required:
            raise SessionNotFound(
                f"{self.label}.{spec.name} needs a session: call register_session and send "
                "its session_id in the orbit-session header",
                {"session": None},
            )
        return session if spec.session_param is not None else None

    async def _invoke(self, spec: RpcSpec, arguments: dict[str, Any], ctx: CallContext) -> Any:
        if spec.session_param is not None:
            arguments[spec.session_param] = ctx.session
        if spec.context_param is not None:
            arguments[spec.context_param] = ctx
        try:
            with serving(ctx):  # what the method runs learns its caller from current_call()
                if spec.is_async:
                    return await spec.func(self.plugin, **arguments)
                call = functools.partial(spec.func, self.plugin, **arguments)
                run = functools.partial(contextvars.copy_context().run, call)
                return await asyncio.get_running_loop().run_in_executor(self.executor, run)
        except RemoteError:
            raise
        except Exception as exc:
            log.exception("%s.%s failed", self.label, spec.name)
            raise InternalError(
                f"{self.label}.{spec.name} failed: {type(exc).__name__}: {exc}; "
                "see the endpoint log",
                {"exception": type(exc).__name__},
            ) from exc

    def _serialise(self, spec: RpcSpec, result: Any) -> bytes:
        try:
            payload = spec.result.dump_json(result)
        except Exception as exc:
            log.exception("%s.%s returned an unserialisable result", self.label, spec.name)
            raise InternalError(
                f"{self.label}.{spec.name} returned a result that is not JSON: {exc}"
            ) from exc
        if len(payload) > self.max_message_size:
            raise InternalError(
                f"{self.label}.{spec.name} result is {len(payload)} bytes, over the "
                f"{self.max_message_size}-byte limit",
                {"size": len(payload), "limit": self.max_message_size},
            )
        return success_body(payload)

    async def _handle_batch(self, request: Request, send: ReplySink) -> None:
        """Run coalesced calls concurrently; answer each group that finishes together at once."""
        assert request.reply_to is not None
        batch = parse_batch(request.body)
        user = request.user or ""
        pending = {
            asyncio.ensure_future(self._answer_item(call, user, request.session))
            for call in batch.calls
        }
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            body = batch_reply_body([task.result() for task in done])
            await send(request.reply_to, request.correlation_id, body, BATCH_TYPE)

    async def _answer_item(self, call: BatchCall, user: str, session: str | None) -> bytes:
        """One BatchReplyItem as JSON: the call's reply body with its id spliced in."""
        body = await self._answer_one(
            call.method,
            call.params,
            user,
            call.session or session,
            call.message_id,
            call.deadline,
        )
        return batch_item(call.id, body)


def _elsewhere_maybe(error: RemoteError) -> bool:
    """Whether another pool member may have what this one did not find (a job, a task, a
    transfer); not a method or a session, which every member has alike or the caller's
    session pins."""
    return isinstance(error, NotFound) and not isinstance(error, MethodNotFound | SessionNotFound)
