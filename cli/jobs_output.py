"""What the job commands do and show: the psij calls, the live state line, output streams,
JSON lines, tables and exit codes.

Job commands use no session: a job outlives the CLI process that submitted it.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
import time
from collections.abc import AsyncIterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import Any, TypeVar

from pydantic_core import to_jsonable_python
from rich import box
from rich.console import Console, Group
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from orbit_mq.cli.output import console, human_duration, print_json
from orbit_mq.contracts.psij import (
    Job,
    JobList,
    JobNotFound,
    JobSpec,
    JobState,
    JobStatus,
    JobStatusEvent,
    OutputChunk,
)
from orbit_mq.contracts.psij import PsiJ as PsiJContract
from orbit_mq.errors import OrbitError
from orbit_mq.jobs import pieces_of

T = TypeVar("T")

STATE_STYLES = {
    JobState.NEW: "dim",
    JobState.QUEUED: "yellow",
    JobState.STAGE_IN: "blue",
    JobState.ACTIVE: "cyan",
    JobState.STAGE_OUT: "blue",
    JobState.CLEANUP: "blue",
    JobState.COMPLETED: "green",
    JobState.FAILED: "red",
    JobState.CANCELED: "magenta",
}
OUTPUT_FIELDS = {"stdout", "stderr", "stdout_offset", "stderr_offset"}
err_console = Console(stderr=True, highlight=False)


def job_json(job: Job) -> dict[str, Any]:
    """A job (or a job status, without its output) as JSON: what `--json` prints of a job."""
    dumped: dict[str, Any] = job.model_dump(mode="json", exclude=OUTPUT_FIELDS)
    return dumped


def as_job(status: Job) -> Job:
    """Only the Job part of a status (a later state of a submitted job)."""
    return Job.model_validate(status.model_dump(include=set(Job.model_fields)))


def exit_code_for(state: str, exit_code: int | None) -> int:
    """The CLI's exit status for a finished job: 0 COMPLETED, the job's own code FAILED
    (1 when unknown or outside 1..255), 1 CANCELED or anything else."""
    if state == JobState.COMPLETED:
        return 0
    if state == JobState.FAILED and exit_code is not None and 0 < exit_code < 256:
        return exit_code
    return 1


def json_line(value: Any) -> None:
    """`value` as one compact JSON line on stdout."""
    sys.stdout.write(json.dumps(to_jsonable_python(value), ensure_ascii=False) + "\n")
    sys.stdout.flush()


def short_duration(seconds: float) -> str:
    """`0.4s`, `12.0s`, then as `human_duration`: `1m 15s`, `2h 5m`."""
    return f"{seconds:.1f}s" if seconds < 60 else human_duration(seconds)


def styled_state(state: str) -> Text:
    known = state in JobState.__members__
    return Text(state, style=STATE_STYLES[JobState(state)] if known else "")


def when(value: Any, short: bool = False) -> str:
    """An ISO time as local `YYYY-MM-DD HH:MM:SS` (`short`: `HH:MM:SS` today, else
    `MM-DD HH:MM`); other values as they are."""
    try:
        moment = datetime.fromisoformat(str(value)).astimezone() if value else None
    except ValueError:
        return str(value)
    if moment is None:
        return ""
    if not short:
        return moment.strftime("%Y-%m-%d %H:%M:%S")
    return moment.strftime("%H:%M:%S" if moment.date() == date.today() else "%m-%d %H:%M")


# -- following a job -----------------------------------------------------------------------------


@dataclass
class StateLine:
    """`job ID  ACTIVE  seq 3  4.2s`, drawn afresh at each refresh of a live spinner."""

    job_id: str
    began: float
    state: str = "submitted"
    seq: int = 0

    def __rich__(self) -> Text:
        seq = f"seq {self.seq}" if self.seq else ""
        elapsed = short_duration(time.monotonic() - self.began)
        return Text.assemble(
            f"job {self.job_id}  ", styled_state(self.state), f"  {seq}  {elapsed}"
        )


async def watch_to_end(job: Job, began: float, as_json: bool) -> JobStatusEvent:
    """Follow the job's transitions to the terminal one: a live line on stderr while that is
    a terminal, or JSON lines."""
    line = StateLine(job.job_id, began)
    with nullcontext() if as_json else err_console.status(line):
        async for transition in job.watch():
            line.state, line.seq = transition.state, transition.seq
            if as_json:
                json_line(
                    transition.model_dump(mode="json", exclude={"stdout_tail", "stderr_tail"})
                )
            if transition.state.final:
                return transition
    raise OrbitError(f"job {job.job_id}: its status events ended before a terminal state")


async def final_exit_code(job: Job, transition: JobStatusEvent) -> int | None:
    """The job's exit code; asked of the endpoint when the transition came without one."""
    if transition.exit_code is not None or transition.state is JobState.COMPLETED:
        return 0 if transition.exit_code is None else transition.exit_code
    return (await job.status()).exit_code


