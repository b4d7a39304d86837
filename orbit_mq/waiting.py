"""Waiting with a time limit, without losing a cancellation.

On Python 3.11, `asyncio.wait_for` returns the awaited result when its task is cancelled just
as that result arrives: the cancellation is lost and the task carries on. A background loop
stopped that way (the endpoint's outbox waiting on its wake-up event, say) never ends, and
whoever awaits its end hangs. `asyncio.timeout` has no such gap; orbit_mq waits through it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def wait_within(awaitable: Awaitable[T], timeout: float | None) -> T:
    """`await awaitable`, or TimeoutError after `timeout` s (None: no limit)."""
    async with asyncio.timeout(timeout):
        return await awaitable
