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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from orbit_mq.contracts.psij.models import (
    JobOutputEvent,
    JobSpec,
    JobState,
    JobStatusEvent,
)
from orbit_mq.waiting import wait_within
from orbit_mq.workers.journal import Journal
from orbit_mq.workers.logs import bounded_logger
from orbit_mq.workers.plugins.psij import files
from orbit_mq.workers.plugins.psij.accounting import Accounted, accounted
from orbit_mq.workers.plugins.psij.executors import (
    LOCAL,
    ExecutorPool,
    describe,
    local_problem,
    terminate_local_process,
)
from orbit_mq.workers.plugins.psij.files import Chunk, read_output
from orbit_mq.workers.plugins.psij.states import Step, effective_state, plan
from orbit_mq.workers.plugins.psij.store import JobRow, JobStore

if TYPE_CHECKING:
    import psij

log = bounded_logger("orbit_mq.plugin.psij")

Emit = Callable[[str, BaseModel], Awaitable[None]]
FINAL_FLUSH_BYTES = 1024 * 1024  # output still announced per stream when a job ends
MAX_MESSAGE = 2000
SUBMIT_THREADS = 4  # concurrent psij submissions (more only contend for the GIL)
HANDOVER_GRACE = 10.0  # s a stopping endpoint waits for submissions under way


@dataclass(frozen=True)
class Report:
    """A state as an executor reported it (or as the plugin concluded it)."""

    state: JobState
    time: float
    exit_code: int | None = None
    message: str | None = None
    native_id: str | None = None
    step: bool = False  # a staging step the job's wrapper wrote (stagejob.py)


@dataclass(frozen=True)
class Outcome:
    state: JobState
    exit_code: int | None = None
    message: str | None = None


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


