"""Waiting with a time limit, without losing a cancellation; one run of an operation that
many wait for at once.

On Python 3.11, `asyncio.wait_for` returns the awaited result when its task is cancelled just
as that result arrives: the cancellation is lost and the task carries on. A background loop
stopped that way (the endpoint's outbox waiting on its wake-up event, say) never ends, and
whoever awaits its end hangs. `asyncio.timeout` has no such gap; orbit_mq waits through it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


async def wait_within(awaitable: Awaitable[T], timeout: float | None) -> T:
    """`await awaitable`, or TimeoutError after `timeout` s (None: no limit)."""
    async with asyncio.timeout(timeout):
        return await awaitable


class Shared(Generic[K, T]):
    """One run at a time of an operation per key: whoever asks while it runs awaits that run's
    outcome (a burst of a thousand calls to one endpoint checks it once, not a thousand times).
    A caller that stops waiting does not stop the run for the others."""

    def __init__(self) -> None:
        self._running: dict[K, asyncio.Future[T]] = {}

    async def __call__(self, key: K, run: Callable[[], Awaitable[T]], timeout: float | None) -> T:
        """`run()`'s outcome, shared with the callers of the same key meanwhile; TimeoutError
        after `timeout` s of waiting (the run itself keeps the first caller's limits)."""
        running = self._running.get(key)
        if running is None:
            running = self._running[key] = asyncio.ensure_future(run())
            running.add_done_callback(lambda done: self._ended(key, done))
        return await wait_within(asyncio.shield(running), timeout)

    def _ended(self, key: K, done: asyncio.Future[T]) -> None:
        if self._running.get(key) is done:
            del self._running[key]
        if not done.cancelled():
            done.exception()  # retrieved here: every caller may have stopped waiting
