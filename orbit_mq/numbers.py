"""Numbers that refuse booleans, and sizes written as people write them.

JSON `true` is not a number, but pydantic's lax mode reads it as 1 for `int` and `float`
fields. `no_booleans` rewrites an annotation so that every `int` and `float` in it (inside
`Annotated`, unions, lists, dicts, tuples) refuses a boolean with a clear message; every other
lax conversion stays as it was. `@rpc` applies it to every parameter; models that requests
carry use `NotBool` on their numeric fields.
"""

from __future__ import annotations

import copy
import re
import types
import typing
from typing import Annotated, Any, Union

from pydantic import BeforeValidator
from pydantic.fields import FieldInfo


def _refuse_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a number is expected, not a boolean")
    return value


NotBool = BeforeValidator(_refuse_bool)

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def parse_size(text: str) -> int:
    """Bytes in `"4M"`, `"512K"`, `"2MiB"`, `"10GB"`, `"1048576"` (binary units); ValueError
    for anything else or a size that is not positive."""
    match = _SIZE.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a size such as 512K, 1M, 10G or 1048576")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


_CONTAINERS = (list, set, frozenset, tuple, dict)


def no_booleans(annotation: Any) -> Any:
    """`annotation` with NotBool on every int and float it contains."""
    if annotation in (int, float):
        return Annotated[annotation, NotBool]
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        base, metadata = args[0], annotation.__metadata__
        if base in (int, float):  # NotBool last: constraints before it keep their schema
            return Annotated[(base, *metadata, NotBool)]
        if typing.get_origin(base) in (Union, types.UnionType):
            return _constrained_union(base, metadata)
        return Annotated[(no_booleans(base), *metadata)]
    if origin in (Union, types.UnionType):
        return Union[tuple(no_booleans(arg) for arg in args)]  # noqa: UP007
    if origin in _CONTAINERS and args:
        return origin[tuple(no_booleans(arg) if arg is not Ellipsis else arg for arg in args)]
    return annotation


def _constrained_union(union: Any, metadata: tuple[Any, ...]) -> Any:
    """`Annotated[int | None, Field(gt=0)]` as `Annotated[int, Gt(0), NotBool] | None` with
    the field's other settings outside: pydantic would otherwise publish the constraint of a
    validated member as "gt", which is not JSON Schema, instead of "exclusiveMinimum"."""
    constraints: list[Any] = []
    outer: list[Any] = []
    for item in metadata:
        if isinstance(item, FieldInfo):
            constraints.extend(item.metadata)
            item = copy.copy(item)
            item.metadata = []
            outer.append(item)
        else:
            constraints.append(item)
    members = []
    for member in typing.get_args(union):
        if member in (int, float):
            members.append(Annotated[(member, *constraints, NotBool)])
        elif member is type(None) or not constraints:
            members.append(no_booleans(member))
        else:  # a constraint on a non-numeric member (a length, a pattern): kept as it was
            return Annotated[(no_booleans(union), *metadata)]
    rewritten: Any = Union[tuple(members)]  # noqa: UP007
    return Annotated[(rewritten, *outer)] if outer else rewritten
