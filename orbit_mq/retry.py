"""The SDK's one retry policy (tenacity): transient failures, until the caller's deadline.

Only calls that are safe to make again are retried: methods the endpoint runs once per
message_id (`@rpc(dedupe=True)`), re-sent with the same message_id, so a retry after a lost
reply returns the first answer instead of running again. A call that cannot be retried raises
the `TransientError` (`ConnectionLost`, `EndpointOffline`, …) to its caller.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_before_delay,
    wait_exponential_jitter,
)

from orbit_mq.errors import TransientError

log = logging.getLogger("orbit_mq.client")

T = TypeVar("T")

FIRST_PAUSE = 0.2  # s before the first retry; it doubles (with jitter) up to MAX_PAUSE
MAX_PAUSE = 5.0


def _log_retry(state: RetryCallState) -> None:
    outcome = state.outcome
    error = outcome.exception() if outcome is not None else None
    pause = state.next_action.sleep if state.next_action is not None else 0
    log.info("attempt %d failed (%s); retrying in %.1f s", state.attempt_number, error, pause)


async def until_deadline(deadline: float, attempt: Callable[[], Awaitable[T]]) -> T:
    """`attempt()` again after each TransientError until it succeeds or the deadline (a
    `time.time()` value) leaves no room for another try; the last error is raised."""
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(TransientError),
        stop=stop_before_delay(max(deadline - time.time(), 0)),
        wait=wait_exponential_jitter(multiplier=FIRST_PAUSE, max=MAX_PAUSE, jitter=FIRST_PAUSE),
        before_sleep=_log_retry,
        reraise=True,
    )
    async for trying in retrying:
        with trying:
            return await attempt()
    raise AssertionError("unreachable: tenacity re-raises the last error")
