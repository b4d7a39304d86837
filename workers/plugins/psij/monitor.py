"""What runs beside the requests: re-attaching the journal's unfinished jobs at start, streaming
new output of jobs submitted with `stream_output`, and noticing the end of local jobs that were
re-attached after a restart (psij cannot see their exit code, and an orphaned process may stay
a zombie where nothing reaps it)."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from orbit_mq.contracts.psij.models import JobState
from orbit_mq.workers.logs import bounded_logger
from orbit_mq.workers.plugins.psij import files
from orbit_mq.workers.plugins.psij.endings import Report
from orbit_mq.workers.plugins.psij.executors import describe, local_process_running, new_job
from orbit_mq.workers.plugins.psij.files import CHUNK_BYTES, Chunk, read_output
from orbit_mq.workers.plugins.psij.store import JobRow
from orbit_mq.workers.plugins.psij.tracker import LiveJob, Tracker

log = bounded_logger("orbit_mq.plugin.psij")

STREAM_BUDGET = 4 * CHUNK_BYTES  # per stream and poll: bounds the rate of job_output events


async def recover(tracker: Tracker, jobs: list[LiveJob]) -> None:
    """Take the journal's unfinished jobs back: re-attach each to its executor, or end it FAILED
    saying why it cannot be."""
    for job in jobs:
        tracker.live[job.row.job_id] = job
    await asyncio.gather(*(_reattach(tracker, job) for job in jobs))


async def _reattach(tracker: Tracker, job: LiveJob) -> None:
    row, now = job.row, time.time()
    if row.executor not in tracker.pool.available:
        message = f"executor {row.executor!r} is no longer available; the job was not re-attached"
        tracker.report(row.job_id, Report(JobState.FAILED, now, message=message))
        return
    if not row.handed:  # accepted, never given to its executor: do it now
        job.psij_job = new_job(row.job_id)
        log.info("submitting job %s, accepted before the endpoint stopped", row.job_id)
        await tracker.hand_over([job])
        return
    if row.native_id is None:
        message = (
            "the endpoint stopped while it handed the job to its executor, before the "
            "executor's id for it was recorded: it may or may not have started, and it cannot "
            "be followed"
        )
        tracker.report(row.job_id, Report(JobState.FAILED, now, message=message))
        return
    job.attached = True
    try:
        attached = await asyncio.to_thread(_attach_blocking, tracker, job)
    except Exception as exc:
        if row.exit_file is None:
            message = f"could not re-attach to {row.executor} job {row.native_id}: {describe(exc)}"
            tracker.report(row.job_id, Report(JobState.FAILED, now, message=message))
            return
        attached = False  # the local process ended meanwhile: its exit file tells how
    if not attached:  # a local job that ended while the endpoint was down
        tracker.report(row.job_id, Report(JobState.COMPLETED, now))
        return
    job.submitted = True
    log.info("re-attached %s job %s (%s)", row.executor, row.job_id, row.native_id)
    if row.cancel_requested:
        await tracker.cancel(row.job_id)


def _attach_blocking(tracker: Tracker, job: LiveJob) -> bool:
    """Attach a psij job to the native one; False for a local job whose process is gone."""
    row = job.row
    assert row.native_id is not None
    if row.exit_file is not None and _local_ended(row):
        return False
    executor = tracker.pool.get(row.executor)
    psij_job = new_job()
    psij_job.spec = job.psij_spec  # batch executors read it when the job ends
    psij_job.set_job_status_callback(tracker.on_status(row.job_id))
    job.psij_job = psij_job
    executor.attach(psij_job, row.native_id)
    return True


async def watch(tracker: Tracker, interval: float, floor: float, ceiling: float) -> None:
    """Every `interval` s: announce new output of streamed jobs, notice re-attached local jobs
    that ended, adapt the batch executors' polling intervals to their jobs."""
    while True:
        await asyncio.sleep(interval)
        try:
            await _poll(tracker)
            if tracker.pool.adapting:  # batch executors only: no need to scan every live job
                tracker.pool.adapt(_last_changes(tracker), floor, ceiling)
        except Exception:  # the next round tries again
            log.exception("psij: polling job files failed")


def _last_changes(tracker: Tracker) -> dict[str, float]:
    """When any live job of each executor last changed state."""
    latest: dict[str, float] = {}
    for job in tracker.live.values():
        row = job.row
        latest[row.executor] = max(row.updated, latest.get(row.executor, row.updated))
    return latest


async def _poll(tracker: Tracker) -> None:
    jobs = [job for job in tracker.live.values() if job.submitted]
    # Copies: the worker advances the offsets while the files are read in a thread.
    streamed = [dataclasses.replace(job.row) for job in jobs if job.row.stream_output]
    attached = [dataclasses.replace(job.row) for job in jobs if job.attached and job.row.exit_file]
    staged = [job.row for job in jobs if job.row.staged]  # only id and directory are read
    if not streamed and not attached and not staged:
        return
    chunks, ended, steps = await asyncio.to_thread(_scan, streamed, attached, staged)
    for chunk in chunks:
        tracker.output(chunk)
    for job_id, state, when in steps:
        tracker.report(job_id, Report(state, when, step=True))  # seen ones are dropped
    for job_id in ended:
        tracker.report(job_id, Report(JobState.COMPLETED, time.time()))


Step = tuple[str, JobState, float]  # a staging step a job began: job id, state, time


def _scan(
    streamed: list[JobRow], attached: list[JobRow], staged: list[JobRow]
) -> tuple[list[Chunk], list[str], list[Step]]:
    chunks = [
        chunk
        for row in streamed
        for chunk in read_output(row, complete=False, budget=STREAM_BUDGET)
    ]
    ended = [row.job_id for row in attached if _local_ended(row)]
    steps = [
        (row.job_id, JobState(state), when)
        for row in staged
        for state, when in files.JobDir(row.job_dir).read_staging_steps()[0]
    ]
    return chunks, ended, steps


def _local_ended(row: JobRow) -> bool:
    """Whether a local job's program ended: its exit code is recorded, or its launcher is gone
    (blocking: reads a file, asks the OS)."""
    assert row.exit_file is not None and row.native_id is not None
    recorded = files.read_exit_code(row.exit_file) is not None
    return recorded or not local_process_running(row.native_id, row.job_id)
