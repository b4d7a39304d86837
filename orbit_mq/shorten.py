"""Bounding values that come from the wire before they reach a log line or an error message.

`Bounded` is a logging filter: on a logger it bounds what that logger emits, on a handler
everything the handler writes (the CLI puts it on its handler, so library logs are bounded
too).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

KEEP = 200  # characters of a long value that are kept
LINE_LIMIT = 1000  # characters per rendered log line


def shorten(value: Any, keep: int = KEEP) -> Any:
    """A long str or bytes cut to `keep` characters with its full length noted; anything else
    unchanged."""
    if isinstance(value, str | bytes | bytearray) and len(value) > keep:
        unit = "chars" if isinstance(value, str) else "bytes"
        head = value[:keep] if isinstance(value, str) else repr(bytes(value[:keep]))
        return f"{head}… ({len(value)} {unit})"
    return value


def shorten_text(text: str, limit: int) -> str:
    """`text` with every line cut to at most about `limit` characters."""
    if len(text) <= limit:
        return text
    return "\n".join(shorten(line, limit - 40) for line in text.split("\n"))


class Bounded(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, Mapping):
            record.args = {key: shorten(value) for key, value in record.args.items()}
        elif isinstance(record.args, tuple):
            record.args = tuple(shorten(value) for value in record.args)
        try:
            message = record.getMessage()
        except Exception:  # a malformed call: the handler reports it as logging does
            return True
        if len(message) > LINE_LIMIT:
            record.msg, record.args = shorten_text(message, LINE_LIMIT), None
        if record.exc_info and not record.exc_text:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = shorten_text(text, LINE_LIMIT)
        return True
