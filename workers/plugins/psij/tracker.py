"""Live jobs: psij's status callbacks in, journaled and strongly ordered events out.

psij calls back on its own threads; each report hops to the event loop and joins one queue.
A single worker drains the queue, so every job's transitions are applied one at a time and in
order: fill in skipped states, number them, write them to the journal in the same transaction
that puts their events in the outbox, append them to the job's status.jsonl. Output chunks of
streamed jobs go through the same queue, so they are never announced after the job ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from orbit_mq.contracts.psij.models import (
    JobOutputEvent,
    JobState,
    JobStatusEvent,
)
from orbit_mq.waiting import wait_within
from orbit_mq.workers.journal import Journal
from orbit_mq.workers.logs import bounded_logger
from orbit_mq.workers.plugin import Emitter
from orbit_mq.workers.plugins.psij import files
from orbit_mq.workers.plugins.psij.endings import (
    Ending,
    Report,
    final_files,
    final_steps,
    outcome,
    unexplained,
)
from orbit_mq.workers.plugins.psij.executors import (
    LOCAL,
    ExecutorPool,
    describe,
    terminate_local_process,
)
from orbit_mq.workers.plugins.psij.files import Chunk, status_line
from orbit_mq.workers.plugins.psij.handover import Handover
from orbit_mq.workers.plugins.psij.states import Step, effective_state, plan
from orbit_mq.workers.plugins.psij.store import JobRow, JobStore

if TYPE_CHECKING:
    import psij

log = bounded_logger("orbit_mq.plugin.psij")

GROUP = 512  # queued reports applied together at most (two journal transactions)
HANDOVER_GRACE = 10.0  # s a stopping endpoint waits for submissions under way


@dataclass(eq=False)
class LiveJob:
    row: JobRow  # the journal's view, kept current
    psij_job: psij.Job | None = None
    psij_spec: psij.JobSpec | None = None
    submitted: bool = False  # the executor has it: a cancel can go there
    attached: bool = False  # re-attached after a restart
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(frozen=True)
class _Barrier:
    future: asyncio.Future[None]


@dataclass(frozen=True)
class _Reported:
    job_id: str
    report: Report


@dataclass
class _Change:
    """The steps one report makes a job take (a job's end also carries how it ended)."""

    job: LiveJob
    report: Report
    steps: list[Step]
    ending: Ending | None = None


def _runs(
    items: list[_Reported | Chunk | _Barrier],
) -> list[list[_Reported] | Chunk | _Barrier]:
    """The queue's items in order, consecutive reports together."""
    runs: list[list[_Reported] | Chunk | _Barrier] = []
    for item in items:
        if isinstance(item, _Reported):
            if runs and isinstance(runs[-1], list):
                runs[-1].append(item)
            else:
                runs.append([item])
        else:
            runs.append(item)
    return runs


class Tracker:
    def __init__(
        self, journal: Journal, store: JobStore, emit: Emitter, pool: ExecutorPool
    ) -> None:
        self.journal = journal
        self.store = store
        self.emit = emit
        self.pool = pool
        self.live: dict[str, LiveJob] = {}
        self._queue: asyncio.Queue[_Reported | Chunk | _Barrier] = asyncio.Queue()
        self._writing = asyncio.Lock()  # one journal transaction at a time
        self.handover = Handover(self)
        self._creators: set[asyncio.Task[None]] = set()
        self._creating: list[tuple[list[LiveJob], asyncio.Future[asyncio.Future[list[None]]]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._worker = asyncio.create_task(self._work(), name="psij-tracker")

    async def stop(self) -> None:
        """Apply what was already reported, then stop listening (jobs keep running; the next
        start re-attaches them)."""
        busy = self._creators | self.handover.tasks
        if busy:  # a submission in a thread cannot be stopped: let it finish
            await asyncio.wait(busy, timeout=HANDOVER_GRACE)
        with contextlib.suppress(TimeoutError):
            await wait_within(self.barrier(), 5)
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    # -- reports in ------------------------------------------------------------------------

    def on_status(self, job_id: str) -> Callable[[psij.Job, psij.JobStatus], None]:
        """A psij status callback for one job (runs on psij's threads)."""

        def changed(job: psij.Job, status: psij.JobStatus) -> None:
            report = Report(
                state=JobState(status.state.name),
                time=status.time or time.time(),
                exit_code=status.exit_code,
                message=status.message,
                native_id=job.native_id,
            )
            self.report_threadsafe(job_id, report)

        return changed

    def report_threadsafe(self, job_id: str, report: Report) -> None:
        if self._closed or self._loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the endpoint is gone
            self._loop.call_soon_threadsafe(self._queue.put_nowait, _Reported(job_id, report))

    def report(self, job_id: str, report: Report) -> None:
        self._queue.put_nowait(_Reported(job_id, report))

    def output(self, chunk: Chunk) -> None:
        self._queue.put_nowait(chunk)

    async def barrier(self) -> None:
        """Return once everything reported before this call has been applied."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Barrier(future))
        await future

    # -- creating, submitting, cancelling --------------------------------------------------

    async def create(self, jobs: list[LiveJob]) -> asyncio.Future[list[None]]:
        """Record new jobs in state NEW (seq 1), announce them and start handing them to their
        executors (`hand_over`); the future is done once they all were handed. What other
        requests create meanwhile is recorded in the same transaction (one commit, and one
        statement per table, for all of them); once asked for, the jobs are created even if
        the caller stops waiting."""
        created: asyncio.Future[asyncio.Future[list[None]]] = (
            asyncio.get_running_loop().create_future()
        )
        self._creating.append((jobs, created))
        if len(self._creating) == 1:  # the first to wait: record what waits once it can
            task = asyncio.create_task(self._create_waiting(), name="psij-create")
            self._creators.add(task)
            task.add_done_callback(self._creators.discard)
        return await asyncio.shield(created)

    async def _create_waiting(self) -> None:
        async with self._writing:
            waiting, self._creating = self._creating, []
            try:
                await self._record_new([job for jobs, _ in waiting for job in jobs])
            except Exception:  # e.g. a request key taken: only that request may fail
                for jobs, created in waiting:
                    try:
                        await self._record_new(jobs)
                    except Exception as exc:
                        created.set_exception(exc)
        for jobs, created in waiting:
            if not created.done():
                created.set_result(self.hand_over(jobs))

    async def _record_new(self, jobs: list[LiveJob]) -> None:
        with self.journal.transaction():
            self.store.insert_many([job.row for job in jobs])
            for job in jobs:
                event = self._event(job.row, Step(1, JobState.NEW), job.row.submitted)
                await self.emit("job_status", event, owner=job.row.user)
        for job in jobs:
            self.live[job.row.job_id] = job

    def hand_over(self, jobs: list[LiveJob]) -> asyncio.Future[list[None]]:
        """Hand recorded jobs to their executors, in tasks of the tracker: a caller that stops
        waiting (its request was cancelled) does not stop them. Done when all were handed."""
        return self.handover.add(jobs)

    async def cancel(self, job_id: str) -> None:
        job = self.live.get(job_id)
        if job is None:
            return
        if not job.row.cancel_requested:
            job.row.cancel_requested = True
            self.store.mark_cancel(job_id)
        if job.submitted:
            await self.cancel_now(job)
        await self.barrier()

    async def cancel_now(self, job: LiveJob) -> None:
        assert job.psij_job is not None
        row = job.row
        try:
            if job.attached and row.executor == LOCAL and row.native_id is not None:
                # the reaper notices the end; its own cancel would break it (see the helper)
                await asyncio.to_thread(terminate_local_process, row.native_id, row.job_id)
            else:
                await asyncio.to_thread(job.psij_job.cancel)
        except Exception as exc:  # e.g. it ended meanwhile; the state tells
            log.warning("cancelling job %s: %s", job.row.job_id, describe(exc))

    # -- applying --------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            items = [await self._queue.get()]
            while len(items) < GROUP and not self._queue.empty():
                items.append(self._queue.get_nowait())
            for run in _runs(items):
                try:
                    if isinstance(run, _Barrier):
                        if not run.future.done():
                            run.future.set_result(None)
                    elif isinstance(run, Chunk):
                        await self._send_output(run)
                    else:
                        await self._apply(run)
                except Exception:
                    log.exception("psij: could not apply %r", run)

    async def _apply(self, reported: list[_Reported]) -> None:
        """Apply reports in their order: the steps they make in one journal transaction, then
        the ends they make in another, after what the disk says about each end has been read
        in one thread hop (a streamed job's last output goes out before its end)."""
        changes, ends, native_ids = self._plan(reported)
        if changes or native_ids:
            await self._record(changes, native_ids)
        if not ends:
            return
        disks = await asyncio.to_thread(
            lambda: [final_files(end.job.row, unexplained(end.job.row, end.report)) for end in ends]
        )
        for end, disk in zip(ends, disks, strict=True):
            row = end.job.row
            result = outcome(row, end.job.attached, end.report, disk)
            # the exit file may say FAILED; the staging steps the job did come first
            end.steps = final_steps(row, disk.staging, result.state)
            end.ending = Ending(result, disk.stdout_tail, disk.stderr_tail)
            for chunk in disk.chunks:
                await self._send_output(chunk)
        await self._record([end for end in ends if end.steps], [])

    def _plan(
        self, reported: list[_Reported]
    ) -> tuple[list[_Change], list[_Change], list[tuple[str, str]]]:
        """The steps each report makes, each after the steps of the reports before it; the
        reports that end a job (their steps follow from the disk); the native ids learnt."""
        changes: list[_Change] = []
        ends: dict[str, _Change] = {}
        native_ids: list[tuple[str, str]] = []
        planned: dict[str, Step] = {}
        for item in reported:
            job = self.live.get(item.job_id)
            if job is None or item.job_id in ends:
                continue  # it ended already; executors may still report late
            row, report = job.row, item.report
            if report.native_id and row.native_id is None:
                row.native_id = report.native_id
                native_ids.append((row.job_id, report.native_id))
            state = report.state
            if state is JobState.ACTIVE and not report.step and row.spec.get("stage_in"):
                state = JobState.STAGE_IN  # the job's wrapper stages in first, then says ACTIVE
            latest = planned.get(row.job_id, Step(row.seq, row.state))
            steps = plan(latest.state, latest.seq, effective_state(state, row.cancel_requested))
            if not steps:
                continue
            if steps[-1].state.final:
                ends[row.job_id] = _Change(job, report, [])
            else:
                changes.append(_Change(job, report, steps))
                planned[row.job_id] = steps[-1]
        return changes, list(ends.values()), native_ids

    async def _record(self, changes: list[_Change], native_ids: list[tuple[str, str]]) -> None:
        """Journal the changes' steps with their events in one transaction, then keep the
        jobs' rows and `status.jsonl` files in step with it."""
        entries: dict[str, list[dict[str, Any]]] = {}
        steps: list[tuple[str, Step, float, int | None, str | None]] = []
        async with self._writing:
            with self.journal.transaction():
                for change in changes:
                    lines = entries.setdefault(change.job.row.job_id, [])
                    lines.extend(await self._record_steps(change, steps))
                self.store.record_many(steps, dict(native_ids))
        for job_id, _, _, exit_code, message in steps:  # the rows as the journal has them
            row = self.live[job_id].row
            row.exit_code = row.exit_code if exit_code is None else exit_code
            row.message = row.message if message is None else message
        for change in changes:
            row, last = change.job.row, change.steps[-1]
            row.state, row.seq, row.updated = last.state, last.seq, change.report.time
            if row.job_id in entries:  # a job's lines of the whole group, at its first change
                lines = entries.pop(row.job_id)
                try:
                    files.JobDir(row.job_dir).append_status(lines)
                except OSError as exc:  # the journal has it; the file only mirrors it
                    log.warning("psij: job %s: status.jsonl not written: %s", row.job_id, exc)
            if row.state.final:
                del self.live[row.job_id]
                change.job.done.set()

    async def _record_steps(
        self, change: _Change, steps: list[tuple[str, Step, float, int | None, str | None]]
    ) -> list[dict[str, Any]]:
        """Announce the change's steps, add them to `steps` (written together by the
        caller, in the same transaction) and return their status.jsonl lines."""
        row, report, ending = change.job.row, change.report, change.ending
        entries: list[dict[str, Any]] = []
        for step in change.steps:
            exit_code, message = None, None
            if step.state.final and ending is not None:
                exit_code, message = ending.outcome.exit_code, ending.outcome.message
            elif step.state is report.state:
                message = report.message  # e.g. why a batch job waits
            steps.append((row.job_id, step, report.time, exit_code, message))
            event = self._event(row, step, report.time, message, ending)
            await self.emit("job_status", event, owner=row.user)
            entries.append(status_line(step, report.time, message, exit_code))
        return entries

    async def _send_output(self, chunk: Chunk) -> None:
        job = self.live.get(chunk.job_id)
        if job is None:
            return  # the job ended; its final output went out before its last state
        row = job.row
        sent = row.stdout_sent if chunk.stream == "stdout" else row.stderr_sent
        if chunk.offset != sent:
            return  # read before an earlier chunk was sent: stale
        end = chunk.offset + len(chunk.data)
        event = JobOutputEvent(
            job_id=row.job_id,
            stream=chunk.stream,
            offset=chunk.offset,
            text=chunk.data.decode("utf-8", errors="replace"),
        )
        async with self._writing:
            with self.journal.transaction():
                self.store.set_sent(row.job_id, chunk.stream, end)
                await self.emit("job_output", event, owner=row.user)
        if chunk.stream == "stdout":
            row.stdout_sent = end
        else:
            row.stderr_sent = end

    @staticmethod
    def _event(
        row: JobRow,
        step: Step,
        when: float,
        message: str | None = None,
        ending: Ending | None = None,
    ) -> JobStatusEvent:
        event = JobStatusEvent(
            job_id=row.job_id,
            native_id=row.native_id,
            state=step.state,
            seq=step.seq,
            time=datetime.fromtimestamp(when, UTC),
            executor=row.executor,
            message=message,
        )
        if step.state.final and ending is not None:
            event.exit_code = ending.outcome.exit_code
            event.stdout_tail = ending.stdout_tail
            event.stderr_tail = ending.stderr_tail
        return event
