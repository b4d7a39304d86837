"""The tasks plugin's table in the endpoint journal: every accepted task with its spec, its
current state and its outcome. Writes come in batches, each in one transaction together with
the events that announce them (callers hold the journal's transaction).

A task's `spec` column is its TaskSpec as JSON; results are kept whole (`result`), events
and statuses carry them inline only when small.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from orbit_mq.contracts.tasks.models import (
    EVENT_TAIL,
    INLINE_RESULT,
    TASK_TAIL,
    TERMINAL,
    Task,
    TaskSpec,
    TaskState,
    TaskStatus,
)
from orbit_mq.contracts.tasks.values import inline_value

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY,
    user TEXT NOT NULL,
    uid TEXT NOT NULL,
    session TEXT,
    name TEXT,
    kind TEXT NOT NULL,
    backend TEXT NOT NULL,
    notify TEXT NOT NULL,
    spec BLOB NOT NULL,
    state TEXT NOT NULL,
    seq INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    retries INTEGER NOT NULL,
    submitted REAL NOT NULL,
    changed REAL NOT NULL,
    started REAL,
    finished REAL,
    exit_code INTEGER,
    encoding TEXT,
    result BLOB,
    error TEXT,
    exception TEXT,
    stdout TEXT NOT NULL DEFAULT '',
    stderr TEXT NOT NULL DEFAULT '',
    UNIQUE (user, uid)
);
CREATE INDEX IF NOT EXISTS tasks_waiting ON tasks (id) WHERE state = 'NEW';
CREATE INDEX IF NOT EXISTS tasks_running ON tasks (id) WHERE state = 'RUNNING';
CREATE INDEX IF NOT EXISTS tasks_by_user ON tasks (user, id);
"""
# Partial indexes for the runner's two questions (what waits, what ran when the endpoint
# stopped) and an index without the state for the users' queries: a transition changes no
# index entry but when a task leaves NEW or RUNNING.
_OPEN = f"state NOT IN ({', '.join(repr(state.value) for state in sorted(TERMINAL))})"
_STATUS_COLUMNS = (
    "id, uid, state, seq, changed, attempt, exit_code, encoding, result, error, exception, "
    "stdout, stderr"
)
_QUEUED_COLUMNS = "id, user, uid, kind, backend, notify, spec, state, seq, attempt, retries"
_LOOKUP_CHUNK = 500  # uids per `IN (…)` query


def spec_json(spec: TaskSpec) -> bytes:
    """A spec as the journal keeps it (validated once, at submission; read back with orjson)."""
    return orjson.dumps(spec.model_dump(mode="json", exclude_defaults=True))


def when(timestamp: float) -> str:
    """An event time: ISO 8601 in UTC with a Z, like every timestamp on the wire."""
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class Record:
    """A task's state as written and announced: one row's status columns, or one transition."""

    id: int
    uid: str
    state: TaskState
    seq: int
    time: float
    attempt: int = 1
    exit_code: int | None = None
    encoding: str | None = None
    result: bytes | None = None
    error: str | None = None
    exception: str | None = None
    stdout: str = ""
    stderr: str = ""
    started: float | None = None  # when its attempt started (not part of a status)
    user: str = ""  # whose task: its events go under this user's owner word

    def status(self, tail: int = EVENT_TAIL) -> dict[str, Any]:
        """The TaskStatus of this record, as JSON (built directly: this is the hot path)."""
        kept = self.result is not None and len(self.result) > INLINE_RESULT
        inline = self.result is not None and not kept
        return {
            "uid": self.uid,
            "seq": self.seq,
            "state": self.state.value,
            "time": when(self.time),
            "attempt": self.attempt,
            "exit_code": self.exit_code,
            "return_value": inline_value(self.encoding, self.result)  # type: ignore[arg-type]
            if inline
            else None,
            "result_encoding": self.encoding if self.result is not None else None,
            "result_kept": kept,
            "error": self.error,
            "exception": self.exception[-tail:] if self.exception else self.exception,
            "stdout": self.stdout[-tail:],
            "stderr": self.stderr[-tail:],
        }


