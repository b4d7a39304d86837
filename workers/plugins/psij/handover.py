"""Handing recorded jobs to their executors: SUBMIT_THREADS tasks, each taking a batch of the
jobs that wait and handing it over in one thread call (the jobs' directories, then each
submission), so the event loop pays one hop to a thread and back, and one statement marking
the jobs handed, per batch instead of per job."""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path
from typing import TYPE_CHECKING

from orbit_mq.contracts.psij.models import JobSpec, JobState
from orbit_mq.workers.logs import bounded_logger
from orbit_mq.workers.plugins.psij import files
from orbit_mq.workers.plugins.psij.endings import Report
from orbit_mq.workers.plugins.psij.executors import describe, local_problem
from orbit_mq.workers.plugins.psij.files import status_line
from orbit_mq.workers.plugins.psij.states import Step
from orbit_mq.workers.plugins.psij.store import JobRow

if TYPE_CHECKING:
    import psij

    from orbit_mq.workers.plugins.psij.tracker import LiveJob, Tracker

log = bounded_logger("orbit_mq.plugin.psij")

SUBMIT_THREADS = 4  # concurrent psij submissions (more only contend for the GIL)
# Jobs one thread call hands over at most. Each call is a hop to a thread and back, each
# marking a statement: a batch pays them once. A restart fails the jobs of a batch that were
# marked handed but not yet submitted ("may or may not have started"), so it stays small.
HAND_BATCH = 8


class Handover:
    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self._waiting: collections.deque[tuple[LiveJob, asyncio.Future[None]]] = collections.deque()
        self.tasks: set[asyncio.Task[None]] = set()
        # Tasks still taking batches: one that found nothing waiting leaves at once (a done
        # task leaves `tasks` only a loop turn later, when jobs may have come meanwhile).
        self._takers = 0

    def add(self, jobs: list[LiveJob]) -> asyncio.Future[list[None]]:
        """Hand recorded jobs over; done when all were handed."""
        loop = asyncio.get_running_loop()
        handed: list[asyncio.Future[None]] = []
        for job in jobs:
            handed.append(loop.create_future())
            self._waiting.append((job, handed[-1]))
        while self._waiting and self._takers < SUBMIT_THREADS:
            self._takers += 1
            task = asyncio.create_task(self._hand(), name="psij-submit")
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        return asyncio.gather(*handed)

    async def _hand(self) -> None:
        """Hand waiting jobs over, a batch per thread call, until none waits: the threads'
        share of what waited now, at most HAND_BATCH."""
        try:
            while self._waiting:
                size = min(HAND_BATCH, -(-len(self._waiting) // SUBMIT_THREADS))
                batch = [self._waiting.popleft() for _ in range(min(size, len(self._waiting)))]
                try:
                    await self._hand_batch([job for job, _ in batch])
                except Exception:  # reported per job where it could be; never leave a waiter
                    log.exception("psij: handing jobs to their executors failed")
                for _, handed in batch:
                    if not handed.done():
                        handed.set_result(None)
        finally:
            self._takers -= 1

    async def _hand_batch(self, jobs: list[LiveJob]) -> None:
        """Create the jobs' directories and hand them to their executors in one thread call;
        a refusal ends a job FAILED (NEW → FAILED), a cancel before it CANCELED."""
        # What was cancelled before it could be handed over only gets its directory.
        ready = [job for job in jobs if not job.row.cancel_requested]
        if ready:
            # From here on a restart cannot tell whether the executor got the job, so it
            # ends it FAILED unless the executor's id was recorded (monitor.recover).
            self.tracker.store.mark_handed(*(job.row.job_id for job in ready))
        for job in ready:
            job.row.handed = True
            assert job.psij_job is not None and job.psij_spec is not None
            job.psij_job.spec = job.psij_spec
            job.psij_job.set_job_status_callback(self.tracker.on_status(job.row.job_id))
        errors = await asyncio.to_thread(self._hand_blocking, jobs)
        report = self.tracker.report
        for job, error in zip(jobs, errors, strict=True):
            row = job.row
            if error is not None:
                message = (
                    str(error)
                    if isinstance(error, _Refused)
                    else f"submission failed: {describe(error)}"
                )
                report(row.job_id, Report(JobState.FAILED, time.time(), message=message))
            elif not row.handed:
                report(row.job_id, Report(JobState.CANCELED, time.time()))
            else:
                job.submitted = True
                # The executor reported QUEUED with the native id already; this only covers
                # one that did not (a lower state than the current one is never recorded).
                assert job.psij_job is not None
                native_id = job.psij_job.native_id
                report(row.job_id, Report(JobState.QUEUED, time.time(), native_id=native_id))
        for job in jobs:
            if job.submitted and job.row.cancel_requested:  # asked for while under way
                await self.tracker.cancel_now(job)

    def _hand_blocking(self, jobs: list[LiveJob]) -> list[BaseException | None]:
        """Each job's directory, then (unless cancelled) its submission; what failed, per job
        (blocking: runs in a thread)."""
        errors: list[BaseException | None] = []
        for job in jobs:
            row = job.row
            try:
                files.prepare_job(row, status_line(Step(1, JobState.NEW), row.submitted))
                if row.handed:
                    assert job.psij_job is not None
                    self._submit_blocking(row, job.psij_job)
            except Exception as exc:
                errors.append(exc)
            else:
                errors.append(None)
        return errors

    def _submit_blocking(self, row: JobRow, psij_job: psij.Job) -> None:
        executor = self.tracker.pool.get(row.executor)
        if row.exit_file is not None:  # local: say clearly what cannot start
            spec = JobSpec.model_validate(row.spec)
            directory = Path(spec.directory) if spec.directory else row.job_dir / "work"
            problem = local_problem(spec, directory)
            if problem is not None:
                raise _Refused(problem)
        executor.submit(psij_job)


class _Refused(Exception):
    """The plugin itself refused to submit (the message says why)."""