def iso(timestamp: float) -> str:
    """UTC ISO 8601 with a `Z`, as pydantic writes the datetimes of every other message."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def _failure_message(code: int | None, stderr_line: str) -> str:
    if code is None:
        return "the executor reported the job failed"
    return f"exit code {code}: {stderr_line}" if stderr_line else f"exit code {code}"


class Tracker:
    def __init__(self, journal: Journal, store: JobStore, emit: Emit, pool: ExecutorPool) -> None:
        self.journal = journal
        self.store = store
        self.emit = emit
        self.pool = pool
        self.live: dict[str, LiveJob] = {}
        self._queue: asyncio.Queue[_Reported | Chunk | _Barrier] = asyncio.Queue()
        self._writing = asyncio.Lock()  # one journal transaction at a time
        self._submitting = asyncio.Semaphore(SUBMIT_THREADS)
        self._handing: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._worker = asyncio.create_task(self._work(), name="psij-tracker")

    async def stop(self) -> None:
        """Apply what was already reported, then stop listening (jobs keep running; the next
        start re-attaches them)."""
        if self._handing:  # a submission in a thread cannot be stopped: let it finish
            await asyncio.wait(set(self._handing), timeout=HANDOVER_GRACE)
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
        executors (`hand_over`); the future is done once they all were handed."""
        async with self._writing:
            with self.journal.transaction():
                for job in jobs:
                    self.store.insert(job.row)
                    step = Step(1, JobState.NEW)
                    await self.emit("job_status", self._event(job.row, step, job.row.submitted))
        for job in jobs:
            self.live[job.row.job_id] = job
            entry = {"seq": 1, "state": "NEW", "time": iso(job.row.submitted), "message": None}
            files.JobDir(job.row.job_dir).append_status([entry])
        return self.hand_over(jobs)

    def hand_over(self, jobs: list[LiveJob]) -> asyncio.Future[list[None]]:
        """Hand recorded jobs to their executors, in tasks of the tracker: a caller that stops
        waiting (its request was cancelled) does not stop them. Done when all were handed."""
        tasks = []
        for job in jobs:
            task = asyncio.create_task(self._submit(job), name=f"psij-submit-{job.row.job_id}")
            self._handing.add(task)
            task.add_done_callback(self._handing.discard)
            tasks.append(task)
        return asyncio.gather(*tasks)

    async def _submit(self, job: LiveJob) -> None:
        """Hand the job to its executor; a refusal ends it FAILED (NEW → FAILED)."""
        row, psij_job = job.row, job.psij_job
        assert psij_job is not None and job.psij_spec is not None
        if row.cancel_requested:  # cancelled before it could be handed over
            self.report(row.job_id, Report(JobState.CANCELED, time.time()))
            return
        psij_job.spec = job.psij_spec
        psij_job.set_job_status_callback(self.on_status(row.job_id))
        try:
            async with self._submitting:
                # From here on a restart cannot tell whether the executor got the job, so it
                # ends it FAILED unless the executor's id was recorded (monitor.recover).
                self.store.mark_handed(row.job_id)
                row.handed = True
                await asyncio.to_thread(self._submit_blocking, row, psij_job)
        except Exception as exc:
            message = (
                str(exc) if isinstance(exc, _Refused) else f"submission failed: {describe(exc)}"
            )
            self.report(row.job_id, Report(JobState.FAILED, time.time(), message=message))
            return
        job.submitted = True
        # The executor reported QUEUED with the native id already; this only covers one that
        # did not (a lower state than the current one is never recorded).
        self.report(row.job_id, Report(JobState.QUEUED, time.time(), native_id=psij_job.native_id))
        if row.cancel_requested:  # asked for while the submission was under way
            await self._cancel_now(job)

    def _submit_blocking(self, row: JobRow, psij_job: psij.Job) -> None:
        executor = self.pool.get(row.executor)
        if row.exit_file is not None:  # local: say clearly what cannot start
            spec = JobSpec.model_validate(row.spec)
            directory = Path(spec.directory) if spec.directory else row.job_dir / "work"
            problem = local_problem(spec, directory)
            if problem is not None:
                raise _Refused(problem)
        executor.submit(psij_job)

    async def cancel(self, job_id: str) -> None:
        job = self.live.get(job_id)
        if job is None:
            return
        if not job.row.cancel_requested:
            job.row.cancel_requested = True
            self.store.mark_cancel(job_id)
        if job.submitted:
            await self._cancel_now(job)
        await self.barrier()

    async def _cancel_now(self, job: LiveJob) -> None:
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
            item = await self._queue.get()
            try:
                if isinstance(item, _Barrier):
                    if not item.future.done():
                        item.future.set_result(None)
                elif isinstance(item, Chunk):
                    await self._send_output(item)
                else:
                    await self._apply(item.job_id, item.report)
            except Exception:
                log.exception("psij: could not apply %r", item)

    async def _apply(self, job_id: str, report: Report) -> None:
        job = self.live.get(job_id)
        if job is None:
            return  # it ended already; executors may still report late
        row = job.row
        if report.native_id and row.native_id is None:
            row.native_id = report.native_id
            self.store.set_native_id(job_id, report.native_id)
        state = report.state
        if state is JobState.ACTIVE and not report.step and row.spec.get("stage_in"):
            state = JobState.STAGE_IN  # the job's wrapper stages in first, then says ACTIVE
        steps = plan(row.state, row.seq, effective_state(state, row.cancel_requested))
        if not steps:
            return
        ending: _Ending | None = None
        if steps[-1].state.final:
            disk = await asyncio.to_thread(_final_files, job.row, _unexplained(row, report))
            outcome = self._outcome(job, report, disk)
            # the exit file may say FAILED; the staging steps the job did come first
            steps = _final_steps(row, disk.staging, outcome.state)
            for chunk in disk.chunks:  # a streamed job's last output precedes its end
                await self._send_output(chunk)
            ending = _Ending(outcome, disk.stdout_tail, disk.stderr_tail)
        await self._record(job, steps, report, ending)

    async def _record(
        self, job: LiveJob, steps: list[Step], report: Report, ending: _Ending | None
    ) -> None:
        row = job.row
        entries: list[dict[str, Any]] = []
        async with self._writing:
            with self.journal.transaction():
                for step in steps:
                    exit_code, message = None, None
                    if step.state.final and ending is not None:
                        exit_code, message = ending.outcome.exit_code, ending.outcome.message
                    elif step.state is report.state:
                        message = report.message  # e.g. why a batch job waits
                    self.store.record(
                        row.job_id, step, report.time, exit_code=exit_code, message=message
                    )
                    event = self._event(row, step, report.time, message, ending)
                    await self.emit("job_status", event)
                    entries.append(
                        {"seq": step.seq, "state": step.state.value, "time": iso(report.time)}
                        | {"message": message}
                        | ({"exit_code": exit_code} if step.state.final else {})
                    )
        row.state, row.seq, row.updated = steps[-1].state, steps[-1].seq, report.time
        if ending is not None:
            row.exit_code, row.message = ending.outcome.exit_code, ending.outcome.message
        files.JobDir(row.job_dir).append_status(entries)
        if row.state.final:
            del self.live[row.job_id]
            job.done.set()

    @staticmethod
    def _outcome(job: LiveJob, report: Report, disk: _Disk) -> Outcome:
        """How the job ended: the local wrapper's exit code wins over psij's, which for an
        attached local process is always 0."""
        row = job.row
        state, code, message = report.state, report.exit_code, report.message
        if disk.staging_failure is not None:
            state, message = JobState.FAILED, disk.staging_failure
            code = disk.recorded_exit if disk.recorded_exit is not None else code
        elif disk.accounting is not None:  # the scheduler's word, where PSI/J had no exit code
            state = disk.accounting.state
            code, message = disk.accounting.exit_code, disk.accounting.message
        elif _unexplained(row, report):
            state = JobState.FAILED
            message = (
                f"the job left the {row.executor} queue without an exit code, and the "
                "scheduler's accounting does not say how it ended (cancelled or killed while "
                "the endpoint was away?)"
            )
        elif disk.recorded_exit is not None:
            code = disk.recorded_exit
            if state is JobState.COMPLETED and code != 0:
                state = JobState.FAILED
        elif (
            job.attached
            and row.exit_file is not None
            and state is JobState.COMPLETED
            and not row.cancel_requested  # ended by the cancel, which is what it reports
        ):
            state = JobState.FAILED
            message = (
                "the job's process ended while the endpoint was down and left no exit code "
                "(killed?)"
            )
        state = effective_state(state, row.cancel_requested)
        if state is JobState.FAILED and not message:
            message = _failure_message(code, disk.stderr_line)
        if state is JobState.CANCELED and not message:
            message = "canceled on request" if row.cancel_requested else "canceled"
        return Outcome(state, code, message[:MAX_MESSAGE] if message else None)

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
                await self.emit("job_output", event)
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
        ending: _Ending | None = None,
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


