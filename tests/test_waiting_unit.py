"""orbit_mq.waiting.Shared: one run per key for everyone who asks while it runs."""

from __future__ import annotations

import asyncio

import pytest

from orbit_mq.waiting import Shared


async def test_callers_at_once_share_one_run_and_a_later_caller_runs_again() -> None:
    shared: Shared[str, int] = Shared()
    runs, release = [], asyncio.Event()

    async def run() -> int:
        runs.append(1)
        await release.wait()
        return len(runs)

    waiting = [asyncio.create_task(shared("q", run, 5)) for _ in range(50)]
    await asyncio.sleep(0)  # let them all ask
    release.set()
    assert await asyncio.gather(*waiting) == [1] * 50
    assert await shared("q", run, 5) == 2  # the first run ended: this one is new
    assert await shared("other", run, 5) == 3  # keys are apart


async def test_an_error_reaches_every_caller_and_a_leaving_caller_stops_nothing() -> None:
    shared: Shared[str, int] = Shared()
    release = asyncio.Event()

    async def failing() -> int:
        await release.wait()
        raise LookupError("no such queue")

    leaving = asyncio.create_task(shared("q", failing, 5))
    staying = asyncio.create_task(shared("q", failing, 5))
    await asyncio.sleep(0)
    leaving.cancel()
    await asyncio.sleep(0)
    release.set()
    with pytest.raises(LookupError, match="no such queue"):
        await staying
    assert leaving.cancelled()


async def test_a_caller_waits_no_longer_than_its_own_limit() -> None:
    shared: Shared[str, int] = Shared()
    forever = asyncio.Event()

    async def hanging() -> int:
        await forever.wait()
        return 1

    first = asyncio.create_task(shared("q", hanging, 5))
    with pytest.raises(TimeoutError):
        await shared("q", hanging, 0.05)
    assert not first.done()  # the run goes on for the one still willing to wait
    forever.set()
    assert await first == 1