async def output_so_far(job: Job) -> AsyncIterator[OutputChunk]:
    """All output written so far, page by page (`job.output()` stops after the first page,
    and the plugin pages at 1 MiB)."""
    out = err = 0
    while True:
        status = await job.status(out, err)
        pieces = [piece for piece in pieces_of(status, out, err) if piece.text]
        if not pieces:
            return
        for piece in pieces:
            yield piece
        out, err = status.stdout_offset, status.stderr_offset


async def stream_output(job: Job, *, follow: bool, as_json: bool, stderr: bool = True) -> None:
    """The job's output as it is written (`follow`) or so far: its stdout to stdout and its
    stderr to stderr, or both as JSON lines."""
    async for chunk in job.output(follow=True) if follow else output_so_far(job):
        if chunk.stream == "stderr" and not stderr:
            continue
        if as_json:
            json_line({"job_id": job.job_id, **asdict(chunk)})
            continue
        stream = sys.stdout if chunk.stream == "stdout" else sys.stderr
        stream.write(chunk.text)
        stream.flush()


def summary_line(
    job_id: str, state: str, exit_code: Any, *, elapsed: float | None = None, message: Any = None
) -> Text:
    """`job ID FAILED (exit code 2) after 2.1s: MESSAGE`."""
    code = "" if exit_code is None else f" (exit code {exit_code})"
    after = "" if elapsed is None else f" after {short_duration(elapsed)}"
    return Text.assemble(f"job {job_id} ", styled_state(state), code + after).append(
        f": {message}" if message else ""
    )


def cancel_line(job: Job) -> Text:
    """`job ID CANCELED`, or `job ID ACTIVE, cancel requested` while it is still stopping."""
    line = summary_line(job.job_id, job.state, job.exit_code, message=job.message)
    return line if job.state.final else line.append(", cancel requested")


async def wait_job(job: Job, began: float, as_json: bool) -> int:
    """`submit --wait`: the job id, a live state line, the final state; its exit status."""
    if not as_json:
        print(job.job_id, flush=True)
    final = await watch_to_end(job, began, as_json)
    code = await final_exit_code(job, final)
    if not as_json:
        elapsed = time.monotonic() - began
        line = summary_line(job.job_id, final.state, code, elapsed=elapsed, message=final.message)
        console.print(line, soft_wrap=True)
    return exit_code_for(final.state, code)


async def follow_job(job: Job, began: float, as_json: bool) -> int:
    """`submit --follow`: the output as written, then the final state; its exit status."""
    if not as_json:
        err_console.print(f"job {job.job_id} submitted", markup=False)
    await stream_output(job, follow=True, as_json=as_json)  # the handle takes the last state
    if as_json:
        json_line(job_json(as_job(job)))
    else:
        elapsed = time.monotonic() - began
        line = summary_line(
            job.job_id, job.state, job.exit_code, elapsed=elapsed, message=job.message
        )
        err_console.print(line, soft_wrap=True)
    return exit_code_for(job.state, job.exit_code)


# -- what the commands do -----------------------------------------------------------------------


@dataclass(frozen=True)
class SubmitMode:
    executor: str
    stream: bool
    wait: bool
    follow: bool
    as_json: bool


async def submit_job(psij: PsiJContract, spec: dict[str, Any], mode: SubmitMode) -> int:
    """Submit; then wait or follow as asked. Returns the CLI's exit status."""
    began = time.monotonic()
    job = await psij.submit_job(
        spec=JobSpec.model_validate(spec), executor=mode.executor, stream_output=mode.stream
    )
    if mode.follow:
        return await follow_job(job, began, mode.as_json)
    if mode.wait:
        return await wait_job(job, began, mode.as_json)
    if mode.as_json:
        print_json(job_json(job))
    else:
        print(job.job_id, flush=True)
    return 0