@dataclass(frozen=True)
class _Disk:
    """What a terminal event needs from the disk."""

    recorded_exit: int | None
    stdout_tail: str
    stderr_tail: str
    stderr_line: str
    chunks: list[Chunk]
    accounting: Accounted | None = None
    staging: list[JobState] = field(default_factory=list)  # steps the job's wrapper began
    staging_failure: str | None = None


def _final_steps(row: JobRow, staging: list[JobState], final: JobState) -> list[Step]:
    """The steps to a job's end: the staging steps it did and was not yet seen in, then the
    terminal state."""
    steps: list[Step] = []
    current, seq = row.state, row.seq
    for state in [*staging, final]:
        more = plan(current, seq, state)
        if more:
            steps.extend(more)
            current, seq = more[-1].state, more[-1].seq
    return steps


def _unexplained(row: JobRow, report: Report) -> bool:
    """A batch job PSI/J calls COMPLETED without an exit code: it only left the queue."""
    return (
        row.exit_file is None
        and row.native_id is not None
        and report.state is JobState.COMPLETED
        and report.exit_code is None
    )


def _final_files(row: JobRow, ask_scheduler: bool) -> _Disk:
    """Read what a terminal event needs (blocking: run it in a thread)."""
    found = None
    if ask_scheduler:
        assert row.native_id is not None
        found = accounted(row.executor, row.native_id)
    staging: list[JobState] = []
    failure = None
    if row.staged:
        began, failure = files.JobDir(row.job_dir).read_staging_steps()
        staging = [JobState(state) for state, _ in began]
    return _Disk(
        accounting=found,
        staging=staging,
        staging_failure=failure,
        recorded_exit=files.read_exit_code(row.exit_file) if row.exit_file else None,
        stdout_tail=files.read_tail(row.stdout_path),
        stderr_tail=files.read_tail(row.stderr_path),
        stderr_line=files.last_line(row.stderr_path),
        chunks=read_output(row, complete=True, budget=FINAL_FLUSH_BYTES),
    )


@dataclass(frozen=True)
class _Ending:
    outcome: Outcome
    stdout_tail: str
    stderr_tail: str


class _Refused(Exception):
    """The plugin itself refused to submit (the message says why)."""
