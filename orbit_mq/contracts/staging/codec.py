"""Base64 for chunk data: URL-safe alphabet with padding on the way out, either alphabet in.

With `pybase64` installed (SIMD, ≈ 7-10 GB/s, releases the GIL) encoding and decoding cost
almost nothing; without it pydantic-core's codec is used (≈ 0.5-1 GB/s, holds the GIL),
which is still several times faster than the standard library's `binascii`.
"""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import ConfigDict, TypeAdapter

_PYDANTIC = TypeAdapter(bytes, config=ConfigDict(ser_json_bytes="base64", val_json_bytes="base64"))

_fast: Any
try:
    _fast = importlib.import_module("pybase64")
except ImportError:  # pragma: no cover - depends on the installation
    _fast = None

BACKEND = "pybase64" if _fast is not None else "pydantic-core"


def _encode_pydantic(data: bytes) -> str:
    text: str = _PYDANTIC.dump_python(data, mode="json")
    return text


def _decode_pydantic(text: str) -> bytes:
    data: bytes = _PYDANTIC.validate_python(text)
    return data


def _encode_fast(data: bytes) -> str:
    text: str = _fast.urlsafe_b64encode(data).decode("ascii")
    return text


def _decode_fast(text: str) -> bytes:
    urlsafe = "-" in text or "_" in text
    data: bytes = _fast.b64decode(text, altchars=b"-_" if urlsafe else None, validate=True)
    return data


encode_base64 = _encode_fast if _fast is not None else _encode_pydantic
encode_base64.__doc__ = "`data` as base64 text (URL-safe alphabet, padded)."
decode_base64 = _decode_fast if _fast is not None else _decode_pydantic
decode_base64.__doc__ = """Bytes from base64 text in either alphabet (standard `+/` or
URL-safe `-_`), padded; ValueError if it is not valid base64."""


def decoded(value: Any) -> Any:
    """A pydantic before-validator: base64 text becomes bytes, anything else passes."""
    return decode_base64(value) if isinstance(value, str) else value
