"""Runs accepted tasks: takes them from the journal in order, a bounded number at a time,
hands Python functions to the worker pool in chunks and starts executables up to a limit,
and turns every outcome into a transition for the recorder.

Memory stays bounded whatever the number of accepted tasks: at most `in_memory` tasks are
loaded; the rest wait in the journal (`tasks.state = 'NEW'`) and are read in id order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from orbit_mq.contracts.tasks.models import TaskSpec, TaskState
from orbit_mq.waiting import wait_within
from orbit_mq.workers.plugins.tasks import executables
from orbit_mq.workers.plugins.tasks.backends import DEFAULT_BACKEND
from orbit_mq.workers.plugins.tasks.functions import Call, Outcome
from orbit_mq.workers.plugins.tasks.pool import FunctionPool, WorkerDied
from orbit_mq.workers.plugins.tasks.recorder import Recorder
from orbit_mq.workers.plugins.tasks.remote import RhapsodyBackend
from orbit_mq.workers.plugins.tasks.settings import TasksSettings
from orbit_mq.workers.plugins.tasks.store import QueuedTask, Record, TaskStore

CHUNK = 64  # most function calls handed to a worker at once
IDLE_CHECK = 1.0  # s: the runner looks at the journal at least this often
STOPPED = "the endpoint stopped while the task ran"


@dataclass(eq=False, slots=True)
class Work:
    """A loaded task, from NEW until its terminal state is written."""

    row: QueuedTask
    fields: dict[str, Any]  # its TaskSpec as JSON (validated when it was submitted)
    state: TaskState
    seq: int
    attempt: int
    process: executables.RunningProcess | None = None
    started: float | None = None  # when its current attempt started
    handed: RhapsodyBackend | None = None  # the rhapsody-py backend running it

    @classmethod
    def of(cls, row: QueuedTask) -> Work:
        return cls(row, orjson.loads(row.spec), row.state, row.seq, row.attempt)

    @property
    def spec(self) -> TaskSpec:
        return TaskSpec.model_validate(self.fields)

    @property
    def is_function(self) -> bool:
        return self.row.kind == "function"


class Runner:
    def __init__(
        self, store: TaskStore, recorder: Recorder, settings: TasksSettings, directory: Path
    ) -> None:
        self.store = store
        self.recorder = recorder
        self.settings = settings
        self.directory = directory
        self.pool = FunctionPool(settings.workers, settings.kill_grace)
        self.loaded: dict[int, Work] = {}
        self._functions: deque[Work] = deque()
        self._executables: deque[Work] = deque()
        self._elsewhere: deque[Work] = deque()  # for rhapsody-py's backends
        self._remote: dict[str, RhapsodyBackend] = {}
        self._chunks = 0  # chunks in the pool
        self._processes = 0  # executables running
        self._cursor = 0  # the highest id loaded from the journal
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Settle what a previous run left RUNNING, then start taking tasks."""
        for row in self.store.in_state(TaskState.RUNNING):
            self._after_failure(Work.of(row), Outcome(row.id, False, error=STOPPED))
        await self.recorder.flush()
        self._task = asyncio.create_task(self._run(), name="orbit-tasks-runner")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        running = [work for work in self.loaded.values() if work.state is TaskState.RUNNING]
        for work in running:
            if work.process is not None:
                await work.process.stop(STOPPED)
        await self.pool.stop()
        for backend in self._remote.values():
            with contextlib.suppress(Exception):  # it is going away either way
                await backend.stop()
        if self._running:  # chunks see their worker gone and settle their calls
            await asyncio.wait(self._running, timeout=self.settings.kill_grace)
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        for work in running:  # what a restart would conclude, concluded now
            if work.state is TaskState.RUNNING:
                self._after_failure(work, Outcome(work.row.id, False, error=STOPPED))

    def wake(self) -> None:
        self._wake.set()

    def written(self, records: list[Record]) -> None:
        """The recorder wrote these: ended tasks leave memory."""
        for record in records:
            if record.state.final:
                self.loaded.pop(record.id, None)
        self._wake.set()

    # -- cancellation ----------------------------------------------------------------------

    async def cancel(self, ids: list[int]) -> int:
        """Cancel tasks that have not ended; how many were."""
        missing = [task_id for task_id in ids if task_id not in self.loaded]
        for row in self.store.queued_by_id(missing):
            if not row.state.final and row.id not in self.loaded:
                self.loaded[row.id] = Work.of(row)  # held, so the journal is not read again
        canceled = 0
        for task_id in ids:
            work = self.loaded.get(task_id)
            if work is None or work.state.final:
                continue
            canceled += 1
            process, running = work.process, work.state is TaskState.RUNNING
            self._transition(work, TaskState.CANCELED, Outcome(task_id, False, error="canceled"))
            if process is not None:
                await process.stop("canceled")
            elif work.handed is not None:
                await work.handed.cancel(task_id)
            elif running and work.is_function:
                self.pool.kill_running(task_id, "canceled")
        return canceled

    # -- the loop --------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await wait_within(self._wake.wait(), IDLE_CHECK)
            self._wake.clear()
            self._load()
            self._dispatch()

    def _load(self) -> None:
        room = self.settings.in_memory - len(self.loaded)
        if room <= 0:
            return
        for row in self.store.in_state(TaskState.NEW, self._cursor, room):
            self._cursor = max(self._cursor, row.id)
            if row.id not in self.loaded:
                self._queue(Work.of(row))

    def _queue(self, work: Work) -> None:
        self.loaded[work.row.id] = work
        if work.row.backend != DEFAULT_BACKEND:
            self._elsewhere.append(work)
        elif work.is_function:
            self._functions.append(work)
        else:
            self._executables.append(work)

    def _dispatch(self) -> None:
        while self._functions and self._chunks < self.pool.workers:  # a chunk per worker
            chunk = self._next_chunk()
            if chunk:
                self._chunks += 1
                self._spawn(self._run_chunk(chunk))
        while self._executables and self._processes < self.settings.max_executables:
            work = self._executables.popleft()
            if work.state is TaskState.NEW:
                self._processes += 1
                self._spawn(self._run_executable(work))
        if self._elsewhere:
            self._hand_over()

    # -- rhapsody-py's backends ------------------------------------------------------------

    def _hand_over(self) -> None:
        groups: dict[str, list[Work]] = {}
        while self._elsewhere:
            work = self._elsewhere.popleft()
            if work.state is TaskState.NEW:
                groups.setdefault(work.row.backend, []).append(work)
        for name, works in groups.items():
            backend = self._remote.get(name)
            if backend is None:
                backend = self._remote[name] = RhapsodyBackend(
                    name, self._started_elsewhere, self._ended_elsewhere
                )
            for work in works:
                work.handed = backend
            batch = [(work.row.id, work.row.uid, work.fields) for work in works]
            self._spawn(backend.submit(batch))

    def _started_elsewhere(self, task_id: int) -> None:
        work = self.loaded.get(task_id)
        if work is not None and work.state is TaskState.NEW:
            self._transition(work, TaskState.RUNNING)

    def _ended_elsewhere(self, task_id: int, outcome: Outcome) -> None:
        work = self.loaded.get(task_id)
        if work is None:
            return
        work.handed = None
        if work.state is TaskState.NEW:  # the backend did not say it ran: it did
            self._transition(work, TaskState.RUNNING)
        self._finished(work, outcome)

    def _next_chunk(self) -> list[Work]:
        # Small chunks when little waits (spread over the workers), up to CHUNK when much does.
        size = max(1, min(CHUNK, len(self._functions) // self.pool.workers))
        chunk: list[Work] = []
        while self._functions and len(chunk) < size:
            work = self._functions.popleft()
            if work.state is TaskState.NEW:  # else canceled while it waited
                chunk.append(work)
        return chunk

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _run_chunk(self, chunk: list[Work]) -> None:
        """Run a chunk in a worker. The worker runs its calls one after the other, so each
        call is RUNNING from the outcome of the one before it (the first from the start)."""
        done = 0
        try:
            self._start(chunk[0])
            try:
                async for outcome in self.pool.run([_call(work) for work in chunk]):
                    if done + 1 < len(chunk):
                        self._start(chunk[done + 1])
                    self._finished(chunk[done], outcome)
                    done += 1
            except WorkerDied as exc:
                self._worker_died(chunk[done], chunk[done + 1 :], exc)
        finally:
            self._chunks -= 1
            self._wake.set()

    def _start(self, work: Work) -> None:
        if work.state is TaskState.NEW:  # else canceled while it waited in the chunk
            self._transition(work, TaskState.RUNNING)

    def _worker_died(self, current: Work, unstarted: list[Work], exc: WorkerDied) -> None:
        """The call that ran when its worker died failed, if it caused that (a crash, its
        own timeout); the calls after it never started and wait again."""
        if exc.target in (None, current.row.id):
            self._finished(current, Outcome(current.row.id, False, error=str(exc)))
        elif current.state is TaskState.RUNNING:  # killed for another call's cancel
            again = "its worker process was stopped under it; it waits again"
            self._transition(current, TaskState.NEW, Outcome(current.row.id, False, error=again))
            unstarted = [current, *unstarted]
        for work in reversed(unstarted):
            if work.state is TaskState.NEW:
                self._functions.appendleft(work)

    async def _run_executable(self, work: Work) -> None:
        try:
            self._transition(work, TaskState.RUNNING)
            spec = work.spec
            started = executables.start(
                work.row.id, work.row.uid, spec, self.directory, self.settings.kill_grace
            )
            if isinstance(started, Outcome):
                self._finished(work, started)
                return
            work.process = started
            outcome = await executables.finish(work.row.id, started, spec.timeout)
            self._finished(work, outcome)
        finally:
            work.process = None
            self._processes -= 1
            self._wake.set()

    # -- transitions -----------------------------------------------------------------------

    def _finished(self, work: Work, outcome: Outcome) -> None:
        if work.state is not TaskState.RUNNING:
            return  # canceled (or settled by stop) while it ran: its outcome is dropped
        if outcome.ok:
            self._transition(work, TaskState.DONE, outcome)
        else:
            self._after_failure(work, outcome)

    def _after_failure(self, work: Work, outcome: Outcome) -> None:
        """FAILED, or NEW again for another attempt when the task has retries left."""
        if work.attempt <= work.row.retries:
            error = f"attempt {work.attempt} failed: {outcome.error}; retrying"
            self._transition(work, TaskState.NEW, outcome._replace(error=error))
            work.attempt += 1
            self._queue(work)
        else:
            self._transition(work, TaskState.FAILED, outcome)

    def _transition(self, work: Work, state: TaskState, outcome: Outcome | None = None) -> None:
        now = time.time()
        work.state = state
        work.seq += 1
        if state is TaskState.RUNNING:
            work.started = now
        record = Record(
            work.row.id, work.row.uid, state, work.seq, now, work.attempt, user=work.row.user
        )
        record.started = work.started
        if outcome is not None and state is not TaskState.NEW:
            record.exit_code = outcome.exit_code
            record.encoding = outcome.encoding
            record.result = outcome.data
            record.exception = outcome.exception
            record.stdout, record.stderr = outcome.stdout, outcome.stderr
        if outcome is not None:
            record.error = outcome.error
        self.recorder.add(record, work.row.notify == "each")


def _call(work: Work) -> Call:
    get = work.fields.get
    return Call(
        work.row.id,
        get("function"),
        get("pickled_function"),
        get("args", []),
        get("kwargs", {}),
        get("pickled_arguments"),
        get("timeout"),
    )
