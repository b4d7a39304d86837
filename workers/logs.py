"""Endpoint logging that a caller cannot abuse.

Every logger of the endpoint runtime carries `Bounded`: values from requests are shortened
before they are rendered (a few hundred characters with their length noted), and no rendered
line exceeds `LINE_LIMIT`, tracebacks included. `RefusalLog` rate-limits warnings about
refused requests per caller, so one client cannot flood a login node's disk.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from orbit_mq.shorten import LINE_LIMIT, Bounded

__all__ = ["LINE_LIMIT", "Bounded", "RefusalLog", "bounded_logger"]


_BOUNDED = Bounded()


def bounded_logger(name: str) -> logging.Logger:
    """`logging.getLogger(name)` with the `Bounded` filter (added once)."""
    logger = logging.getLogger(name)
    if _BOUNDED not in logger.filters:
        logger.addFilter(_BOUNDED)
    return logger


@dataclass
class _Window:
    start: float
    logged: int = 0
    suppressed: int = 0


class RefusalLog:
    """Warnings about refused requests, at most `limit` per caller per `period` seconds; the
    number held back is reported when the caller's next window opens."""

    MAX_CALLERS = 1024  # windows kept; the oldest are forgotten

    def __init__(self, logger: logging.Logger, limit: int = 10, period: float = 60.0) -> None:
        self.logger = logger
        self.limit = limit
        self.period = period
        self._windows: OrderedDict[str, _Window] = OrderedDict()

    def warning(self, caller: str | None, message: str, *args: Any) -> bool:
        """Log the warning unless `caller` used up this window; whether it was logged."""
        key = caller or ""
        now = time.monotonic()
        window = self._windows.get(key)
        if window is None or now - window.start >= self.period:
            if window is not None and window.suppressed:
                self.logger.warning(
                    "%d more refusals of requests from user %r were not logged",
                    window.suppressed,
                    caller,
                )
            window = self._windows[key] = _Window(now)
            self._windows.move_to_end(key)
            while len(self._windows) > self.MAX_CALLERS:
                self._windows.popitem(last=False)
        if window.logged >= self.limit:
            window.suppressed += 1
            return False
        window.logged += 1
        self.logger.warning(message, *args)
        return True
