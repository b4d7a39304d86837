"""The endpoint's journal: what must survive a crash or a restart, in one SQLite file.

`$ORBIT_MQ_HOME/endpoints/{endpoint}/journal.sqlite3` holds
- the event outbox: every event is written here before it is published (with publisher
  confirms) and deleted once the broker confirmed it, so an event is never lost;
- the replies of requests to `@rpc(dedupe=True)` methods, by caller and message_id, so a
  redelivered or re-sent request gets the stored answer instead of running twice;
- sessions, so they outlive an endpoint restart;
- whatever plugins keep in their own tables (`journal.db`), e.g. the jobs of the psij plugin.

WAL mode with synchronous=NORMAL: a commit survives the process being killed (only a power
loss may take the last transactions). All access is from the event-loop thread; statements
are short, so they run inline.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson

# Stored replies are kept this long; a request re-sent later than that runs again.
REPLY_RETENTION = 7 * 24 * 3600.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    exchange TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    body BLOB NOT NULL,
    message_id TEXT NOT NULL DEFAULT ''
);
-- A stored reply is its caller's: another user repeating the message_id gets no copy. (The
-- earlier table, keyed without the user, is dropped: a request repeated across that upgrade
-- runs again, and psij finds the jobs it made by their request key anyway.)
DROP TABLE IF EXISTS replies;
CREATE TABLE IF NOT EXISTS caller_replies (
    plugin TEXT NOT NULL,
    user TEXT NOT NULL,
    message_id TEXT NOT NULL,
    body BLOB NOT NULL,
    stored REAL NOT NULL,
    PRIMARY KEY (plugin, user, message_id)
);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    plugin TEXT NOT NULL,
    user TEXT NOT NULL,
    ttl REAL NOT NULL,
    created REAL NOT NULL,
    last_used REAL NOT NULL,
    state BLOB NOT NULL
);
"""


# Columns added since the first release, with the definition that older files get.
_ADDED_COLUMNS = {"outbox": {"message_id": "TEXT NOT NULL DEFAULT ''"}}


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    exchange: str
    routing_key: str
    body: bytes
    message_id: str


def add_columns(db: sqlite3.Connection, added: dict[str, dict[str, str]]) -> None:
    """Bring tables made by an earlier version up to date by adding their missing columns."""
    for table, columns in added.items():
        present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for column, definition in columns.items():
            if column not in present:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")


T = TypeVar("T")

# Bound parameters a statement may have in every SQLite still around (999 before 3.32).
MAX_PARAMETERS = 999


def insert_rows(
    db: sqlite3.Connection, into: str, rows: list[tuple[Any, ...]], replace: bool = False
) -> None:
    """INSERT (OR REPLACE) `rows` (tuples of one length) with as few statements as the
    parameter limit allows, in order (AUTOINCREMENT ids follow it). `into`: "table (column,
    …)". Each statement releases the GIL and, with other threads busy, waits to win it back:
    one statement for many rows costs little more than for one."""
    if not rows:
        return
    width = len(rows[0])
    marks = f"({placeholders(width)})"
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    for chunk in within_parameters(rows, width):
        values = [value for row in chunk for value in row]
        db.execute(f"{verb} INTO {into} VALUES {','.join([marks] * len(chunk))}", values)


def within_parameters(items: Sequence[T], width: int = 1) -> Iterator[Sequence[T]]:
    """`items` in order, in slices whose `width` parameters each fit one statement."""
    per = MAX_PARAMETERS // width
    for start in range(0, len(items), per):
        yield items[start : start + per]


def placeholders(count: int) -> str:
    """`?,?,…` for an `IN (…)` of `count` values."""
    return ",".join("?" * count)


def journal_path(home: Path, endpoint: str) -> Path:
    return home / "endpoints" / endpoint / "journal.sqlite3"


_REPLY_COLUMNS = "caller_replies (plugin, user, message_id, body, stored)"


