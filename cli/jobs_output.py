"""What the job commands do and show: the psij calls, the live state line, output streams,
JSON lines, tables and exit codes.

Job commands use no session: a job outlives the CLI process that submitted it.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import date, datetime
from typing import Any, TypeVar

from pydantic_core import to_jsonable_python
from rich import box
from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from orbit_mq.cli.output import console, human_duration, print_json
from orbit_mq.client import Fabric
from orbit_mq.config import Settings
from orbit_mq.errors import OrbitError
from orbit_mq.jobs import TERMINAL, Job, OutputChunk, Transition
from orbit_mq.proxy import PluginProxy

PLUGIN = "psij"
T = TypeVar("T")

STATE_STYLES = dict(
    NEW="dim", QUEUED="yellow", ACTIVE="cyan", COMPLETED="green", FAILED="red", CANCELED="magenta"
)
OUTPUT_FIELDS = ("stdout", "stderr", "stdout_offset", "stderr_offset")
err_console = Console(stderr=True, highlight=False)


def plain(value: Any) -> dict[str, Any]:
    """A JobInfo or JobStatus (a model where psij is installed here, else a dict) as a dict."""
    dumped = to_jsonable_python(value)
    if not isinstance(dumped, dict):
        raise OrbitError(f"the psij plugin answered {type(dumped).__name__}, not a job")
    return dumped


def without_output(status: dict[str, Any]) -> dict[str, Any]:
    """A job status without the output text and offsets: the job as `status` shows it."""
    return {key: value for key, value in status.items() if key not in OUTPUT_FIELDS}


def projected(status: Any, like: dict[str, Any]) -> dict[str, Any]:
    """The fields of `status` that the JobInfo `like` has: a later JobInfo of the same job."""
    latest = plain(status)
    return {key: latest.get(key, value) for key, value in like.items()}


def exit_code_for(state: str, exit_code: int | None) -> int:
    """The CLI's exit status for a finished job: 0 COMPLETED, the job's own code FAILED
    (1 when unknown or outside 1..255), 1 CANCELED or anything else."""
    if state == "COMPLETED":
        return 0
    if state == "FAILED" and exit_code is not None and 0 < exit_code < 256:
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
    return Text(state, style=STATE_STYLES.get(state, ""))


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


async def watch_to_end(job: Job, began: float, as_json: bool) -> Transition:
    """Follow the job's transitions to the terminal one: a live line on stderr while that is
    a terminal, or JSON lines."""
    line = StateLine(job.job_id, began)
    with nullcontext() if as_json else err_console.status(line):
        async for transition in job.watch():
            line.state, line.seq = transition.state, transition.seq
            if as_json:
                json_line(asdict(transition))
            if transition.terminal:
                return transition
    raise OrbitError(f"job {job.job_id}: its status events ended before a terminal state")


async def final_exit_code(job: Job, transition: Transition) -> int | None:
    """The job's exit code; asked of the endpoint when the transition came without one."""
    if transition.exit_code is not None or transition.state == "COMPLETED":
        return 0 if transition.exit_code is None else transition.exit_code
    code = plain(await job.status()).get("exit_code")
    return code if isinstance(code, int) else None


async def output_so_far(job: Job) -> AsyncIterator[OutputChunk]:
    """All output written so far, page by page (`job.output()` stops after the first page,
    and the plugin pages at 1 MiB)."""
    offsets = {"stdout": 0, "stderr": 0}
    while True:
        status = plain(await job.status(offsets["stdout"], offsets["stderr"]))
        chunks = [OutputChunk(s, offsets[s], status.get(s) or "") for s in offsets]
        if not any(chunk.text for chunk in chunks):
            return
        for chunk in chunks:
            if chunk.text:
                yield chunk
            offsets[chunk.stream] = int(status.get(f"{chunk.stream}_offset") or 0)


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


def cancel_line(job_id: str, info: dict[str, Any]) -> Text:
    """`job ID CANCELED`, or `job ID ACTIVE, cancel requested` while it is still stopping."""
    state = str(info.get("state"))
    line = summary_line(job_id, state, info.get("exit_code"), message=info.get("message"))
    return line if state in TERMINAL else line.append(", cancel requested")


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
    submitted = plain(job.info)
    await stream_output(job, follow=True, as_json=as_json)
    final = projected(job.info, submitted)  # job.info: the last status read, a terminal one
    state, code = str(final.get("state")), final.get("exit_code")
    code = code if isinstance(code, int) else None
    if as_json:
        json_line(final)
    else:
        elapsed, message = time.monotonic() - began, final.get("message")
        line = summary_line(job.job_id, state, code, elapsed=elapsed, message=message)
        err_console.print(line, soft_wrap=True)
    return exit_code_for(state, code)


