"""`@rpc`: one annotated method is one remote operation.

The decorator only marks the method; `build_specs` turns every marked method of a plugin
class into an `RpcSpec` whose pydantic models (built from the signature) validate the
parameters, serialise the result and produce the JSON Schemas in schemas/.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from pydantic import BaseModel, ConfigDict, TypeAdapter, create_model

from orbit_mq.numbers import no_booleans
from orbit_mq.protocol import SessionInfo, SessionStatus

F = TypeVar("F", bound=Callable[..., Any])

_MARK = "__orbit_rpc__"


@dataclass(frozen=True)
class CallContext:
    """Who is calling and on what terms; a method gets it by declaring a parameter of this type."""

    endpoint: str
    plugin: str
    method: str
    user: str
    message_id: str | None = None
    deadline_ms: int | None = None
    session: Session | None = None


@dataclass(eq=False)
class Session:
    """Per-client state on one plugin; a method that declares a `Session` parameter requires one."""

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

    def info(self, status: SessionStatus = "active") -> SessionInfo:
        from datetime import UTC, datetime

        return SessionInfo(
            session_id=self.id,
            plugin=self.plugin,
            user=self.user,
            ttl=self.ttl,
            expires=datetime.fromtimestamp(self.expires_at, UTC),
            status=status,
        )


@dataclass(frozen=True)
class RpcSpec:
    name: str
    func: Callable[..., Any]
    doc: str
    params: type[BaseModel]
    result: TypeAdapter[Any]
    is_async: bool
    session_param: str | None
    session_required: bool
    context_param: str | None
    dedupe: bool = False

    def params_schema(self) -> dict[str, Any]:
        return self.params.model_json_schema()

    def result_schema(self) -> dict[str, Any]:
        return self.result.json_schema()


@dataclass(frozen=True)
class _Marks:
    name: str | None
    dedupe: bool


@overload
def rpc(func: F, /) -> F: ...
@overload
def rpc(*, name: str | None = None, dedupe: bool = False) -> Callable[[F], F]: ...
def rpc(
    func: F | None = None, /, *, name: str | None = None, dedupe: bool = False
) -> F | Callable[[F], F]:
    """Mark a plugin method as callable over the wire (optionally under another name).

    `async def` methods run on the event loop; plain `def` methods run in a worker thread,
    so blocking library calls never stall other requests. With `dedupe=True` the reply is kept
    in the endpoint's journal by message_id, and a request carrying a message_id already seen
    gets that reply instead of running again (for operations that must not happen twice).
    """

    def mark(f: F) -> F:
        setattr(f, _MARK, _Marks(name or f.__name__, dedupe))
        return f

    return mark(func) if func is not None else mark


def _is_session(annotation: Any) -> tuple[bool, bool]:
    """(is a Session parameter, is it required)."""
    if annotation is Session:
        return True, True
    args = typing.get_args(annotation)
    if Session in args and type(None) in args and len(args) == 2:
        return True, False
    return False, False


def build_spec(owner: type, func: Callable[..., Any], marks: _Marks) -> RpcSpec:
    wire_name = marks.name or func.__name__
    hints = typing.get_type_hints(func, include_extras=True)
    signature = inspect.signature(func)
    fields: dict[str, Any] = {}
    session_param: str | None = None
    session_required = False
    context_param: str | None = None
    for pname, param in list(signature.parameters.items())[1:]:  # skip self
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise TypeError(f"@rpc {owner.__name__}.{func.__name__}: *args/**kwargs not allowed")
        annotation = hints.get(pname, Any)
        is_session, required = _is_session(annotation)
        if is_session:
            session_param, session_required = pname, required
            continue
        if annotation is CallContext:
            context_param = pname
            continue
        default = ... if param.default is param.empty else param.default
        fields[pname] = (no_booleans(annotation), default)
    params = create_model(
        f"{owner.__name__}_{wire_name}_params",
        __config__=ConfigDict(extra="forbid"),
        **fields,
    )
    result_type = hints.get("return", Any)
    return RpcSpec(
        name=wire_name,
        func=func,
        doc=inspect.getdoc(func) or "",
        params=params,
        result=TypeAdapter(result_type),
        is_async=inspect.iscoroutinefunction(func),
        session_param=session_param,
        session_required=session_required,
        context_param=context_param,
        dedupe=marks.dedupe,
    )


def build_specs(cls: type) -> dict[str, RpcSpec]:
    """Every remote method of a plugin class; an override of an `@rpc` method stays remote."""
    marked: dict[str, _Marks] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            marks = getattr(value, _MARK, None)
            if isinstance(marks, _Marks):
                marked[attr] = marks
    specs = [build_spec(cls, getattr(cls, attr), marks) for attr, marks in marked.items()]
    return {spec.name: spec for spec in specs}
