"""Executable tasks: one child process each, in its own process group (so that stopping it
stops what it started), with the tails of stdout and stderr kept.

Processes are started with `subprocess.Popen` (vfork and exec: its cost does not grow with the
endpoint's memory, unlike the fork of uvloop's spawn, measured at 2-3 times slower here) and
watched from the event loop through non-blocking pipes and a pidfd, so no thread waits for
them. Where pidfd_open is missing (Linux before 5.3), a worker thread waits instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from pathlib import Path

from orbit_mq.contracts.tasks.models import TASK_TAIL, TaskSpec
from orbit_mq.waiting import wait_within
from orbit_mq.workers.plugins.tasks.functions import Outcome

READ = 64 * 1024


class Tail:
    """The last TASK_TAIL bytes of one pipe, read as they come; `done` at end of file."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self.loop, self.fd = loop, fd
        self.kept = b""
        self.done = loop.create_future()
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._read)

    def _read(self) -> None:
        try:
            chunk = os.read(self.fd, READ)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if chunk:
            self.kept = (self.kept + chunk)[-TASK_TAIL:]
        else:
            self.close()

    def close(self) -> None:
        if not self.done.done():
            self.loop.remove_reader(self.fd)
            os.close(self.fd)
            self.done.set_result(None)

    @property
    def text(self) -> str:
        return self.kept.decode(errors="replace")


class RunningProcess:
    """A started executable task; `stop()` ends it (SIGTERM, then SIGKILL after the grace)."""

    def __init__(
        self, popen: subprocess.Popen[bytes], pipes: tuple[int, int], grace: float
    ) -> None:
        self.popen = popen
        self.grace = grace
        self.stopped_because: str | None = None
        loop = asyncio.get_running_loop()
        self.stdout, self.stderr = Tail(loop, pipes[0]), Tail(loop, pipes[1])
        self.exited: asyncio.Future[int] = loop.create_future()
        self._watch_exit(loop)

    def _watch_exit(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            pidfd = os.pidfd_open(self.popen.pid)
        except (AttributeError, OSError):  # no pidfd: a thread waits
            waiting = asyncio.ensure_future(asyncio.to_thread(self.popen.wait))
            waiting.add_done_callback(lambda done: self._exit(done.result()))
            return

        def reap() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            self._exit(self.popen.wait())  # it has exited: this does not block

        loop.add_reader(pidfd, reap)

    def _exit(self, code: int) -> None:
        if not self.exited.done():
            self.exited.set_result(code)

    async def stop(self, reason: str) -> None:
        if self.exited.done():
            return
        self.stopped_because = self.stopped_because or reason
        _signal_group(self.popen.pid, signal.SIGTERM)
        try:
            await wait_within(asyncio.shield(self.exited), self.grace)
        except TimeoutError:
            _signal_group(self.popen.pid, signal.SIGKILL)


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def working_directory(spec: TaskSpec, default: Path) -> Path:
    return Path(spec.working_directory).expanduser() if spec.working_directory else default


def start(
    task_id: int, uid: str, spec: TaskSpec, directory: Path, grace: float
) -> RunningProcess | Outcome:
    """Start the task's process, or the outcome of failing to (on the event loop: a vfork and
    an exec take well under a millisecond)."""
    assert spec.executable is not None
    env = {**os.environ, **spec.environment, "ORBIT_MQ_TASK_UID": uid}
    (out, out_w), (err, err_w) = os.pipe(), os.pipe()
    try:
        popen = subprocess.Popen(
            [spec.executable, *spec.arguments],
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            cwd=working_directory(spec, directory),
            env=env,
            start_new_session=True,
        )
    except (OSError, ValueError, subprocess.SubprocessError) as exc:  # not found, not runnable
        os.close(out)
        os.close(err)
        return Outcome(task_id, False, error=f"cannot start {spec.executable}: {exc}")
    finally:
        os.close(out_w)
        os.close(err_w)
    return RunningProcess(popen, (out, err), grace)


async def finish(task_id: int, running: RunningProcess, timeout: float | None) -> Outcome:
    """Wait for the process to end (stopping it after `timeout` s); its outcome."""
    try:
        code = await wait_within(asyncio.shield(running.exited), timeout)
    except TimeoutError:
        await running.stop(f"timed out after {timeout} s")
        code = await running.exited
    # What it left running in the background may hold the pipes open: not for long.
    await asyncio.wait([running.stdout.done, running.stderr.done], timeout=running.grace)
    running.stdout.close()
    running.stderr.close()
    out, err = running.stdout.text, running.stderr.text
    if running.stopped_because is not None:
        return Outcome(
            task_id, False, error=running.stopped_because, stdout=out, stderr=err, exit_code=code
        )
    if code != 0:
        reason = f"exit code {code}" if code > 0 else f"killed by signal {-code}"
        return Outcome(task_id, False, error=reason, stdout=out, stderr=err, exit_code=code)
    return Outcome(task_id, True, stdout=out, stderr=err, exit_code=0)