# -- what the commands do -----------------------------------------------------------------------


async def on_psij(
    settings: Settings, endpoint: str, action: Callable[[PluginProxy], Awaitable[T]]
) -> T:
    """Connect, run `action` with a session-less psij proxy for `endpoint`, disconnect."""
    async with Fabric(settings) as fabric:
        return await action(await fabric.endpoint(endpoint).plugin(PLUGIN, session=False))


@dataclass(frozen=True)
class SubmitMode:
    executor: str
    stream: bool
    wait: bool
    follow: bool
    as_json: bool


async def submit_job(psij: PluginProxy, spec: dict[str, Any], mode: SubmitMode) -> int:
    """Submit; then wait or follow as asked. Returns the CLI's exit status."""
    began = time.monotonic()
    job: Job = await psij.submit_job(spec=spec, executor=mode.executor, stream_output=mode.stream)
    if mode.follow:
        return await follow_job(job, began, mode.as_json)
    if mode.wait:
        return await wait_job(job, began, mode.as_json)
    if mode.as_json:
        print_json(plain(job.info))
    else:
        print(job.job_id, flush=True)
    return 0


async def cancel_job(psij: PluginProxy, job_id: str, wait: float | None) -> dict[str, Any]:
    """Cancel; with `wait` (seconds), return the job once it reached a terminal state."""
    info = plain(await psij.cancel_job(job_id=job_id))
    if wait is None or str(info.get("state")) in TERMINAL:
        return info
    job = Job(psij, info)
    await job.wait(wait)
    return projected(await job.status(), info)


# -- status and jobs ---------------------------------------------------------------------------


def _overview(status: dict[str, Any]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    code = status.get("exit_code")
    state = styled_state(str(status.get("state")))
    rows: list[tuple[str, Any]] = [
        ("job", status.get("job_id")),
        ("state", state.append("" if code is None else f" (exit code {code})")),
        ("name", status.get("name")),
        ("command", shlex.join([status.get("executable", "?"), *status.get("arguments", [])])),
        ("directory", status.get("directory")),
        ("executor", status.get("executor")),
        ("native id", status.get("native_id")),
        ("queue", status.get("queue")),
        ("account", status.get("account")),
        ("session", status.get("session")),
        ("submitted", when(status.get("submitted"))),
        ("updated", when(status.get("updated"))),
        ("message", status.get("message")),
    ]
    for label, value in rows:
        if value not in (None, ""):
            grid.add_row(label, value if isinstance(value, Text) else Text(str(value)))
    return grid


def _history(status: dict[str, Any]) -> Table:
    table = Table(title="history", title_justify="left")
    for column in ("seq", "state", "time", "message"):
        table.add_column(column, justify="right" if column == "seq" else "left")
    for item in sorted(status.get("history") or [], key=lambda item: int(item.get("seq", 0))):
        table.add_row(
            str(item.get("seq", "")),
            styled_state(str(item.get("state"))),
            when(item.get("time")),
            Text(str(item.get("message") or "")),
        )
    return table


def status_view(status: dict[str, Any]) -> Group:
    """One job: what it is and where it is, then its state history."""
    return Group(_overview(status), _history(status))


def jobs_table(listing: dict[str, Any], endpoint: str) -> Table:
    """A page of `list_jobs` (the plugin lists the newest first)."""
    jobs = list(listing.get("jobs") or [])
    total = listing.get("total", len(jobs))
    title = f"{len(jobs)} of {total} job(s) on {endpoint}"
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("job", "state", "exit", "submitted", "executor", "native id", "name"):
        whole = column in ("job", "state", "exit", "submitted")  # the others give way when narrow
        table.add_column(column, justify="right" if column == "exit" else "left", no_wrap=whole)
    for job in jobs:
        code = job.get("exit_code")
        table.add_row(
            Text(str(job.get("job_id"))),
            styled_state(str(job.get("state"))),
            "" if code is None else str(code),
            when(job.get("submitted"), short=True),
            Text(str(job.get("executor") or "")),
            Text(str(job.get("native_id") or "")),
            Text(str(job.get("name") or "")),
        )
    return table
