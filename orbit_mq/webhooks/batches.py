"""Task batches' webhooks in the store: the tasks of one submission, their transitions grouped
into few POSTs.

A batch's transitions are held per task until the one before has been grouped (per task, seq
1, 2, 3 … in order), then put into groups: those that arrived together (one
`task_status_batch` event) make one group, of at most GROUP_ITEMS transitions and about
GROUP_BYTES. A group is written once, with the batch's counts by state after it and whether
all its tasks have ended (`done`), and POSTed as it was written however often it is repeated.

Only the transitions of tasks in a pending batch are written: a batch is registered before
its tasks are submitted, and one registered for tasks submitted earlier starts each task from
the transitions held, else from the task's current status (`catch_up`), so no user's other
tasks — thousands a second on a busy endpoint — need to be kept in case someone registers.
"""

from __future__ import annotations

import sqlite3
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import orjson
from pydantic import BaseModel, Field

from orbit_mq.contracts.tasks import TaskState, TaskStatus
from orbit_mq.webhooks.delivery import Delivery, Target

GROUP_ITEMS = 1024  # transitions per POST at most (a task_status_batch event's bound, too)
GROUP_BYTES = 1024 * 1024  # about this much per POST (at least one transition)
CHUNK = 500  # uids per query (SQLite bounds the parameters of one statement)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    batch TEXT PRIMARY KEY, endpoint TEXT NOT NULL, owner TEXT NOT NULL, url TEXT NOT NULL,
    secret TEXT NOT NULL, created REAL NOT NULL, give_up_at REAL NOT NULL,
    tasks INTEGER NOT NULL, formed INTEGER NOT NULL DEFAULT 0,
    delivered INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'pending', last_error TEXT
);
CREATE TABLE IF NOT EXISTS batch_tasks (
    endpoint TEXT NOT NULL, owner TEXT NOT NULL, uid TEXT NOT NULL, batch TEXT NOT NULL,
    grouped INTEGER NOT NULL DEFAULT 0, state TEXT, PRIMARY KEY (endpoint, owner, uid)
);
CREATE INDEX IF NOT EXISTS batch_tasks_by_batch ON batch_tasks (batch, uid, state);
CREATE TABLE IF NOT EXISTS batch_transitions (
    batch TEXT NOT NULL, uid TEXT NOT NULL, seq INTEGER NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (batch, uid, seq)
);
CREATE TABLE IF NOT EXISTS batch_groups (
    batch TEXT NOT NULL, n INTEGER NOT NULL, final INTEGER NOT NULL, body BLOB NOT NULL,
    PRIMARY KEY (batch, n)
);
"""
# batch_tasks.grouped: the last seq of the task put into a group; .state: that transition's.
# batch_transitions: received, not yet grouped (its rowid: the order of arrival).


class BatchWebhookInfo(BaseModel):
    """A registered task batch's webhook as its owner sees it (never with its secret)."""

    kind: Literal["tasks"] = "tasks"
    batch: str = Field(description="The batch's id: x-orbit-delivery is `{batch}:{n}`.")
    endpoint: str
    owner: str
    url: str
    tasks: int = Field(description="Tasks in the batch.")
    status: str = Field(description="pending (transitions to send), done, or failed.")
    delivered: int = Field(description="The `n` of the last group delivered (0: none yet).")
    attempts: int = Field(description="POSTs made, repeats after failures included.")
    last_error: str | None = None


@dataclass(frozen=True)
class _Pending:
    """A pending batch, as grouping its transitions needs it."""

    batch: str
    endpoint: str
    owner: str
    tasks: int
    formed: int  # the groups written so far


