"""The OpenAPI 3.1 document of the HTTP API (`GET /api/v1/openapi.json`), made from the same
contracts and pydantic models as schemas/ (`orbit-mq schemas`), so the two cannot drift: one
operation per installed plugin method, with the parameter and result schemas `describe`
gives, plus the generic call, the psij conveniences, the event stream and the login routes.
Models become `components/schemas` entries (`{plugin}.{Model}` for a plugin's own).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, TypeAdapter

from orbit_mq import __version__
from orbit_mq.contract import Contract
from orbit_mq.contracts import installed_contracts
from orbit_mq.contracts.tasks import Tasks
from orbit_mq.protocol import NAME_PATTERN, EndpointInfo, ErrorCode, ErrorReply, Event
from orbit_mq.rpc import PluginDescription, RpcSpec
from orbit_mq.web.errors import STATUS
from orbit_mq.web.hooks import WebhookRequest
from orbit_mq.web.identity import FAILED_LIMIT, FAILED_WINDOW
from orbit_mq.web.login import LoginRequest, SessionInfo
from orbit_mq.web.sessions import COOKIE, CSRF_HEADER, SECURE_COOKIE
from orbit_mq.web.shortcuts import SHORTCUTS, Shortcut
from orbit_mq.web.taskhooks import HOOK, SUBMIT, TasksWebhookRequest
from orbit_mq.webhooks import BatchWebhookInfo, WebhookInfo

API = "/api/v1"
REFS = "#/components/schemas/"
JSON = "application/json"
SSE = "text/event-stream"
ENDPOINT_PATH = f"{API}/endpoints/{{endpoint}}"
OTHERWISE = "default"  # the response of every status not listed
CALL_ERRORS = (
    ErrorCode.INVALID_REQUEST,
    ErrorCode.NOT_FOUND,
    ErrorCode.UNAUTHORIZED,
    ErrorCode.UNAVAILABLE,
    ErrorCode.TIMEOUT,
)


class Components:
    """`components/schemas`, filled as schemas with `$defs` are added."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}

    def _take(self, schema: dict[str, Any], prefix: str) -> dict[str, Any]:
        for name, definition in schema.pop("$defs", {}).items():
            known = self.schemas.setdefault(prefix + name, definition)
            if known != definition:
                raise ValueError(f"two different schemas named {prefix}{name} in the document")
        return schema

    def model(self, model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
        """A `$ref` to `model`, with it and its parts in the components."""
        schema = model.model_json_schema(ref_template=REFS + prefix + "{model}")
        self.schemas.setdefault(prefix + model.__name__, self._take(schema, prefix))
        return {"$ref": REFS + prefix + model.__name__}

    def result(self, spec: RpcSpec, prefix: str) -> dict[str, Any]:
        adapter: TypeAdapter[Any] = spec.result
        return self._take(adapter.json_schema(ref_template=REFS + prefix + "{model}"), prefix)

    def params(self, spec: RpcSpec, prefix: str) -> dict[str, Any]:
        schema = spec.params.model_json_schema(ref_template=REFS + prefix + "{model}")
        return self._take(schema, prefix)


def _content(schema: dict[str, Any], media: str = JSON) -> dict[str, Any]:
    return {"content": {media: {"schema": schema}}}


def _responses(ok: dict[str, Any], *codes: ErrorCode, media: str = JSON) -> dict[str, Any]:
    error = _content({"$ref": REFS + "ErrorReply"})
    out: dict[str, Any] = {"200": {"description": "Success", **_content(ok, media)}}
    out.update({str(STATUS[code]): {"description": code.value, **error} for code in codes})
    out["401"] = {"description": "Not logged in: HTTP Basic or the session cookie", **error}
    out["429"] = {
        "description": f"The user name was refused {FAILED_LIMIT} times within "
        f"{FAILED_WINDOW:.0f} s: retry after the Retry-After header's seconds",
        **error,
    }
    out[OTHERWISE] = {"description": "An error, as on the wire", **error}
    return out


def _param(name: str, where: str, schema: dict[str, Any], text: str = "") -> dict[str, Any]:
    param = {"name": name, "in": where, "required": where == "path", "schema": schema}
    if text:
        param["description"] = text
    return param


NAME = {"type": "string", "pattern": NAME_PATTERN}
ENDPOINT = _param("endpoint", "path", NAME, "An endpoint's name.")
PLUGIN = _param("plugin", "path", NAME, "A plugin's name.")
METHOD = _param("method", "path", {"type": "string"}, "A method's name.")


def _operation(op_id: str, tag: str, summary: str, **parts: Any) -> dict[str, Any]:
    return {"operationId": op_id, "tags": [tag], "summary": summary, **parts}


def _method_operation(c: Components, contract: type[Contract], spec: RpcSpec) -> dict[str, Any]:
    prefix = f"{contract.name}."
    summary = (spec.doc.splitlines() or [spec.name])[0]
    body = {"required": True, **_content(c.params(spec, prefix))}
    responses = _responses(c.result(spec, prefix), *CALL_ERRORS)
    operation = _operation(
        f"{contract.name}.{spec.name}",
        contract.name,
        summary,
        description=spec.doc,
        parameters=[ENDPOINT],
        requestBody=body,
        responses=responses,
    )
    return {"post": operation}


def _shortcut_operation(c: Components, shortcut: Shortcut) -> dict[str, Any]:
    prefix = f"{shortcut.plugin}."
    fields = c.params(shortcut.spec, prefix)["properties"]
    parameters = [ENDPOINT] + [
        _param(name, "path", {"type": "string"}, "A job's id.") for name in shortcut.path_names()
    ]
    for name in shortcut.query_names():
        parameters.append(_param(name, "query", fields[shortcut.renamed.get(name, name)]))
    operation = _operation(
        shortcut.operation_id,
        "jobs",
        shortcut.summary,
        description=f"Calls {shortcut.plugin}.{shortcut.spec.name}.\n\n{shortcut.spec.doc}",
        parameters=parameters,
        responses=_responses(c.result(shortcut.spec, prefix), *CALL_ERRORS),
    )
    if shortcut.verb == "POST":
        body = fields[shortcut.body] if shortcut.body else {"type": "object"}
        operation["requestBody"] = {"required": shortcut.body is not None, **_content(body)}
    return {shortcut.verb.lower(): operation}


def _events_operation(c: Components) -> dict[str, Any]:
    c.model(Event)
    patterns = _param(
        "pattern",
        "query",
        {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "`{endpoint}.{plugin}.{topic}` (`*`: any one word, `#`: any); repeat for more.",
    )
    patterns.update(required=True, style="form", explode=True)
    last_id = _param(
        "Last-Event-ID", "header", {"type": "string"}, "The last id received: resume after it."
    )
    return _operation(
        "events.stream",
        "events",
        "The caller's events as server-sent events",
        description="Each event's `data` is an Event (components/schemas/Event), its `id` "
        "the position to resume after (`Last-Event-ID`); see docs/explorer.md.",
        parameters=[patterns, last_id],
        responses=_responses({"type": "string"}, ErrorCode.INVALID_REQUEST, media=SSE),
    )


def _login_paths(c: Components) -> dict[str, Any]:
    """The login routes: the login and the logout need no login (`security: []`)."""
    session = c.model(SessionInfo)
    error = _content({"$ref": REFS + "ErrorReply"})
    ended = {"204": {"description": "Logged out; the cookie is cleared"}}
    ended["403"] = {"description": f"Without the session's {CSRF_HEADER}", **error}
    ended[OTHERWISE] = {"description": "An error, as on the wire", **error}
    return {
        f"{API}/login": {
            "post": _operation(
                "session.login",
                "session",
                "Log in: a session cookie for a broker user and password",
                description="The broker checks the user and password. Answers the user and "
                f"the session's CSRF token (send it as {CSRF_HEADER} on state-changing "
                "calls) and sets the HttpOnly, SameSite=Strict session cookie.",
                security=[],
                requestBody={"required": True, **_content(c.model(LoginRequest))},
                responses=_responses(session, ErrorCode.INVALID_REQUEST, ErrorCode.UNAVAILABLE),
            )
        },
        f"{API}/logout": {
            "post": _operation(
                "session.logout",
                "session",
                "Log out: the cookie's session ends",
                security=[],
                requestBody={"required": False, **_content({"type": "object"})},
                responses=ended,
            )
        },
        f"{API}/session": {
            "get": _operation(
                "session.get",
                "session",
                "Who the caller is, and the session's CSRF token (null under HTTP Basic)",
                responses=_responses(session),
            )
        },
    }


def _fixed_paths(c: Components) -> dict[str, Any]:
    info, description = c.model(EndpointInfo), c.model(PluginDescription)
    listing = _responses({"type": "array", "items": info}, ErrorCode.UNAVAILABLE)
    call_body = {"required": False, **_content({"type": "object"})}
    return {
        f"{API}/endpoints": {
            "get": _operation("endpoints.list", "endpoints", "Live endpoints", responses=listing)
        },
        ENDPOINT_PATH: {
            "get": _operation(
                "endpoints.get",
                "endpoints",
                "One live endpoint's presence",
                parameters=[ENDPOINT],
                responses=_responses(info, ErrorCode.NOT_FOUND),
            )
        },
        f"{ENDPOINT_PATH}/{{plugin}}": {
            "get": _operation(
                "plugins.describe",
                "endpoints",
                "A plugin's methods with their parameter and result schemas",
                parameters=[ENDPOINT, PLUGIN],
                responses=_responses(description, ErrorCode.NOT_FOUND, ErrorCode.UNAVAILABLE),
            )
        },
        f"{ENDPOINT_PATH}/{{plugin}}/{{method}}": {
            "post": _operation(
                "plugins.call",
                "endpoints",
                "Call any plugin method with its JSON parameters",
                parameters=[ENDPOINT, PLUGIN, METHOD],
                requestBody=call_body,
                responses=_responses({}, *CALL_ERRORS),
            )
        },
        f"{API}/events": {"get": _events_operation(c)},
        f"{API}/openapi.json": {
            "get": _operation("openapi", "meta", "This document", responses=_responses({}))
        },
    }


def _webhook_paths(c: Components) -> dict[str, Any]:
    """The webhook routes (docs/explorer.md "Webhooks") and the tasks submission that
    registers one."""
    job, batch = c.model(WebhookInfo), c.model(BatchWebhookInfo)
    prefix = f"{Tasks.name}."
    submit = c.params(SUBMIT, prefix)
    submit["properties"][HOOK] = {**c.model(WebhookRequest), "description": "Optional."}
    submitted = {
        "allOf": [
            c.result(SUBMIT, prefix),
            {"type": "object", "properties": {HOOK: {"anyOf": [batch, {"type": "null"}]}}},
        ]
    }
    job_id = _param("job_id", "path", {"type": "string"}, "A job's id.")
    errors = (*CALL_ERRORS, ErrorCode.CONFLICT)
    return {
        f"{API}/webhooks": {
            "get": _operation(
                "webhooks.list",
                "webhooks",
                "The caller's webhooks (jobs', then task batches') with their state",
                responses=_responses(
                    {"type": "array", "items": {"anyOf": [job, batch]}}, ErrorCode.UNAVAILABLE
                ),
            )
        },
        f"{ENDPOINT_PATH}/jobs/{{job_id}}/webhook": {
            "post": _operation(
                "webhooks.job",
                "webhooks",
                "Deliver every state change of one of the caller's jobs to a URL, signed",
                parameters=[ENDPOINT, job_id],
                requestBody={"required": True, **_content(c.model(WebhookRequest))},
                responses=_responses(job, *CALL_ERRORS),
            )
        },
        f"{ENDPOINT_PATH}/tasks/webhook": {
            "post": _operation(
                "webhooks.tasks",
                "webhooks",
                "Deliver the state changes of tasks already submitted to a URL, as one batch",
                parameters=[ENDPOINT],
                requestBody={"required": True, **_content(c.model(TasksWebhookRequest))},
                responses=_responses(batch, *errors),
            )
        },
        f"{ENDPOINT_PATH}/tasks": {
            "post": _operation(
                f"{Tasks.name}.post.tasks",
                Tasks.name,
                "Submit tasks, optionally with a webhook for them as one batch",
                description=f"Calls {Tasks.name}.{SUBMIT.name} (its parameters, and `{HOOK}`: "
                "registered before the tasks are sent).\n\n" + SUBMIT.doc,
                parameters=[ENDPOINT],
                requestBody={"required": True, **_content(submit)},
                responses=_responses(submitted, *errors),
            )
        },
    }


def _plugin_paths(c: Components, contracts: list[type[Contract]]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for shortcut in SHORTCUTS:
        operations = paths.setdefault(f"{ENDPOINT_PATH}{shortcut.path}", {})
        operations.update(_shortcut_operation(c, shortcut))
    for contract in contracts:
        for spec in sorted(contract.rpc_methods.values(), key=lambda s: s.name):
            path = f"{ENDPOINT_PATH}/{contract.name}/{spec.name}"
            paths[path] = _method_operation(c, contract, spec)
    return paths


def openapi_document(contracts: list[type[Contract]] | None = None) -> dict[str, Any]:
    """The whole document for `contracts` (default: the installed plugins')."""
    c = Components()
    c.model(ErrorReply)
    paths = {**_fixed_paths(c), **_webhook_paths(c), **_login_paths(c)}
    installed = contracts if contracts is not None else installed_contracts()
    paths.update(_plugin_paths(c, installed))
    basic = {"type": "http", "scheme": "basic", "description": "A broker user and password."}
    session = {
        "type": "apiKey",
        "in": "cookie",
        "name": COOKIE,
        "description": f"The cookie of POST {API}/login (`{SECURE_COOKIE}` over HTTPS); "
        f"state-changing calls also need the session's {CSRF_HEADER} header.",
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "orbit_mq HTTP API",
            "version": __version__,
            "description": "Endpoints, plugins, jobs and events over HTTP (docs/explorer.md).",
        },
        "servers": [{"url": "/"}],
        "security": [{"basic": []}, {"session": []}],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(c.schemas.items())),
            "securitySchemes": {"basic": basic, "session": session},
        },
    }
