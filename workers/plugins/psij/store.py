"""The psij plugin's tables in the endpoint journal: every job, its current state and its state
history. A state is written in the same transaction that puts its event in the outbox, so the
journal and the events never disagree, even across a kill -9."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from orbit_mq.contracts.psij.models import (
    STAGING_FIELDS,
    TERMINAL,
    HistoryEntry,
    Job,
    JobState,
)
from orbit_mq.workers.journal import add_columns, insert_rows, placeholders, within_parameters
from orbit_mq.workers.plugins.psij.retention import Ended
from orbit_mq.workers.plugins.psij.states import Step

_SCHEMA = """
CREATE TABLE IF NOT EXISTS psij_jobs (
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    request_key TEXT UNIQUE,
    executor TEXT NOT NULL,
    native_id TEXT,
    state TEXT NOT NULL,
    seq INTEGER NOT NULL,
    exit_code INTEGER,
    message TEXT,
    submitted REAL NOT NULL,
    updated REAL NOT NULL,
    name TEXT,
    session TEXT,
    user TEXT NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    stream_output INTEGER NOT NULL DEFAULT 0,
    stdout_sent INTEGER NOT NULL DEFAULT 0,
    stderr_sent INTEGER NOT NULL DEFAULT 0,
    spec BLOB NOT NULL,
    job_dir TEXT NOT NULL,
    stdout_path TEXT NOT NULL,
    stderr_path TEXT NOT NULL,
    exit_file TEXT,
    handed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS psij_jobs_state ON psij_jobs (state);
CREATE INDEX IF NOT EXISTS psij_jobs_session ON psij_jobs (session);
CREATE INDEX IF NOT EXISTS psij_jobs_user ON psij_jobs (user);
CREATE TABLE IF NOT EXISTS psij_history (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    state TEXT NOT NULL,
    time REAL NOT NULL,
    message TEXT,
    PRIMARY KEY (job_id, seq)
);
"""

# Columns added since the first release. Jobs of an older journal were all handed to their
# executor before they were recorded as more than NEW.
_ADDED_COLUMNS = {"psij_jobs": {"handed": "INTEGER NOT NULL DEFAULT 1"}}
_TERMINAL_NAMES = tuple(state.value for state in TERMINAL)
# UPDATE … FROM (many rows in one statement) came with SQLite 3.33.
UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33, 0)


def _when(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


@dataclass
class JobRow:
    """One row of psij_jobs."""

    job_id: str
    executor: str
    native_id: str | None
    state: JobState
    seq: int
    exit_code: int | None
    message: str | None
    submitted: float
    updated: float
    name: str | None
    session: str | None
    user: str
    cancel_requested: bool
    stream_output: bool
    stdout_sent: int
    stderr_sent: int
    spec: dict[str, Any]
    job_dir: Path
    stdout_path: Path
    stderr_path: Path
    exit_file: Path | None
    request_key: str | None = None
    handed: bool = False  # an attempt to give it to its executor began

    @classmethod
    def from_sql(cls, row: sqlite3.Row) -> JobRow:
        values = {key: row[key] for key in row.keys() if key != "n"}  # noqa: SIM118
        values["state"] = JobState(values["state"])
        values["cancel_requested"] = bool(values["cancel_requested"])
        values["stream_output"] = bool(values["stream_output"])
        values["handed"] = bool(values["handed"])
        values["spec"] = orjson.loads(values["spec"])
        for key in ("job_dir", "stdout_path", "stderr_path"):
            values[key] = Path(values[key])
        values["exit_file"] = Path(values["exit_file"]) if values["exit_file"] else None
        return cls(**values)

    @property
    def staged(self) -> bool:
        """Whether the job stages files (its steps come from stagejob.py)."""
        return any(self.spec.get(name) for name in STAGING_FIELDS)

    def info(self) -> Job:
        return Job(
            job_id=self.job_id,
            native_id=self.native_id,
            executor=self.executor,
            state=self.state,
            seq=self.seq,
            exit_code=self.exit_code,
            message=self.message,
            submitted=_when(self.submitted),
            updated=_when(self.updated),
            name=self.name,
            session=self.session,
        )


class JobStore:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        db.executescript(_SCHEMA)
        add_columns(db, _ADDED_COLUMNS)

    def _query(self, sql: str, params: Any = ()) -> list[sqlite3.Row]:
        cursor = self.db.cursor()
        cursor.row_factory = sqlite3.Row  # only this cursor: the connection is shared
        return cursor.execute(sql, params).fetchall()

    # -- writes (callers wrap them in the journal's transaction with the event) ------------

    def insert(self, row: JobRow) -> None:
        """A new job, in state NEW with seq 1 (its first history entry)."""
        self.insert_many([row])

    def insert_many(self, rows: list[JobRow]) -> None:
        """`insert` for many jobs, with a statement for their rows and one for their first
        history entries."""
        jobs = [
            (
                row.job_id,
                row.request_key,
                row.executor,
                row.native_id,
                JobState.NEW.value,
                1,
                row.submitted,
                row.submitted,
                row.name,
                row.session,
                row.user,
                int(row.stream_output),
                orjson.dumps(row.spec),
                str(row.job_dir),
                str(row.stdout_path),
                str(row.stderr_path),
                None if row.exit_file is None else str(row.exit_file),
            )
            for row in rows
        ]
        columns = (
            "psij_jobs (job_id, request_key, executor, native_id, state, seq, submitted, "
            "updated, name, session, user, stream_output, spec, job_dir, stdout_path, "
            "stderr_path, exit_file)"
        )
        insert_rows(self.db, columns, jobs)
        history = [(row.job_id, 1, JobState.NEW.value, row.submitted, None) for row in rows]
        insert_rows(self.db, "psij_history (job_id, seq, state, time, message)", history)

    def record(
        self,
        job_id: str,
        step: Step,
        when: float,
        *,
        exit_code: int | None = None,
        message: str | None = None,
    ) -> None:
        self.db.execute(
            "UPDATE psij_jobs SET state = ?, seq = ?, updated = ?, "
            "exit_code = COALESCE(?, exit_code), message = COALESCE(?, message) "
            "WHERE job_id = ?",
            (step.state.value, step.seq, when, exit_code, message, job_id),
        )
        self._history(job_id, step, when, message)

    def record_many(
        self,
        steps: list[tuple[str, Step, float, int | None, str | None]],
        native_ids: dict[str, str],
    ) -> None:
        """`record` for the steps of many jobs ((job_id, step, when, exit_code, message), in
        order) and `set_native_id` for `native_ids`: the history in one statement, each job's
        row once, as its last step left it. Each statement hands the GIL to PSI/J's threads
        and waits to win it back, so fewer count for more than their own cost."""
        history = [(job_id, s.seq, s.state.value, when, msg) for job_id, s, when, _, msg in steps]
        insert_rows(self.db, "psij_history (job_id, seq, state, time, message)", history)
        latest: dict[str, list[Any]] = {}
        for job_id, step, when, exit_code, message in steps:
            row = latest.setdefault(job_id, [job_id, None, None, None, None, None, None])
            row[1:4] = step.state.value, step.seq, when
            if exit_code is not None:  # as COALESCE in `record`: the last one given wins
                row[4] = exit_code
            if message is not None:
                row[5] = message
        for job_id, native_id in native_ids.items():
            if job_id in latest:
                latest[job_id][6] = native_id
            else:
                self.set_native_id(job_id, native_id)
        self._update_rows([tuple(row) for row in latest.values()])

    def _update_rows(self, rows: list[tuple[Any, ...]]) -> None:
        """Set (job_id, state, seq, updated, exit_code, message, native_id) of each row; None
        keeps exit_code, message and native_id as they are."""
        if not UPDATE_FROM:  # SQLite before 3.33: one statement per row
            self.db.executemany(
                "UPDATE psij_jobs SET state = ?2, seq = ?3, updated = ?4, "
                "exit_code = COALESCE(?5, exit_code), message = COALESCE(?6, message), "
                "native_id = COALESCE(?7, native_id) WHERE job_id = ?1",
                rows,
            )
            return
        for chunk in within_parameters(rows, 7):
            self.db.execute(
                "UPDATE psij_jobs SET state = v.column2, seq = v.column3, updated = v.column4, "
                "exit_code = COALESCE(v.column5, exit_code), "
                "message = COALESCE(v.column6, message), "
                "native_id = COALESCE(v.column7, native_id) "
                f"FROM (VALUES {','.join(['(?,?,?,?,?,?,?)'] * len(chunk))}) AS v "
                "WHERE psij_jobs.job_id = v.column1",
                [value for row in chunk for value in row],
            )

    def _history(self, job_id: str, step: Step, when: float, message: str | None) -> None:
        self.db.execute(
            "INSERT INTO psij_history (job_id, seq, state, time, message) VALUES (?,?,?,?,?)",
            (job_id, step.seq, step.state.value, when, message),
        )

    def set_native_id(self, job_id: str, native_id: str) -> None:
        self.db.execute("UPDATE psij_jobs SET native_id = ? WHERE job_id = ?", (native_id, job_id))

    def mark_handed(self, *job_ids: str) -> None:
        """One statement (its own transaction) for a batch about to be handed over."""
        for chunk in within_parameters(job_ids):
            marks = placeholders(len(chunk))
            self.db.execute(f"UPDATE psij_jobs SET handed = 1 WHERE job_id IN ({marks})", chunk)

    def mark_cancel(self, job_id: str) -> None:
        self.db.execute("UPDATE psij_jobs SET cancel_requested = 1 WHERE job_id = ?", (job_id,))

    def set_sent(self, job_id: str, stream: str, offset: int) -> None:
        column = {"stdout": "stdout_sent", "stderr": "stderr_sent"}[stream]
        self.db.execute(f"UPDATE psij_jobs SET {column} = ? WHERE job_id = ?", (offset, job_id))

    def remove(self, job_ids: list[str]) -> None:
        """Forget jobs (their rows and their histories)."""
        for start in range(0, len(job_ids), 500):  # SQLite's limit on bound parameters
            chunk = job_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            self.db.execute(f"DELETE FROM psij_history WHERE job_id IN ({marks})", chunk)
            self.db.execute(f"DELETE FROM psij_jobs WHERE job_id IN ({marks})", chunk)

    # -- reads -----------------------------------------------------------------------------

    def ended(self) -> list[Ended]:
        """Every ended job with its directory and when it ended, oldest-ended first."""
        marks = ",".join("?" * len(_TERMINAL_NAMES))
        rows = self.db.execute(
            f"SELECT job_id, job_dir, updated FROM psij_jobs WHERE state IN ({marks}) "
            "ORDER BY updated",
            _TERMINAL_NAMES,
        )
        return [Ended(job_id, Path(job_dir), ended) for job_id, job_dir, ended in rows]

    def get(self, job_id: str) -> JobRow | None:
        rows = self._query("SELECT * FROM psij_jobs WHERE job_id = ?", (job_id,))
        return JobRow.from_sql(rows[0]) if rows else None

    def many(self, job_ids: list[str]) -> list[JobRow]:
        """The rows of `job_ids` that exist, in the order asked for."""
        found: dict[str, JobRow] = {}
        for start in range(0, len(job_ids), 500):  # SQLite's limit on bound parameters
            chunk = job_ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self._query(f"SELECT * FROM psij_jobs WHERE job_id IN ({marks})", chunk):
                found[row["job_id"]] = JobRow.from_sql(row)
        return [found[job_id] for job_id in job_ids if job_id in found]

    def by_request(self, keys: list[str]) -> list[JobRow]:
        """Jobs already created by the request(s) with these keys, in key order."""
        marks = ",".join("?" * len(keys))
        rows = self._query(f"SELECT * FROM psij_jobs WHERE request_key IN ({marks})", keys)
        by_key = {row["request_key"]: JobRow.from_sql(row) for row in rows}
        return [by_key[key] for key in keys if key in by_key]

    def unfinished(self) -> list[JobRow]:
        marks = ",".join("?" * len(_TERMINAL_NAMES))
        sql = f"SELECT * FROM psij_jobs WHERE state NOT IN ({marks}) ORDER BY n"
        return [JobRow.from_sql(row) for row in self._query(sql, _TERMINAL_NAMES)]

    def page(
        self,
        state: JobState | None,
        session: str | None,
        offset: int,
        limit: int,
        ended_before: float | None = None,
        owners: Collection[str] | None = None,
    ) -> tuple[list[JobRow], int]:
        """Jobs matching the filters (and owned by one of `owners`, unless None), newest
        first, and how many match in all."""
        where: list[str] = []
        params: list[Any] = []
        if owners is not None:
            where.append(f"user IN ({','.join('?' * len(owners))})")
            params.extend(owners)
        if state is not None:
            where.append("state = ?")
            params.append(state.value)
        if session is not None:
            where.append("session = ?")
            params.append(session)
        if ended_before is not None:
            where.append(f"state IN ({','.join('?' * len(_TERMINAL_NAMES))}) AND updated < ?")
            params.extend([*_TERMINAL_NAMES, ended_before])
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        total = self.db.execute(f"SELECT COUNT(*) FROM psij_jobs{clause}", params).fetchone()[0]
        rows = self._query(
            f"SELECT * FROM psij_jobs{clause} ORDER BY n DESC LIMIT ? OFFSET ?",
            [*params, limit, offset],
        )
        return [JobRow.from_sql(row) for row in rows], int(total)

    def history(self, job_id: str) -> list[HistoryEntry]:
        rows = self.db.execute(
            "SELECT state, seq, time, message FROM psij_history WHERE job_id = ? ORDER BY seq",
            (job_id,),
        )
        return [
            HistoryEntry(state=JobState(state), seq=seq, time=_when(when), message=message)
            for state, seq, when, message in rows
        ]

    def counts(self) -> dict[str, int]:
        rows = self.db.execute("SELECT state, COUNT(*) FROM psij_jobs GROUP BY state")
        return {state: int(count) for state, count in rows}
