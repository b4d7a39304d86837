"""Executable tasks: one child process each, in its own process group (so that stopping it
stops what it started), with the tails of stdout and stderr kept."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

from orbit_mq.contracts.tasks.models import TASK_TAIL, TaskSpec
from orbit_mq.workers.plugins.tasks.functions import Outcome

READ = 64 * 1024


class Stopped(Exception):
    """The task's process was stopped (canceled, timed out, or the endpoint stopping)."""


class RunningProcess:
    """A started executable task; `stop()` ends it (SIGTERM, then SIGKILL after the grace)."""

    def __init__(self, process: asyncio.subprocess.Process, grace: float) -> None:
        self.process = process
        self.grace = grace
        self.stopped_because: str | None = None

    async def stop(self, reason: str) -> None:
        if self.process.returncode is not None:
            return
        self.stopped_because = self.stopped_because or reason
        _signal_group(self.process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), self.grace)
        except TimeoutError:
            _signal_group(self.process.pid, signal.SIGKILL)


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def working_directory(spec: TaskSpec, default: Path) -> Path:
    return Path(spec.working_directory).expanduser() if spec.working_directory else default


async def start(
    task_id: int, uid: str, spec: TaskSpec, directory: Path, grace: float
) -> RunningProcess | Outcome:
    """Start the task's process, or the outcome of failing to."""
    assert spec.executable is not None
    cwd = working_directory(spec, directory)
    env = {**os.environ, **spec.environment, "ORBIT_MQ_TASK_UID": uid}
    try:
        process = await asyncio.create_subprocess_exec(
            spec.executable,
            *spec.arguments,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:  # not found, not executable, a bad working directory
        return Outcome(task_id, False, error=f"cannot start {spec.executable}: {exc}")
    return RunningProcess(process, grace)


async def finish(task_id: int, running: RunningProcess, timeout: float | None) -> Outcome:
    """Wait for the process to end (stopping it after `timeout` s); its outcome."""
    process = running.process
    assert process.stdout is not None and process.stderr is not None
    reading = asyncio.gather(_tail(process.stdout), _tail(process.stderr))
    try:
        await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        await running.stop(f"timed out after {timeout} s")
        await process.wait()
    out, err = await reading
    code = process.returncode
    assert code is not None
    if running.stopped_because is not None:
        return Outcome(
            task_id, False, error=running.stopped_because, stdout=out, stderr=err, exit_code=code
        )
    if code != 0:
        reason = f"exit code {code}" if code > 0 else f"killed by signal {-code}"
        return Outcome(task_id, False, error=reason, stdout=out, stderr=err, exit_code=code)
    return Outcome(task_id, True, stdout=out, stderr=err, exit_code=0)


async def _tail(stream: asyncio.StreamReader) -> str:
    kept = b""
    while chunk := await stream.read(READ):
        kept = (kept + chunk)[-TASK_TAIL:]
    return kept.decode(errors="replace")
