"""`@rpc`: one annotated method is one remote operation, for the endpoint and the SDK alike.

A plugin's *contract* (orbit_mq/contracts/) declares each operation once, as a method stub
marked `@rpc`, with its parameters, result type, docstring and terms (session, dedupe). The
endpoint's plugin class implements the stubs; `build_specs` turns every marked method into an
`RpcSpec` whose pydantic models validate the parameters, serialise the result and produce the
JSON Schemas. The SDK builds the same specs from the contract alone. This module imports
nothing of the endpoint runtime.

An implementation receives what the endpoint knows about a call through keyword-only
parameters typed `CallContext` or `Session` (or `Session | None`) with the default
`INJECTED`; they are never on the wire, and an implementation with them still matches its
contract's signature for mypy.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import typing
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar, overload

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model

from orbit_mq.numbers import no_booleans
from orbit_mq.protocol import SessionInfo, SessionStatus

F = TypeVar("F", bound=Callable[..., Any])
P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S")

SessionUse = Literal["required", "optional"]
_MARK = "__orbit_rpc__"


class _Injected:
    def __repr__(self) -> str:
        return "INJECTED"


INJECTED: Any = _Injected()  # the default of parameters the endpoint fills in


@dataclass(frozen=True)
class CallContext:
    """Who is calling and on what terms; an implementation gets it by declaring a parameter of
    this type (`ctx: CallContext = INJECTED`)."""

    endpoint: str
    plugin: str
    method: str
    user: str
    message_id: str | None = None
    deadline_ms: int | None = None
    session: Session | None = None


@dataclass(eq=False)
class Session:
    """Per-client state on one plugin (`session: Session = INJECTED`)."""

    id: str
    plugin: str
    user: str
    ttl: float
    created: float
    last_used: float
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def expires_at(self) -> float:
        return self.last_used + self.ttl

    def info(self, status: SessionStatus = "active", endpoint: str | None = None) -> SessionInfo:
        return SessionInfo(
            endpoint=endpoint,
            session_id=self.id,
            plugin=self.plugin,
            user=self.user,
            ttl=self.ttl,
            expires=datetime.fromtimestamp(self.expires_at, UTC),
            status=status,
        )


@dataclass(frozen=True)
class RpcSpec:
    name: str  # on the wire
    attr: str  # the Python method
    func: Callable[..., Any]  # the implementation (in a contract alone: the stub)
    doc: str
    params: type[BaseModel]
    result: TypeAdapter[Any]
    is_async: bool
    session: SessionUse | None
    session_param: str | None  # the implementation's parameter receiving the Session
    context_param: str | None  # … and the CallContext
    dedupe: bool = False

    @property
    def session_required(self) -> bool:
        return self.session == "required"

    def params_schema(self) -> dict[str, Any]:
        return self.params.model_json_schema()

    def result_schema(self) -> dict[str, Any]:
        return self.result.json_schema()


@dataclass(frozen=True)
class _Marks:
    name: str | None
    dedupe: bool
    session: SessionUse | None


@overload
def rpc(func: F, /) -> F: ...
@overload
def rpc(
    *, name: str | None = None, dedupe: bool = False, session: SessionUse | None = None
) -> Callable[[F], F]: ...
def rpc(
    func: F | None = None,
    /,
    *,
    name: str | None = None,
    dedupe: bool = False,
    session: SessionUse | None = None,
) -> F | Callable[[F], F]:
    """Mark a method as callable over the wire (optionally under another name).

    `session="required"` refuses calls without a session, `"optional"` uses one when the call
    names it. `dedupe=True` keeps the reply in the endpoint's journal by message_id: a request
    repeating a message_id gets that reply instead of running again, so a client may retry it
    (for operations that must not happen twice). On the endpoint `async def` methods run on the
    event loop; `def` methods, and `@in_thread` ones, in a worker thread.
    """

    def mark(f: F) -> F:
        setattr(f, _MARK, _Marks(name, dedupe, session))
        return f

    return mark(func) if func is not None else mark


def in_thread(
    func: Callable[Concatenate[S, P], R],
) -> Callable[Concatenate[S, P], Coroutine[Any, Any, R]]:
    """Implement an async contract method with blocking code: it runs in a worker thread (the
    endpoint's pool where the plugin has one), so it never stalls other requests."""

    @functools.wraps(func)
    async def threaded(self: S, /, *args: P.args, **kwargs: P.kwargs) -> R:
        context = contextvars.copy_context()
        call = functools.partial(context.run, func, self, *args, **kwargs)
        executor = getattr(getattr(self, "context", None), "executor", None)
        return await asyncio.get_running_loop().run_in_executor(executor, call)

    return threaded


def _session_use(annotation: Any) -> SessionUse | None:
    if annotation is Session:
        return "required"
    args = typing.get_args(annotation)
    if Session in args and type(None) in args and len(args) == 2:
        return "optional"
    return None


@dataclass
class _Signature:
    fields: dict[str, Any]
    session_param: str | None = None
    session_use: SessionUse | None = None
    context_param: str | None = None


def _read(owner: type, func: Callable[..., Any]) -> _Signature:
    """The wire parameters of `func` and its injected ones."""
    hints = typing.get_type_hints(func, include_extras=True)
    read = _Signature(fields={})
    for pname, param in list(inspect.signature(func).parameters.items())[1:]:  # skip self
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"@rpc {owner.__name__}.{func.__name__}: *args/**kwargs not allowed")
        annotation = hints.get(pname, Any)
        use = _session_use(annotation)
        if use is not None:
            read.session_param, read.session_use = pname, use
        elif annotation is CallContext:
            read.context_param = pname
        else:
            default = ... if param.default is param.empty else param.default
            read.fields[pname] = (no_booleans(annotation), default)
    return read


