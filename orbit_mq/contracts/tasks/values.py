"""Values across the wire, for both sides: results are JSON where they are JSON (None, bools,
numbers, strings, and lists and str-keyed dicts of them), otherwise cloudpickled; callables and
non-JSON arguments are cloudpickled, all in base64.

A tuple is not JSON here (it would come back a list), nor a float that is not finite.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from typing import Any

import orjson

from orbit_mq.contracts.tasks.models import Encoding

MAX_DEPTH = 64  # deeper values are pickled rather than walked


def is_json(value: Any, depth: int = 0) -> bool:
    """Whether `value` survives a JSON round trip unchanged (types included)."""
    if depth > MAX_DEPTH:
        return False
    if value is None or isinstance(value, bool | int | str):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if type(value) is list:
        return all(is_json(item, depth + 1) for item in value)
    if type(value) is dict:
        return all(isinstance(k, str) and is_json(v, depth + 1) for k, v in value.items())
    return False


def encode_value(value: Any) -> tuple[Encoding, bytes]:
    """A result as the endpoint keeps it: its encoding and bytes (JSON text or a pickle)."""
    if is_json(value):
        try:
            return "json", orjson.dumps(value)
        except TypeError:  # an int beyond 64 bits
            pass
    return "pickle", pickle_bytes(value)


def decode_value(encoding: Encoding, data: bytes) -> Any:
    if encoding == "json":
        return orjson.loads(data)
    return unpickle_bytes(data)


def inline_value(encoding: Encoding, data: bytes) -> Any:
    """A kept result as a TaskStatus carries it: the value itself, or base64 of the pickle."""
    return orjson.loads(data) if encoding == "json" else base64.b64encode(data).decode()


def value_of(encoding: Encoding | None, return_value: Any) -> Any:
    """What `inline_value` made, as the value again."""
    if encoding == "pickle":
        return unpickle_bytes(base64.b64decode(return_value))
    return return_value


def pickle_bytes(value: Any) -> bytes:
    import cloudpickle

    data: bytes = cloudpickle.dumps(value)
    return data


def unpickle_bytes(data: bytes) -> Any:
    import pickle

    return pickle.loads(data)


def pickled(value: Any) -> str:
    """`value` cloudpickled, in base64 (pickled_function, pickled_arguments)."""
    return base64.b64encode(pickle_bytes(value)).decode()


def unpickled(text: str) -> Any:
    return unpickle_bytes(base64.b64decode(text, validate=True))


def import_path(func: Callable[..., Any]) -> str | None:
    """`func` as "module:name" when importing that gives `func` back (outside `__main__`)."""
    module, qualname = getattr(func, "__module__", None), getattr(func, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname:
        return None
    return f"{module}:{qualname}"