class BatchHooks:
    """Task batches' webhooks, their tasks, held transitions and formed groups (an `Outbox`)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._db.executescript(_SCHEMA)

    def taken(self, endpoint: str, owner: str, uids: list[str]) -> list[str]:
        """The uids among `uids` that are in a pending batch already."""
        found: list[str] = []
        for part in _chunks(uids, CHUNK):
            marks = ", ".join("?" * len(part))
            found += [
                row[0]
                for row in self._db.execute(
                    f"SELECT uid FROM batch_tasks WHERE endpoint = ? AND owner = ? AND uid IN "
                    f"({marks})",
                    (endpoint, owner, *part),
                )
            ]
        return found

    def register(
        self,
        batch: str,
        endpoint: str,
        owner: str,
        uids: list[str],
        url: str,
        secret: str,
        give_up_at: float,
    ) -> None:
        """A batch of `uids` (distinct, none in another pending batch: see `taken`)."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "INSERT INTO batches (batch, endpoint, owner, url, secret, created, give_up_at,"
                " tasks) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (batch, endpoint, owner, url, secret, time.time(), give_up_at, len(uids)),
            )
            self._db.executemany(
                "INSERT INTO batch_tasks (endpoint, owner, uid, batch) VALUES (?, ?, ?, ?)",
                ((endpoint, owner, uid, batch) for uid in uids),
            )

    def unregister(self, batch: str) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM batches WHERE batch = ?", (batch,))
            self._forget(batch)

    def keep(self, endpoint: str, owner: str, statuses: Iterable[TaskStatus]) -> set[str]:
        """Hold the transitions of tasks in pending batches (those of others are not kept)
        and group what they complete; the batches that have a new group."""
        touched: set[str] = set()
        with self._db:
            self._db.execute("BEGIN")
            for status in statuses:
                row = self._db.execute(
                    "SELECT batch, grouped FROM batch_tasks WHERE endpoint = ? AND owner = ?"
                    " AND uid = ?",
                    (endpoint, owner, status.uid),
                ).fetchone()
                if row is not None and status.seq > row[1]:  # not a repeat of a grouped one
                    self._hold(row[0], status)
                    touched.add(row[0])
            return {batch for batch in touched if self._form(batch)}

    def catch_up(self, batch: str, statuses: Iterable[TaskStatus]) -> bool:
        """Start each task of `batch` whose first transition is not held from its current
        status as the endpoint gave it (tasks submitted before the batch was registered);
        whether a group was formed."""
        with self._db:
            self._db.execute("BEGIN")
            for status in statuses:
                row = self._db.execute(
                    "SELECT min(t.seq) FROM batch_tasks b LEFT JOIN batch_transitions t"
                    " ON t.batch = b.batch AND t.uid = b.uid WHERE b.batch = ? AND b.uid = ?"
                    " AND b.grouped = 0 GROUP BY b.uid",
                    (batch, status.uid),
                ).fetchone()
                if row is None or row[0] == 1:  # not this batch's, or held from its start
                    continue
                self._hold(batch, status)
                start = status.seq if row[0] is None else min(row[0], status.seq)
                self._db.execute(
                    "UPDATE batch_tasks SET grouped = ? WHERE batch = ? AND uid = ?",
                    (start - 1, batch, status.uid),
                )
            return self._form(batch)

    def _hold(self, batch: str, status: TaskStatus) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO batch_transitions VALUES (?, ?, ?, ?)",
            (batch, status.uid, status.seq, status.model_dump_json().encode()),
        )

    def _form(self, batch: str) -> bool:
        """Group the held transitions that follow their task's last grouped one (inside the
        caller's transaction); whether a group was formed."""
        found = self._db.execute(
            "SELECT batch, endpoint, owner, tasks, formed FROM batches WHERE batch = ?"
            " AND status = 'pending'",
            (batch,),
        ).fetchone()
        if found is None:
            return False
        hook = _Pending(*found)
        rows = self._db.execute(
            "SELECT t.rowid, t.uid, t.seq, t.body, b.grouped FROM batch_transitions t"
            " JOIN batch_tasks b ON b.endpoint = ? AND b.owner = ? AND b.uid = t.uid"
            " WHERE t.batch = ? ORDER BY t.uid, t.seq",
            (hook.endpoint, hook.owner, batch),
        ).fetchall()
        ready, uid, expected = [], None, 0
        for row in rows:
            if row[1] != uid:
                uid, expected = row[1], row[4] + 1
            if row[2] == expected:  # the next one; after a gap, the rest waits for it
                ready.append(row)
                expected += 1
        # in the order they arrived, except that each task's are in seq order in any case
        by_task: dict[str, deque[sqlite3.Row]] = defaultdict(deque)
        for row in ready:
            by_task[row[1]].append(row)
        ordered = [by_task[row[1]].popleft() for row in sorted(ready, key=lambda r: r[0])]
        formed = hook.formed
        for group in _groups(ordered):
            formed += 1
            self._write_group(hook, formed, group)
        return formed > hook.formed

    def _write_group(self, hook: _Pending, n: int, group: list[sqlite3.Row]) -> None:
        batch = hook.batch
        statuses = [TaskStatus.model_validate_json(row[3]) for row in group]
        transitions = [status.model_dump(mode="json") for status in statuses]
        self._db.executemany(
            "UPDATE batch_tasks SET grouped = ?, state = ? WHERE batch = ? AND uid = ?",
            ((s.seq, s.state.value, batch, s.uid) for s in statuses),
        )
        counts = {
            TaskState(state): count
            for state, count in self._db.execute(
                "SELECT state, count(*) FROM batch_tasks WHERE batch = ? AND state IS NOT NULL"
                " GROUP BY state",
                (batch,),
            )
        }
        done = sum(count for state, count in counts.items() if state.final) == hook.tasks
        body = orjson.dumps(
            {
                "endpoint": hook.endpoint,
                "owner": hook.owner,
                "batch": batch,
                "n": n,
                "transitions": transitions,
                "counts": {state.value: counts[state] for state in TaskState if state in counts},
                "tasks": hook.tasks,
                "done": done,
            }
        )
        self._db.execute("INSERT INTO batch_groups VALUES (?, ?, ?, ?)", (batch, n, done, body))
        self._db.execute("UPDATE batches SET formed = ? WHERE batch = ?", (n, batch))
        self._db.executemany(
            "DELETE FROM batch_transitions WHERE rowid = ?", ((row[0],) for row in group)
        )

    # -- the Outbox ------------------------------------------------------------------------

    def pending(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT batch FROM batches WHERE status='pending'")]

    def target(self, batch: str) -> Target | None:
        row = self._db.execute(
            "SELECT * FROM batches WHERE batch = ? AND status = 'pending'", (batch,)
        ).fetchone()
        if row is None:
            return None
        return Target(batch, row["url"], row["secret"], row["give_up_at"], row["delivered"])

    def delivery(self, batch: str, n: int) -> Delivery | None:
        row = self._db.execute(
            "SELECT n, final, body FROM batch_groups WHERE batch = ? AND n = ?", (batch, n)
        ).fetchone()
        return None if row is None else Delivery(row[0], row[2], bool(row[1]))

    def attempted(self, batch: str, error: str | None) -> None:
        self._db.execute(
            "UPDATE batches SET attempts = attempts + 1, last_error = ? WHERE batch = ?",
            (error, batch),
        )

    def delivered(self, batch: str, delivery: Delivery) -> None:
        status = "done" if delivery.final else "pending"
        with self._db:  # one transaction: the batch moves on, its sent group goes
            self._db.execute("BEGIN")
            self._db.execute(
                "UPDATE batches SET delivered = ?, status = ? WHERE batch = ?",
                (delivery.n, status, batch),
            )
            self._db.execute(
                "DELETE FROM batch_groups WHERE batch = ? AND n <= ?", (batch, delivery.n)
            )
            if delivery.final:
                self._forget(batch)

    def failed(self, batch: str, error: str) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "UPDATE batches SET status = 'failed', last_error = ? WHERE batch = ?",
                (error, batch),
            )
            self._forget(batch)

    def _forget(self, batch: str) -> None:
        """Its tasks, held transitions and groups (inside the caller's transaction): its
        tasks' uids may be in a later batch."""
        for table in ("batch_tasks", "batch_transitions", "batch_groups"):
            self._db.execute(f"DELETE FROM {table} WHERE batch = ?", (batch,))

    def infos(self, owner: str | None = None) -> list[BatchWebhookInfo]:
        where, args = ("WHERE owner = ?", (owner,)) if owner is not None else ("", ())
        rows = self._db.execute(f"SELECT * FROM batches {where} ORDER BY created", args)
        return [_info(row) for row in rows]

    def info(self, batch: str) -> BatchWebhookInfo | None:
        row = self._db.execute("SELECT * FROM batches WHERE batch = ?", (batch,)).fetchone()
        return None if row is None else _info(row)


def _info(row: sqlite3.Row) -> BatchWebhookInfo:
    fields = BatchWebhookInfo.model_fields
    return BatchWebhookInfo(**{key: row[key] for key in fields if key != "kind"})


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _groups(rows: list[sqlite3.Row]) -> Iterator[list[sqlite3.Row]]:
    """`rows` in order, cut into groups of at most GROUP_ITEMS and about GROUP_BYTES."""
    group: list[sqlite3.Row] = []
    size = 0
    for row in rows:
        if group and (len(group) >= GROUP_ITEMS or size + len(row[3]) > GROUP_BYTES):
            yield group
            group, size = [], 0
        group.append(row)
        size += len(row[3])
    if group:
        yield group
