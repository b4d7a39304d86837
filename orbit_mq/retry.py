"""The SDK's one retry policy (tenacity): transient failures, with exponential back-off and
jitter, bounded by a deadline or a number of attempts.

A call is retried only where that is safe: a method the endpoint runs once per message_id
(`@rpc(dedupe=True)`), re-sent with the same message_id (`Fabric.call(retry=True)`), or a
transfer that resumes where the endpoint left off (`orbit_mq.staging`). A call that cannot be
retried raises its `TransientError` (`ConnectionLost`, `EndpointOffline`, …) to its caller.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_any,
    stop_before_delay,
    stop_never,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from orbit_mq.errors import TransientError

log = logging.getLogger("orbit_mq.client")

T = TypeVar("T")

FIRST_PAUSE = 0.2  # s before the first retry; it doubles (with jitter) up to MAX_PAUSE
MAX_PAUSE = 5.0


def _is_transient(error: BaseException) -> bool:
    return isinstance(error, TransientError)


def retrying(
    *,
    deadline: float | None = None,
    attempts: int | None = None,
    forever: bool = False,
    when: Callable[[BaseException], bool] = _is_transient,
    what: str = "call",
) -> AsyncRetrying:
    """Attempts while `when(error)` holds, until the deadline (a `time.time()` value) leaves no
    room for another or `attempts` were made (or `forever`); the last error is raised."""
    stops: list[stop_base] = [stop_never] if forever else []
    if deadline is not None:
        stops.append(stop_before_delay(max(deadline - time.time(), 0)))
    if attempts is not None:
        stops.append(stop_after_attempt(attempts))
    if not stops:
        raise ValueError("retrying needs a deadline, a number of attempts, or forever")

    def logged(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        pause = state.next_action.sleep if state.next_action is not None else 0
        log.warning("%s: %s; trying again in %.1f s (try %d)", what, error, pause,
                    state.attempt_number + 1)  # fmt: skip

    return AsyncRetrying(
        retry=retry_if_exception(when),
        stop=stop_any(*stops),
        wait=wait_exponential_jitter(multiplier=FIRST_PAUSE, max=MAX_PAUSE, jitter=FIRST_PAUSE),
        before_sleep=logged,
        reraise=True,
    )


async def until_deadline(
    deadline: float, attempt: Callable[[], Awaitable[T]], what: str = "call"
) -> T:
    """`attempt()` again after each TransientError until it succeeds or the deadline leaves
    no room for another try."""
    async for trying in retrying(deadline=deadline, what=what):
        with trying:
            return await attempt()
    raise AssertionError("unreachable: tenacity re-raises the last error")