@dataclass(slots=True)
class QueuedTask:
    """What the runner needs of a task that waits to run."""

    id: int
    user: str
    uid: str
    kind: str
    backend: str
    notify: str
    spec: bytes
    state: TaskState
    seq: int
    attempt: int
    retries: int


@dataclass(slots=True)
class NewTask:
    user: str
    uid: str
    session: str | None
    name: str | None
    kind: str
    backend: str
    notify: str
    spec: bytes
    retries: int


def _inserted(i: int, t: NewTask, now: float) -> tuple[Any, ...]:
    return (i, t.user, t.uid, t.session, t.name, t.kind, t.backend, t.notify, t.spec,
            t.retries, now, now)  # fmt: skip


def _written(r: Record) -> tuple[Any, ...]:
    finished = r.time if r.state.final else None
    return (r.state.value, r.seq, r.attempt, r.time, r.started, finished, r.exit_code,
            r.encoding, r.result, r.error, r.exception, r.stdout[-TASK_TAIL:],
            r.stderr[-TASK_TAIL:], r.id)  # fmt: skip


def _queued(row: tuple[Any, ...]) -> QueuedTask:
    task_id, user, uid, kind, backend, notify, spec, state, seq, attempt, retries = row
    state = TaskState(state)
    return QueuedTask(task_id, user, uid, kind, backend, notify, spec, state, seq, attempt, retries)


def _record(row: tuple[Any, ...]) -> Record:
    return Record(row[0], row[1], TaskState(row[2]), *row[3:])  # _STATUS_COLUMNS, in order


