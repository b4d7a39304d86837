"""The worker processes of Python function tasks (orbit_mq/workers/plugins/tasks/worker.py),
fed a chunk at a time, answering one outcome per call.

Each worker is a fresh interpreter (not a fork of the endpoint, whose threads and event loop
a fork would copy half-way, and not an import of the endpoint's main module). Since outcomes
come one by one, a worker that dies — a segfault, `os._exit`, the OOM killer, or a kill
because its call was canceled or ran past its timeout — leaves no doubt about which call it
was running: the calls after it never started.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle
import sys
from collections.abc import AsyncIterator

from orbit_mq.waiting import wait_within
from orbit_mq.workers.logs import bounded_logger
from orbit_mq.workers.plugins.tasks.functions import Call, Outcome
from orbit_mq.workers.plugins.tasks.worker import HEADER

log = bounded_logger("orbit_mq.plugin.tasks")
WORKER_MODULE = "orbit_mq.workers.plugins.tasks.worker"


class WorkerDied(Exception):
    """The worker process died while running a call; `target` is the call it was killed for
    (None when it died by itself: then the call it ran killed it)."""

    def __init__(self, reason: str, target: int | None) -> None:
        super().__init__(reason)
        self.target = target


class Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.running: int | None = None  # the id of the call it runs
        self.killed_because: str | None = None
        self.killed_for: int | None = None

    @classmethod
    async def start(cls) -> Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-P",  # the endpoint's working directory is not a source of modules
            "-m",
            WORKER_MODULE,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(process)

    @property
    def alive(self) -> bool:
        return self.process.returncode is None and self.killed_because is None

    async def run(self, calls: list[Call], grace: float) -> AsyncIterator[Outcome]:
        """Outcomes as the calls return; WorkerDied if the worker dies first."""
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        payload = pickle.dumps([tuple(call) for call in calls], protocol=pickle.HIGHEST_PROTOCOL)
        try:
            stdin.write(HEADER.pack(len(payload)) + payload)
            await stdin.drain()
            for call in calls:
                self.running = call.id
                limit = None if call.timeout is None else call.timeout + grace
                try:
                    header = await wait_within(stdout.readexactly(HEADER.size), limit)
                except TimeoutError:  # past its timeout and deaf to SIGALRM (C code)
                    self.kill(f"timed out after {call.timeout} s", call.id)
                    raise WorkerDied(f"timed out after {call.timeout} s", call.id) from None
                (size,) = HEADER.unpack(header)
                yield Outcome(*pickle.loads(await stdout.readexactly(size)))
        except (asyncio.IncompleteReadError, ConnectionError, BrokenPipeError) as exc:
            await self.process.wait()
            code = self.process.returncode
            why = self.killed_because or f"its worker process died (exit code {code})"
            raise WorkerDied(why, self.killed_for) from exc
        finally:
            self.running = None

    def kill(self, reason: str, target: int | None = None) -> None:
        if self.killed_because is None:
            self.killed_because, self.killed_for = reason, target
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()


class FunctionPool:
    def __init__(self, workers: int, grace: float) -> None:
        self.workers = workers
        self.grace = grace
        self._idle: list[Worker] = []
        self._busy: set[Worker] = set()
        self.restarts = 0

    async def run(self, calls: list[Call]) -> AsyncIterator[Outcome]:
        """Run a chunk in an idle worker (the caller keeps at most `workers` chunks running)."""
        worker = self._idle.pop() if self._idle else await Worker.start()
        self._busy.add(worker)
        try:
            async for outcome in worker.run(calls, self.grace):
                yield outcome
        finally:
            self._busy.discard(worker)
            if worker.alive:
                self._idle.append(worker)
            else:
                self.restarts += 1
                await _reap(worker)

    def kill_running(self, task_id: int, reason: str) -> bool:
        """Kill the worker running call `task_id` (canceled); whether one was."""
        for worker in self._busy:
            if worker.running == task_id:
                worker.kill(reason, task_id)
                return True
        return False

    async def stop(self) -> None:
        workers = [*self._idle, *self._busy]
        self._idle.clear()
        for worker in workers:
            worker.kill("the endpoint stopped while the task ran")
        await asyncio.gather(*(_reap(worker) for worker in workers))


async def _reap(worker: Worker) -> None:
    with contextlib.suppress(ProcessLookupError):
        await worker.process.wait()