def build_spec(owner: type, attr: str, stub: Callable[..., Any], marks: _Marks) -> RpcSpec:
    """The spec of `owner.attr`: wire parameters, result and doc from the marked `stub` (the
    contract's definition), injected parameters from the implementation."""
    wire_name = marks.name or attr
    definition = _read(owner, stub)
    implementation = getattr(owner, attr)
    body = definition if implementation is stub else _read(owner, implementation)
    if body is not definition and list(body.fields) != list(definition.fields):
        raise TypeError(
            f"{owner.__name__}.{attr} takes {list(body.fields)}, but its contract defines "
            f"{list(definition.fields)}"
        )
    session = marks.session or definition.session_use or body.session_use
    if body.session_param is not None and session is None:
        raise TypeError(f"{owner.__name__}.{attr} takes a Session: mark it @rpc(session=...)")
    params = create_model(
        f"{owner.__name__}_{wire_name}_params",
        __config__=ConfigDict(extra="forbid"),
        **definition.fields,
    )
    return RpcSpec(
        name=wire_name,
        attr=attr,
        func=implementation,
        doc=inspect.getdoc(stub) or "",
        params=params,
        result=TypeAdapter(typing.get_type_hints(stub, include_extras=True).get("return", Any)),
        is_async=inspect.iscoroutinefunction(implementation),
        session=session,
        session_param=body.session_param,
        context_param=body.context_param,
        dedupe=marks.dedupe,
    )


def build_specs(cls: type) -> dict[str, RpcSpec]:
    """Every remote method of a contract or plugin class: the `@rpc` stubs of its classes
    (the most derived definition of each), each with the implementation `cls` has for it."""
    marked: dict[str, tuple[Callable[..., Any], _Marks]] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            marks = getattr(value, _MARK, None)
            if isinstance(marks, _Marks):
                # A contract may redefine an inherited method (more parameters): the most
                # derived definition wins; implementations are not marked.
                marked[attr] = (value, marks)
    specs = [build_spec(cls, attr, stub, marks) for attr, (stub, marks) in marked.items()]
    return {spec.name: spec for spec in specs}


class MethodInfo(BaseModel):
    name: str
    doc: str
    params: dict[str, Any]
    result: dict[str, Any]
    session: bool = Field(
        description="Session-scoped: the call uses the session named in orbit-session."
    )
    session_required: bool = Field(description="The call is refused without a session.")
    dedupe: bool = Field(
        description="Runs once per message_id: a repeat with the same message_id gets the "
        "first reply, so retrying with it is safe."
    )


class PluginDescription(BaseModel):
    name: str
    version: str
    methods: list[MethodInfo]


def describe(name: str, version: str, specs: dict[str, RpcSpec]) -> PluginDescription:
    return PluginDescription(
        name=name,
        version=version,
        methods=[
            MethodInfo(
                name=spec.name,
                doc=spec.doc,
                params=spec.params_schema(),
                result=spec.result_schema(),
                session=spec.session is not None,
                session_required=spec.session_required,
                dedupe=spec.dedupe,
            )
            for spec in sorted(specs.values(), key=lambda s: s.name)
        ],
    )