async def cancel_job(psij: PsiJContract, job_id: str, wait: float | None) -> Job:
    """Cancel; with `wait` (seconds), return the job once it reached a terminal state."""
    job = await psij.cancel_job(job_id=job_id)
    if wait is not None and not job.state.final:
        await job.wait(wait)
        await job.status()  # the handle takes the terminal state
    return as_job(job)


REMOVE_PAGE = 1000  # jobs listed per round of remove_ended
REMOVE_AT_ONCE = 64  # remove_job calls in flight


async def remove_ended(
    psij: PsiJContract, *, state: JobState | None, before: datetime, progress: bool
) -> list[Job]:
    """Remove every job that ended before `before` (in `state`, if given), a page at a time."""
    first = await psij.list_jobs(state=state, ended_before=before, limit=REMOVE_PAGE)
    removed: list[Job] = []
    gate = asyncio.Semaphore(REMOVE_AT_ONCE)

    async def remove(job_id: str) -> Job | None:
        async with gate:
            try:
                return as_job(await psij.remove_job(job_id=job_id))
            except JobNotFound:  # removed meanwhile (by retention or another caller)
                return None

    bar = Progress(console=err_console, disable=not progress or first.total < REMOVE_PAGE // 10)
    with bar:
        line = bar.add_task("removing jobs", total=first.total)
        page = first
        # Bounded: every round removes a page, and more may end meanwhile.
        for _ in range(first.total // REMOVE_PAGE + 2):
            if not page.jobs:
                break
            done = await asyncio.gather(*(remove(job.job_id) for job in page.jobs))
            removed.extend(job for job in done if job is not None)
            bar.update(line, completed=len(removed))
            page = await psij.list_jobs(state=state, ended_before=before, limit=REMOVE_PAGE)
    return removed


# -- status and jobs ---------------------------------------------------------------------------


def _overview(status: JobStatus) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    code = status.exit_code
    state = styled_state(status.state)
    rows: list[tuple[str, Any]] = [
        ("job", status.job_id),
        ("state", state.append("" if code is None else f" (exit code {code})")),
        ("name", status.name),
        ("command", shlex.join([status.executable, *status.arguments])),
        ("directory", status.directory),
        ("executor", status.executor),
        ("native id", status.native_id),
        ("queue", status.queue),
        ("account", status.account),
        ("session", status.session),
        ("submitted", when(status.submitted.isoformat())),
        ("updated", when(status.updated.isoformat())),
        ("message", status.message),
    ]
    for label, value in rows:
        if value not in (None, ""):
            grid.add_row(label, value if isinstance(value, Text) else Text(str(value)))
    return grid


def _history(status: JobStatus) -> Table:
    table = Table(title="history", title_justify="left")
    for column in ("seq", "state", "time", "message"):
        table.add_column(column, justify="right" if column == "seq" else "left")
    for item in sorted(status.history, key=lambda item: item.seq):
        table.add_row(
            str(item.seq),
            styled_state(item.state),
            when(item.time.isoformat()),
            Text(item.message or ""),
        )
    return table


def status_view(status: JobStatus) -> Group:
    """One job: what it is and where it is, then its state history."""
    return Group(_overview(status), _history(status))


def jobs_table(listing: JobList, endpoint: str) -> Table:
    """A page of `list_jobs` (the plugin lists the newest first)."""
    title = f"{len(listing.jobs)} of {listing.total} job(s) on {endpoint}"
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("job", "state", "exit", "submitted", "executor", "native id", "name"):
        whole = column in ("job", "state", "exit", "submitted")  # the others give way when narrow
        table.add_column(column, justify="right" if column == "exit" else "left", no_wrap=whole)
    for job in listing.jobs:
        table.add_row(
            Text(job.job_id),
            styled_state(job.state),
            "" if job.exit_code is None else str(job.exit_code),
            when(job.submitted.isoformat(), short=True),
            Text(job.executor),
            Text(job.native_id or ""),
            Text(job.name or ""),
        )
    return table
