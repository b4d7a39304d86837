"""Tasks in the SDK: pipelined submission of any number of tasks, waiting on events, results.

    tasks = await fabric.endpoint("hpc1").plugin(Tasks)
    uids = await submit(tasks, (TaskSpec(function="math:sqrt", args=[i]) for i in range(10**6)))
    async for status in as_completed(tasks, uids):
        print(status.uid, await result(tasks, status))

`submit` sends batches of at most `batch_size` tasks and about `batch_bytes` bytes, a few at
a time (so neither side holds more than a window of batches), each safe to re-send: every task
gets its uid before it leaves. `as_completed` subscribes to the endpoint's
`task_status_batch` events first, then reads the states already reached, and re-reads the
journal when no event came for a while, so no ending is missed or given twice.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

from orbit_mq.contracts.tasks import MAX_WAIT, TERMINAL, Tasks, TaskSpec, TaskState, TaskStatus
from orbit_mq.contracts.tasks.errors import TaskCanceled, TaskFailed
from orbit_mq.contracts.tasks.models import new_uid
from orbit_mq.contracts.tasks.values import decode_value, value_of
from orbit_mq.errors import CallTimeout, RequestTooLarge
from orbit_mq.proxy import remote
from orbit_mq.retry import until_deadline
from orbit_mq.waiting import wait_within

if TYPE_CHECKING:
    from orbit_mq.protocol import Event
    from orbit_mq.subscribe import Subscription

log = logging.getLogger("orbit_mq.client")
BATCH_SIZE = 5000
BATCH_BYTES = 4 * 1024 * 1024  # well under the endpoint's max_message_size (16 MiB)
WINDOW = 4  # batches in flight
RECHECK_INTERVAL = 5.0  # s without a relevant event after which the journal is read
RECOVERY_WINDOW = 120.0  # s such a read may keep failing (the endpoint or broker restarting)


def with_uid(spec: TaskSpec) -> TaskSpec:
    return spec if spec.uid else spec.model_copy(update={"uid": new_uid()})


def spec_weight(spec: TaskSpec) -> int:
    """About how many bytes a spec takes in a request (without serialising it)."""
    pickles = len(spec.pickled_function or "") + len(spec.pickled_arguments or "")
    texts = len(spec.executable or "") + sum(len(a) + 4 for a in spec.arguments)
    values = len(repr(spec.args)) + len(repr(spec.kwargs)) if spec.args or spec.kwargs else 0
    return (
        200
        + pickles
        + texts
        + values
        + sum(len(k) + len(v) + 6 for k, v in spec.environment.items())
    )


def batches(
    specs: Iterable[TaskSpec], size: int = BATCH_SIZE, max_bytes: int = BATCH_BYTES
) -> Iterator[list[TaskSpec]]:
    batch: list[TaskSpec] = []
    weight = 0
    for spec in specs:
        cost = spec_weight(spec)
        if batch and (len(batch) >= size or weight + cost > max_bytes):
            yield batch
            batch, weight = [], 0
        batch.append(with_uid(spec))
        weight += cost
    if batch:
        yield batch


async def submit(
    tasks: Tasks,
    specs: Iterable[TaskSpec],
    *,
    notify: str = "batch",
    batch_size: int = BATCH_SIZE,
    window: int = WINDOW,
    watcher: TaskWatcher | None = None,
) -> list[str]:
    """Submit any number of tasks; their uids in order, once every batch is journaled. With
    a (started) `watcher`, each batch's tasks are watched before the batch is sent."""
    uids: list[str] = []
    running: set[asyncio.Task[list[str]]] = set()
    results: list[asyncio.Task[list[str]]] = []
    try:
        for batch in batches(specs, batch_size):
            if watcher is not None:
                watcher.watch(spec.uid for spec in batch if spec.uid)
            while len(running) >= window:
                finished, running = await asyncio.wait(running, return_when="FIRST_COMPLETED")
                for task in finished:
                    task.result()  # a failed batch fails the submission now
            task = asyncio.create_task(_send(tasks, batch, notify))
            running.add(task)
            results.append(task)
        for task in results:
            uids.extend(await task)
    finally:
        for task in running:
            task.cancel()
    return uids


async def _send(tasks: Tasks, batch: list[TaskSpec], notify: str) -> list[str]:
    try:
        sent = await tasks.submit_tasks(tasks=batch, notify=notify)  # type: ignore[arg-type]
    except RequestTooLarge:
        if len(batch) == 1:
            raise
        half = len(batch) // 2  # larger than estimated: in two
        return [
            *await _send(tasks, batch[:half], notify),
            *await _send(tasks, batch[half:], notify),
        ]
    return sent.uids


