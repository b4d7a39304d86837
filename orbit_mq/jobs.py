"""What a job handle (`orbit_mq.contracts.psij.Job`) does in the SDK: watch, wait, output.

    psij = await fabric.endpoint("hpc1").plugin(PsiJ)
    job = await psij.submit_job(spec=JobSpec(executable="/bin/date"))
    async for step in job.watch():          # every transition, in order, exactly once
        print(step.seq, step.state)
    async for chunk in job.output():
        print(chunk.text, end="")

`watch` subscribes to the job's `job_status` events and fills any gap (events missed while
the connection was down, or published before the subscription) from the endpoint's journal
(`get_job_status(...).history`), so no transition is lost or repeated.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from orbit_mq.contracts.psij.models import (
    NO_OUTPUT,
    Job,
    JobStatus,
    JobStatusEvent,
    OutputChunk,
)
from orbit_mq.errors import CallTimeout, OrbitError, TransientError
from orbit_mq.proxy import remote
from orbit_mq.retry import retrying
from orbit_mq.waiting import wait_within

if TYPE_CHECKING:
    from orbit_mq.protocol import Event
    from orbit_mq.subscribe import Subscription

POLL_INTERVAL = 0.5  # s between output polls while following a running job
RECHECK_INTERVAL = 5.0  # s without an event after which `watch` reads the journal
RECOVERY_WINDOW = 120.0  # s a re-check may keep failing (broker or endpoint restarting)
# What a re-check can meet while the broker or the endpoint is coming back.
TRANSIENT = (TransientError, CallTimeout, TimeoutError)


def history(status: JobStatus) -> list[JobStatusEvent]:
    """The transitions in a job's journal, as its events carried them."""
    return [
        JobStatusEvent(
            job_id=status.job_id,
            native_id=status.native_id,
            state=entry.state,
            seq=entry.seq,
            time=entry.time,
            executor=status.executor,
            message=entry.message,
            exit_code=status.exit_code if entry.state.final else None,
        )
        for entry in sorted(status.history, key=lambda entry: entry.seq)
    ]


async def watch(job: Job) -> AsyncIterator[JobStatusEvent]:
    proxy = remote(job.psij)
    last = 0
    async with proxy.fabric.subscribe(f"{proxy.serving}.psij.job_status") as events:
        # Subscribed first, then read the journal: nothing can fall between the two.
        pending = history(await job.status(**NO_OUTPUT))
        while True:
            for transition in pending:
                if transition.seq == last + 1:
                    last = transition.seq
                    yield transition
                    if transition.state.final:
                        return
            # A re-check may fail for a while: the broker or the endpoint is coming back.
            rechecks = retrying(
                deadline=time.time() + RECOVERY_WINDOW,
                when=_transient,
                what=f"job {job.job_id}: re-check",
            )
            async for trying in rechecks:
                with trying:
                    pending = await _after(job, events, last)


def _transient(error: BaseException) -> bool:
    return isinstance(error, TRANSIENT)


async def _after(job: Job, events: Subscription[Event], last: int) -> list[JobStatusEvent]:
    """The transitions after `last`: from the next event of this job, or from the journal when
    that event shows a gap or none came for a while (events published while the subscription
    was being re-established after a broker restart never reach it)."""
    try:
        transition = await wait_within(_next_event(job, events), RECHECK_INTERVAL)
    except TimeoutError:
        return await _history_after(job, last)
    if transition.seq <= last:
        return []  # already seen
    if transition.seq > last + 1:
        return await _history_after(job, last)
    return [transition]


async def _history_after(job: Job, last: int) -> list[JobStatusEvent]:
    # Bounded, so a call lost in a broker restart is retried at the next re-check.
    async with asyncio.timeout(RECHECK_INTERVAL * 2):
        return [t for t in history(await job.status(**NO_OUTPUT)) if t.seq > last]


async def _next_event(job: Job, events: Subscription[Event]) -> JobStatusEvent:
    async for event in events:
        transition = JobStatusEvent.model_validate(event.data)
        if transition.job_id == job.job_id:
            return transition
    raise OrbitError(f"job {job.job_id}: the event subscription ended")


async def wait(job: Job, timeout: float | None = None) -> JobStatusEvent:
    try:
        async with asyncio.timeout(timeout):
            async for transition in job.watch():
                if transition.state.final:
                    return transition
    except TimeoutError:
        raise CallTimeout(f"job {job.job_id} did not finish within {timeout} s") from None
    raise CallTimeout(f"job {job.job_id}: its status events ended before a terminal state")


async def output(job: Job, follow: bool = False) -> AsyncIterator[OutputChunk]:
    out = err = 0  # byte offsets in stdout and stderr
    while True:
        status = await job.status(out, err)
        pieces = [piece for piece in pieces_of(status, out, err) if piece.text]
        for piece in pieces:
            yield piece
        out, err = status.stdout_offset, status.stderr_offset
        if not pieces and (not follow or status.state.final):
            return  # everything written so far has been read (and, following, it ended)
        if not pieces:
            await asyncio.sleep(POLL_INTERVAL)  # polling the endpoint between writes


def pieces_of(status: JobStatus, out: int, err: int) -> list[OutputChunk]:
    """The output a status carries, from the offsets it was asked for."""
    return [OutputChunk("stdout", out, status.stdout), OutputChunk("stderr", err, status.stderr)]
