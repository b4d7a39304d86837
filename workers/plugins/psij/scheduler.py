"""Being gentle with the scheduler: how often the endpoint asks, and how many commands it runs.

PSI/J's batch executors already ask about all of their jobs in one status command per polling
interval (`squeue --me -t all`, `qstat -f …`), whatever the number of jobs, and watching clients
read the journal, never the scheduler. On top of that the endpoint adapts the interval:

- `floor` s (default 1) while any of the executor's jobs changed state in the last
  FAST_WINDOW s (just submitted, just started): users see QUEUED and ACTIVE soon;
- the executor's `queue_polling_interval` (default 5) otherwise;
- `ceiling` s (default 30) once every job of the executor has kept its state for SLOW_AFTER s
  (long in the queue): 500 jobs pending for hours cost one command every 30 s.

ORBIT_MQ_PSIJ_POLL_FLOOR and ORBIT_MQ_PSIJ_POLL_CEILING override the plugin's `poll_floor` and
`poll_ceiling`. Every scheduler command is counted; `health` reports the last minute's, by
executor and command.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

FAST_WINDOW = 30.0  # s after a state change during which the floor applies
SLOW_AFTER = 600.0  # s without a change after which the ceiling applies
WINDOW = 60.0  # s the call counts cover


def bound(name: str, configured: float) -> float:
    raw = os.environ.get(f"ORBIT_MQ_PSIJ_POLL_{name.upper()}")
    try:
        value = float(raw) if raw else configured
    except ValueError:
        return configured
    return value if value > 0 else configured


class SchedulerCalls:
    """Scheduler commands run in the last minute (thread-safe: PSI/J runs them on its threads)."""

    def __init__(self) -> None:
        self._calls: deque[tuple[float, str, str]] = deque()
        self._lock = threading.Lock()

    def add(self, executor: str, command: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._calls.append((now, executor, command))
            self._forget(now)

    def last_minute(self) -> dict[str, dict[str, int]]:
        with self._lock:
            self._forget(time.monotonic())
            counts = Counter((executor, command) for _, executor, command in self._calls)
        result: dict[str, dict[str, int]] = {}
        for (executor, command), count in sorted(counts.items()):
            result.setdefault(executor, {})[command] = count
        return result

    def _forget(self, now: float) -> None:
        while self._calls and now - self._calls[0][0] > WINDOW:
            self._calls.popleft()


def instrument(instance: Any, executor: str, calls: SchedulerCalls) -> None:
    """Count every command a PSI/J batch executor runs (its one `_run_command` seam)."""
    run: Callable[[list[str]], str] | None = getattr(instance, "_run_command", None)
    if run is None:
        return

    def counted(cmd: list[str]) -> str:
        calls.add(executor, os.path.basename(cmd[0]) if cmd else "?")
        return run(cmd)

    instance._run_command = counted


def interval_for(
    last_change: float | None, now: float, floor: float, base: float, ceiling: float
) -> float:
    """The polling interval for an executor whose live jobs last changed at `last_change` (the
    latest change of any of them; None: no live jobs)."""
    if last_change is None:
        return base
    age = now - last_change
    if age < FAST_WINDOW:
        return min(floor, base)
    if age > SLOW_AFTER:  # every one of them has kept its state that long
        return max(ceiling, base)
    return base


def set_interval(instance: Any, seconds: float) -> float | None:
    """Set a PSI/J batch executor's polling interval (read by its poller before each sleep);
    None for an executor without a poller (local)."""
    poller = getattr(instance, "_queue_poll_thread", None)
    if poller is None:
        return None
    poller.config.queue_polling_interval = seconds
    return seconds
