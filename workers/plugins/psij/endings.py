"""How a psij job ended: what its terminal event needs from the disk (exit-code file, output
tails, staging steps, the scheduler's accounting), read in a worker thread, and the outcome the
tracker records from it together with what the executor reported."""

from __future__ import annotations

from dataclasses import dataclass, field

from orbit_mq.contracts.psij.models import JobState
from orbit_mq.workers.plugins.psij import files
from orbit_mq.workers.plugins.psij.accounting import Accounted, accounted
from orbit_mq.workers.plugins.psij.files import Chunk, read_output
from orbit_mq.workers.plugins.psij.states import Step, effective_state, plan
from orbit_mq.workers.plugins.psij.store import JobRow

FINAL_FLUSH_BYTES = 1024 * 1024  # output still announced per stream when a job ends
MAX_MESSAGE = 2000


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


def failure_message(code: int | None, stderr_line: str) -> str:
    if code is None:
        return "the executor reported the job failed"
    return f"exit code {code}: {stderr_line}" if stderr_line else f"exit code {code}"


def outcome(row: JobRow, attached: bool, report: Report, disk: Disk) -> Outcome:
    """How the job ended: the local wrapper's exit code wins over psij's, which for an
    attached local process is always 0."""
    state, code, message = report.state, report.exit_code, report.message
    if disk.staging_failure is not None:
        state, message = JobState.FAILED, disk.staging_failure
        code = disk.recorded_exit if disk.recorded_exit is not None else code
    elif disk.accounting is not None:  # the scheduler's word, where PSI/J had no exit code
        state = disk.accounting.state
        code, message = disk.accounting.exit_code, disk.accounting.message
    elif unexplained(row, report):
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
        attached
        and row.exit_file is not None
        and state is JobState.COMPLETED
        and not row.cancel_requested  # ended by the cancel, which is what it reports
    ):
        state = JobState.FAILED
        message = (
            "the job's process ended while the endpoint was down and left no exit code (killed?)"
        )
    state = effective_state(state, row.cancel_requested)
    if state is JobState.FAILED and not message:
        message = failure_message(code, disk.stderr_line)
    if state is JobState.CANCELED and not message:
        message = "canceled on request" if row.cancel_requested else "canceled"
    return Outcome(state, code, message[:MAX_MESSAGE] if message else None)


@dataclass(frozen=True)
class Disk:
    """What a terminal event needs from the disk."""

    recorded_exit: int | None
    stdout_tail: str
    stderr_tail: str
    stderr_line: str
    chunks: list[Chunk]
    accounting: Accounted | None = None
    staging: list[JobState] = field(default_factory=list)  # steps the job's wrapper began
    staging_failure: str | None = None


def final_steps(row: JobRow, staging: list[JobState], final: JobState) -> list[Step]:
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


def unexplained(row: JobRow, report: Report) -> bool:
    """A batch job PSI/J calls COMPLETED without an exit code: it only left the queue."""
    return (
        row.exit_file is None
        and row.native_id is not None
        and report.state is JobState.COMPLETED
        and report.exit_code is None
    )


def final_files(row: JobRow, ask_scheduler: bool) -> Disk:
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
    return Disk(
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
class Ending:
    outcome: Outcome
    stdout_tail: str
    stderr_tail: str
