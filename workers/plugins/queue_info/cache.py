"""A small TTL cache for scheduler answers, where identical concurrent requests share one run.

Schedulers are shared, slow services: a burst of identical questions must cost one `squeue`,
not one per caller. Errors are not cached, so the next call tries again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

from orbit_mq.workers.logs import bounded_logger

T = TypeVar("T")

log = bounded_logger("orbit_mq.plugin.queue_info")


class TtlCache:
    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._values: dict[Hashable, tuple[float, Any]] = {}
        self._running: dict[Hashable, asyncio.Task[Any]] = {}
        self.runs = 0  # how many times a producer ran (for health figures and tests)

    def __len__(self) -> int:
        return len(self._values)

    def fresh(self, key: Hashable) -> bool:
        entry = self._values.get(key)
        return entry is not None and self.clock() < entry[0]

    async def get(
        self, key: Hashable, produce: Callable[[], Awaitable[T]], force: bool = False
    ) -> T:
        """The cached value of `key`, else `produce()`'s (shared with concurrent callers).

        `force` skips the cached value; it still joins a run already under way, which is
        as fresh as a new one would be.
        """
        if not force and self.fresh(key):
            value: T = self._values[key][1]
            return value
        task = self._running.get(key)
        if task is None:
            task = asyncio.create_task(self._fill(key, produce))
            task.add_done_callback(_retrieve)
            self._running[key] = task
        # A caller that gives up (cancelled) does not cancel the run others wait for.
        result: T = await asyncio.shield(task)
        return result

    async def _fill(self, key: Hashable, produce: Callable[[], Awaitable[T]]) -> T:
        try:
            self.runs += 1
            value = await produce()
            self._prune()
            self._values[key] = (self.clock() + self.ttl, value)
            return value
        finally:
            self._running.pop(key, None)

    def _prune(self) -> None:
        now = self.clock()
        for key in [key for key, (expires, _) in self._values.items() if expires <= now]:
            del self._values[key]

    async def close(self) -> None:
        """Cancel runs under way and forget every value."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._values.clear()


def _retrieve(task: asyncio.Task[Any]) -> None:
    """Mark a failed run's error as seen: its callers got it, or all of them went away."""
    if not task.cancelled() and task.exception() is not None:
        log.debug("scheduler query failed: %s", task.exception())