async def as_completed(
    tasks: Tasks, uids: Iterable[str], timeout: float | None = None
) -> AsyncIterator[TaskStatus]:
    """The terminal status of every task in `uids`, each once, as they end."""
    ended: asyncio.Queue[TaskStatus] = asyncio.Queue()
    watcher = TaskWatcher(tasks, ended.put)
    watcher.watch(uids)
    count = len(watcher.watched)
    deadline = None if timeout is None else time.monotonic() + timeout
    await watcher.start()
    try:
        for given in range(count):
            left = None if deadline is None else deadline - time.monotonic()
            try:
                yield await wait_within(ended.get(), left)
            except TimeoutError:
                raise CallTimeout(f"{count - given} tasks did not end within {timeout} s") from None
    finally:
        await watcher.close()


async def _ended(tasks: Tasks, uids: set[str]) -> list[TaskStatus]:
    """The ended ones among `uids`, from the journal (read again while the endpoint or the
    broker is coming back: the read changes nothing)."""
    ordered = sorted(uids)
    ended: list[TaskStatus] = []
    deadline = time.time() + RECOVERY_WINDOW
    for start in range(0, len(ordered), MAX_WAIT):
        chunk = ordered[start : start + MAX_WAIT]
        statuses = await until_deadline(
            deadline, partial(tasks.wait_tasks, uids=chunk, timeout=0), "reading task states"
        )
        ended.extend(status for status in statuses if status.state.final)
    return ended


async def wait(tasks: Tasks, uids: Iterable[str], timeout: float | None = None) -> list[TaskStatus]:
    """The terminal statuses of `uids`, in their order."""
    order = list(uids)
    ended = {status.uid: status async for status in as_completed(tasks, order, timeout)}
    return [ended[uid] for uid in order]


async def result(tasks: Tasks, status: TaskStatus) -> Any:
    """A DONE function task's return value (fetched when too large to carry inline), or a DONE
    executable's exit code; TaskFailed or TaskCanceled for the other endings."""
    if status.state is TaskState.CANCELED:
        raise TaskCanceled(status)
    if status.state is not TaskState.DONE:
        raise TaskFailed(status)
    if status.result_kept:
        return await fetch_result(tasks, status.uid)
    if status.result_encoding is None:
        return status.exit_code
    return value_of(status.result_encoding, status.return_value)


async def fetch_result(tasks: Tasks, uid: str) -> Any:
    """A result kept on the endpoint, fetched in parts."""
    data = bytearray()
    while True:
        part = await tasks.get_result(uid=uid, offset=len(data))
        data += base64.b64decode(part.data)
        if len(data) >= part.total or not part.data:
            return decode_value(part.encoding, bytes(data))


OnStatus = Callable[[TaskStatus], Awaitable[None]]


class TaskWatcher:
    """Follows the tasks it is given through `task_status_batch` events, and calls `on_status`
    with each terminal status exactly once (and with RUNNING ones too, when `running`). When
    no event came for RECHECK_INTERVAL s while tasks are watched, it reads their states from
    the journal, for endings whose events the subscription missed (a broker restart).
    Subscribe (`start`) before submitting."""

    def __init__(self, tasks: Tasks, on_status: OnStatus, *, running: bool = False) -> None:
        """`start()` subscribes, then reads the journal for the tasks already watched."""
        self.tasks = tasks
        self.on_status = on_status
        self.running = running
        self.watched: set[str] = set()
        self._events: Subscription[Event] | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        proxy = remote(self.tasks)
        topic = f"{proxy.serving}.{Tasks.name}.task_status_batch"
        self._events = await proxy.fabric.subscribe(topic).start()
        # Subscribed first, then read the journal: nothing can fall between the two.
        if self.watched:
            for status in await _ended(self.tasks, set(self.watched)):
                await self._seen(status)
        self._task = asyncio.create_task(self._run(), name="orbit-task-watcher")

    def watch(self, uids: Iterable[str]) -> None:
        self.watched.update(uids)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._events is not None:
            await self._events.close()

    async def _run(self) -> None:
        assert self._events is not None
        quiet_since = time.monotonic()  # the last event about a watched task, or re-read
        while True:
            with contextlib.suppress(TimeoutError):
                event = await wait_within(anext(self._events), RECHECK_INTERVAL)
                for item in event.data.get("tasks", ()):
                    if item.get("uid") in self.watched and self._wanted(item.get("state")):
                        quiet_since = time.monotonic()
                        await self._seen(TaskStatus.model_validate(item))
            if not self.watched:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= RECHECK_INTERVAL:
                for status in await _ended(self.tasks, set(self.watched)):
                    await self._seen(status)  # endings whose events this subscription missed
                quiet_since = time.monotonic()

    def _wanted(self, state: object) -> bool:
        return state in TERMINAL or (self.running and state == TaskState.RUNNING)

    async def _seen(self, status: TaskStatus) -> None:
        if status.uid not in self.watched or not self._wanted(status.state):
            return
        if status.state.final:
            self.watched.discard(status.uid)
        try:
            await self.on_status(status)
        except Exception:  # the caller's handler failed: the others still get theirs
            log.exception("task watcher: handling the status of %s failed", status.uid)
