"""Writes task transitions in batches: one journal transaction per batch holds the new states
and the events that announce them (`task_status_batch`, and `task_status` for tasks that asked
for each), so the journal and the events never disagree, even across a kill -9. Waiters
(`wait_tasks`) learn of ended tasks after the write.

Under light traffic a transition is written within half a millisecond; under load, a batch at
most every 20 ms (sooner when 1,024 transitions wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orbit_mq.contracts.tasks.models import EVENT_TAIL, INLINE_RESULT, event_key
from orbit_mq.waiting import wait_within
from orbit_mq.workers.journal import Journal
from orbit_mq.workers.plugin import Emitter
from orbit_mq.workers.plugins.tasks.store import Record, TaskStore

Written = Callable[[list[Record]], None]
BATCH_ITEMS = 1024  # transitions per write and per task_status_batch event
BATCH_BYTES = 1024 * 1024  # about this much per task_status_batch event
BATCH_DELAY = 0.02  # s a transition may wait for others before it is written, when busy
QUIET_DELAY = 0.0005  # … when not
BUSY = 8  # transitions in the last write that make the recorder busy


@dataclass(eq=False)
class Waiter:
    """One wait_tasks call: the ids it still waits for."""

    remaining: set[int]
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Recorder:
    def __init__(self, journal: Journal, store: TaskStore, emit: Emitter, written: Written) -> None:
        self.journal = journal
        self.store = store
        self.emit = emit
        self.written = written
        self._pending: list[tuple[Record, bool]] = []  # (record, announced on its own)
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._waiters: dict[int, list[Waiter]] = {}
        self._lock = asyncio.Lock()  # one write at a time, in order
        self._task: asyncio.Task[None] | None = None
        self.recorded = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="orbit-tasks-recorder")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()

    def add(self, record: Record, each: bool) -> None:
        self._pending.append((record, each))
        self._wake.set()
        if len(self._pending) >= BATCH_ITEMS:
            self._full.set()

    def waiter(self, ids: set[int]) -> Waiter:
        waiter = Waiter(set(ids))
        for task_id in ids:
            self._waiters.setdefault(task_id, []).append(waiter)
        return waiter

    def forget(self, waiter: Waiter) -> None:
        for task_id in waiter.remaining:
            waiters = self._waiters.get(task_id)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[task_id]

    async def _run(self) -> None:
        last, size = 0.0, 0
        while True:
            await self._wake.wait()
            # Light traffic is written almost at once (a lone task's round trip); once the
            # batches grow, writes come every BATCH_DELAY with all that arrived meanwhile
            # (sooner when a batch is full), so that a busy endpoint writes and publishes a
            # few large batches rather than many small ones.
            gap = BATCH_DELAY if size >= BUSY else QUIET_DELAY
            pause = last + gap - time.monotonic()
            if pause > 0:
                with contextlib.suppress(TimeoutError):
                    await wait_within(self._full.wait(), pause)
            else:
                await asyncio.sleep(0)  # what this turn of the loop adds joins the write
            last, size = time.monotonic(), len(self._pending)
            await self.flush()

    async def flush(self) -> None:
        """Write what is pending now."""
        async with self._lock:
            while self._pending:
                batch, self._pending = self._pending[:BATCH_ITEMS], self._pending[BATCH_ITEMS:]
                await self._write(batch)
            self._wake.clear()
            self._full.clear()

    async def _write(self, batch: list[tuple[Record, bool]]) -> None:
        records = [record for record, _ in batch]
        with self.journal.transaction():
            self.store.write(records)
            await self.announce(batch)
        self.recorded += len(records)
        self.written(records)
        self._wake_waiters(records)

    async def announce(self, batch: list[tuple[Record, bool]]) -> None:
        """Put the events of these transitions in the outbox (inside the caller's transaction:
        the emit path does not suspend): a user's batch events hold only their own tasks."""
        by_user: dict[str, list[tuple[Record, bool]]] = {}
        for item in batch:
            by_user.setdefault(item[0].user, []).append(item)
        for user, mine in by_user.items():
            statuses = [record.status() for record, _ in mine]
            weights = [_weight(record) for record, _ in mine]
            for part in _parts(statuses, weights):
                await self.emit("task_status_batch", {"tasks": part}, owner=user)
            for (record, each), status in zip(mine, statuses, strict=True):
                if each:
                    key = event_key(record.uid, record.seq)
                    await self.emit("task_status", status, key, owner=user)

    def _wake_waiters(self, records: list[Record]) -> None:
        for record in records:
            if not record.state.final:
                continue
            for waiter in self._waiters.pop(record.id, ()):
                waiter.remaining.discard(record.id)
                if not waiter.remaining:
                    waiter.done.set()


def _parts(statuses: list[dict[str, Any]], weights: list[int]) -> list[list[dict[str, Any]]]:
    """Statuses split into events of at most BATCH_ITEMS items and about BATCH_BYTES."""
    parts: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    size = 0
    for status, weight in zip(statuses, weights, strict=True):
        if current and (size + weight > BATCH_BYTES or len(current) >= BATCH_ITEMS):
            parts.append(current)
            current, size = [], 0
        current.append(status)
        size += weight
    if current:
        parts.append(current)
    return parts


def _weight(record: Record) -> int:
    """About how many bytes a record's status takes in an event."""
    result = len(record.result) if record.result and len(record.result) <= INLINE_RESULT else 0
    texts = min(len(record.stdout), EVENT_TAIL) + min(len(record.stderr), EVENT_TAIL)
    return 300 + result * 4 // 3 + texts + min(len(record.exception or ""), EVENT_TAIL)