class Journal:
    def __init__(self, path: Path | None) -> None:
        """A journal in the file `path`, or in memory (for tests) when `path` is None."""
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        target = ":memory:" if path is None else str(path)
        self.db = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        add_columns(self.db, _ADDED_COLUMNS)
        # Events queued in the open transaction (None: none is open), inserted at its end.
        self._queued: list[tuple[str, str, bytes, str]] | None = None
        # Replies to store at the end of this turn of the event loop, and who waits for them.
        self._replies: list[tuple[str, str, str, bytes, float]] = []
        self._replies_kept: asyncio.Future[None] | None = None

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        self._queued = []
        try:
            yield self.db
            self._insert_events(self._queued)
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        finally:
            self._queued = None
        self.db.execute("COMMIT")

    # -- outbox ----------------------------------------------------------------------------

    def add_event(self, exchange: str, routing_key: str, body: bytes, message_id: str) -> int:
        cursor = self.db.execute(
            "INSERT INTO outbox (exchange, routing_key, body, message_id) VALUES (?, ?, ?, ?)",
            (exchange, routing_key, body, message_id),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def queue_event(self, exchange: str, routing_key: str, body: bytes, message_id: str) -> None:
        """`add_event`, in the open transaction's one statement for all its events if there
        is one (each statement hands the GIL to other threads and waits to win it back)."""
        if self._queued is None:
            self.add_event(exchange, routing_key, body, message_id)
        else:
            self._queued.append((exchange, routing_key, body, message_id))

    def _insert_events(self, events: list[tuple[str, str, bytes, str]]) -> None:
        # in order: the ids, and so the publishing order, follow it
        insert_rows(self.db, "outbox (exchange, routing_key, body, message_id)", list(events))

    def pending_events(self, limit: int = 500) -> list[OutboxEntry]:
        rows = self.db.execute(
            "SELECT id, exchange, routing_key, body, message_id FROM outbox ORDER BY id LIMIT ?",
            (limit,),
        )
        return [OutboxEntry(*row) for row in rows]

    def published(self, ids: list[int]) -> None:
        if not ids:
            return
        with self.transaction() as db:
            for chunk in within_parameters(ids):
                db.execute(f"DELETE FROM outbox WHERE id IN ({placeholders(len(chunk))})", chunk)

    # -- replies (idempotency) -------------------------------------------------------------

    def stored_reply(self, plugin: str, user: str, message_id: str) -> bytes | None:
        row = self.db.execute(
            "SELECT body FROM caller_replies WHERE plugin = ? AND user = ? AND message_id = ?",
            (plugin, user, message_id),
        ).fetchone()
        return None if row is None else bytes(row[0])

    async def store_reply(self, plugin: str, user: str, message_id: str, body: bytes) -> None:
        """Keep a reply for repeats of its request. The replies of one turn of the event loop
        are stored with one statement and commit (a burst of calls ends in the same turn, and
        each statement hands the GIL to other threads and waits to win it back)."""
        self._replies.append((plugin, user, message_id, body, time.time()))
        if self._replies_kept is None:
            loop = asyncio.get_running_loop()
            self._replies_kept = loop.create_future()
            loop.call_soon(self._keep_replies)
        await asyncio.shield(self._replies_kept)

    def _keep_replies(self) -> None:
        rows, self._replies = self._replies, []
        kept, self._replies_kept = self._replies_kept, None
        assert kept is not None
        # a transaction open across an await (another's): the rows commit with it
        own = nullcontext() if self.db.in_transaction else self.transaction()
        try:
            with own:
                insert_rows(self.db, _REPLY_COLUMNS, rows, replace=True)
        except Exception as exc:
            kept.set_exception(exc)
            kept.exception()  # retrieved: its waiters may all have been cancelled
        else:
            kept.set_result(None)

    def forget_old_replies(self, now: float | None = None) -> int:
        cutoff = (time.time() if now is None else now) - REPLY_RETENTION
        return self.db.execute("DELETE FROM caller_replies WHERE stored < ?", (cutoff,)).rowcount

    # -- sessions --------------------------------------------------------------------------

    def save_session(self, row: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO sessions (id, plugin, user, ttl, created, last_used, state) "
            "VALUES (:id, :plugin, :user, :ttl, :created, :last_used, :state)",
            {**row, "state": orjson.dumps(row.get("state") or {})},
        )

    def delete_session(self, session_id: str) -> None:
        self.db.execute("DELETE FROM sessions WHERE id = ?", (session_id,))

    def load_sessions(self, plugin: str) -> list[dict[str, Any]]:
        cursor = self.db.execute(
            "SELECT id, plugin, user, ttl, created, last_used, state FROM sessions "
            "WHERE plugin = ?",
            (plugin,),
        )
        names = [column[0] for column in cursor.description]
        sessions = [dict(zip(names, row, strict=True)) for row in cursor]
        for session in sessions:
            session["state"] = orjson.loads(session["state"])
        return sessions