class TaskStore:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        db.executescript(_SCHEMA)

    # -- writes (callers hold the journal's transaction) -----------------------------------

    def insert(self, tasks: list[NewTask], now: float) -> list[int]:
        """Add new tasks (state NEW, seq 1); their ids, in order."""
        first = self.db.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM tasks").fetchone()[0]
        ids = list(range(first, first + len(tasks)))
        self.db.executemany(
            "INSERT INTO tasks (id, user, uid, session, name, kind, backend, notify, spec, "
            "state, seq, attempt, retries, submitted, changed) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'NEW', 1, 1, ?, ?, ?)",
            [_inserted(i, t, now) for i, t in zip(ids, tasks, strict=True)],
        )
        return ids

    def write(self, records: Iterable[Record]) -> None:
        """Store transitions: a task's last one in the batch is its row (the others are only
        announced)."""
        last = {record.id: record for record in records}
        self.db.executemany(
            "UPDATE tasks SET state = ?, seq = ?, attempt = ?, changed = ?, started = ?, "
            "finished = ?, exit_code = ?, encoding = ?, result = ?, error = ?, exception = ?, "
            "stdout = ?, stderr = ? WHERE id = ?",
            [_written(record) for record in last.values()],
        )

    # -- the runner's reads ----------------------------------------------------------------

    def in_state(self, state: TaskState, after: int = 0, limit: int = -1) -> list[QueuedTask]:
        """The tasks in `state` (NEW: waiting to run; RUNNING: running, or running when the
        endpoint stopped), oldest first, with ids above `after`."""
        # The state as a literal, so that the planner can always match the partial indexes.
        rows = self.db.execute(
            f"SELECT {_QUEUED_COLUMNS} FROM tasks WHERE state = '{state.value}' AND id > ? "
            "ORDER BY id LIMIT ?",
            (after, limit),
        )
        return [_queued(row) for row in rows]

    def open_ids(self, user: str, session: str | None, after: int, limit: int) -> list[int]:
        """Ids of the user's (session's) tasks that have not ended, above `after`."""
        where, args = self._filter(user, None, session)
        rows = self.db.execute(
            f"SELECT id FROM tasks WHERE {where} AND {_OPEN} AND id > ? ORDER BY id LIMIT ?",
            (*args, after, limit),
        )
        return [row[0] for row in rows]

    def queued_by_id(self, ids: list[int]) -> list[QueuedTask]:
        sql = f"SELECT {_QUEUED_COLUMNS} FROM tasks WHERE id IN ({{marks}})"
        return [_queued(row) for row in self._rows_in(sql, ids)]

    # -- queries ---------------------------------------------------------------------------

    def ids(self, user: str, uids: list[str]) -> dict[str, int]:
        """The ids of those of `uids` the user has."""
        sql = "SELECT uid, id FROM tasks WHERE user = ? AND uid IN ({marks})"
        return dict(self._rows_in(sql, uids, user))

    def statuses(self, ids: list[int]) -> dict[int, Record]:
        sql = f"SELECT {_STATUS_COLUMNS} FROM tasks WHERE id IN ({{marks}})"
        return {row[0]: _record(row) for row in self._rows_in(sql, ids)}

    def _rows_in(self, sql: str, values: list[Any], *before: Any) -> Iterator[tuple[Any, ...]]:
        """The rows of `sql`, whose `{marks}` is an `IN` list of `values`, asked in chunks
        (after the parameters `before`)."""
        for start in range(0, len(values), _LOOKUP_CHUNK):
            chunk = values[start : start + _LOOKUP_CHUNK]
            yield from self.db.execute(
                sql.format(marks=",".join("?" * len(chunk))), (*before, *chunk)
            )

    def page(
        self, user: str, state: TaskState | None, session: str | None, offset: int, limit: int
    ) -> tuple[list[TaskStatus], int]:
        where, args = self._filter(user, state, session)
        total = self.db.execute(f"SELECT COUNT(*) FROM tasks WHERE {where}", args).fetchone()[0]
        rows = self.db.execute(
            f"SELECT {_STATUS_COLUMNS} FROM tasks WHERE {where} ORDER BY id LIMIT ? OFFSET ?",
            (*args, limit, offset),
        )
        return [TaskStatus.model_validate(_record(row).status()) for row in rows], total

    def counts(self, user: str, session: str | None) -> dict[TaskState, int]:
        where, args = self._filter(user, None, session)
        rows = self.db.execute(
            f"SELECT state, COUNT(*) FROM tasks WHERE {where} GROUP BY state", args
        )
        counts = dict.fromkeys(TaskState, 0)
        counts.update((TaskState(state), count) for state, count in rows)
        return counts

    def task(self, user: str, uid: str) -> Task | None:
        row = self.db.execute(
            f"SELECT {_STATUS_COLUMNS}, name, kind, backend, session, submitted, started, "
            "finished, retries, LENGTH(result) FROM tasks WHERE user = ? AND uid = ?",
            (user, uid),
        ).fetchone()
        if row is None:
            return None
        name, kind, backend, session, submitted, started, finished, retries, size = row[13:]
        return Task.model_validate(
            {
                **_record(row[:13]).status(TASK_TAIL),
                "name": name,
                "kind": kind,
                "backend": backend,
                "session": session,
                "submitted": when(submitted),
                "started": when(started) if started is not None else None,
                "finished": when(finished) if finished is not None else None,
                "retries": retries,
                "result_size": size,
            }
        )

    def result(self, user: str, uid: str) -> tuple[str, TaskState, str | None, bytes | None]:
        """(uid, state, encoding, result) of one of the user's tasks; KeyError if unknown."""
        row = self.db.execute(
            "SELECT uid, state, encoding, result FROM tasks WHERE user = ? AND uid = ?",
            (user, uid),
        ).fetchone()
        if row is None:
            raise KeyError(uid)
        return row[0], TaskState(row[1]), row[2], row[3]

    def totals(self) -> dict[str, int]:
        """How many tasks the journal holds, wait and run (cheap: ids are dense, and the
        partial indexes hold only the waiting and the running)."""
        count = self.db.execute
        return {
            "journaled": count("SELECT COALESCE(MAX(id), 0) FROM tasks").fetchone()[0],
            "waiting": count("SELECT COUNT(*) FROM tasks WHERE state = 'NEW'").fetchone()[0],
            "running": count("SELECT COUNT(*) FROM tasks WHERE state = 'RUNNING'").fetchone()[0],
        }

    @staticmethod
    def _filter(
        user: str, state: TaskState | None, session: str | None
    ) -> tuple[str, tuple[Any, ...]]:
        where, args = ["user = ?"], [user]
        if state is not None:
            where.append("state = ?")
            args.append(state.value)
        if session is not None:
            where.append("session = ?")
            args.append(session)
        return " AND ".join(where), tuple(args)
