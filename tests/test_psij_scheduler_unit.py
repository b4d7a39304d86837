"""The adaptive polling interval and the scheduler call counts (scheduler.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from orbit_mq.workers.plugins.psij.scheduler import (
    FAST_WINDOW,
    SLOW_AFTER,
    SchedulerCalls,
    instrument,
    interval_for,
    set_interval,
)

NOW = 100_000.0


@pytest.mark.parametrize(
    ("ages", "interval"),
    [
        ([], 5.0),  # no live jobs: the executor's own interval
        ([1.0, 5000.0], 1.0),  # one just changed: the floor
        ([FAST_WINDOW + 1, SLOW_AFTER + 1], 5.0),
        ([SLOW_AFTER + 1, SLOW_AFTER + 100], 30.0),  # all long unchanged: the ceiling
    ],
)
def test_interval_follows_the_jobs(ages: list[float], interval: float) -> None:
    latest = NOW - min(ages) if ages else None  # the most recent change of the live jobs
    assert interval_for(latest, NOW, floor=1.0, base=5.0, ceiling=30.0) == interval


def test_the_interval_never_goes_the_wrong_way_of_the_base() -> None:
    # a floor above the base, or a ceiling below it, does not slow or hurry the polling
    assert interval_for(NOW, NOW, floor=10.0, base=5.0, ceiling=30.0) == 5.0
    assert interval_for(NOW - SLOW_AFTER - 1, NOW, floor=1.0, base=5.0, ceiling=2.0) == 5.0


def test_calls_are_counted_by_executor_and_command() -> None:
    calls = SchedulerCalls()
    executor = SimpleNamespace(_run_command=lambda cmd: "out")
    instrument(executor, "slurm", calls)
    for _ in range(3):
        assert executor._run_command(["/usr/bin/squeue", "--me"]) == "out"
    executor._run_command(["sbatch", "x.job"])
    assert calls.last_minute() == {"slurm": {"sbatch": 1, "squeue": 3}}


def test_set_interval_reaches_the_poller() -> None:
    poller = SimpleNamespace(config=SimpleNamespace(queue_polling_interval=5))
    assert set_interval(SimpleNamespace(_queue_poll_thread=poller), 1.0) == 1.0
    assert poller.config.queue_polling_interval == 1.0
    assert set_interval(SimpleNamespace(), 1.0) is None  # local: no poller
