"""The gateway's webhook store: one SQLite file (owner-only: it holds the secrets) with the jobs'
webhooks and their transitions here, and the task batches' (`batches.BatchHooks`) beside them.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from orbit_mq.webhooks.batches import BatchHooks
from orbit_mq.webhooks.delivery import Delivery, Target

_SCHEMA = """
CREATE TABLE IF NOT EXISTS hooks (
    job_id TEXT PRIMARY KEY, endpoint TEXT NOT NULL, owner TEXT NOT NULL, url TEXT NOT NULL,
    secret TEXT NOT NULL, created REAL NOT NULL, give_up_at REAL NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'pending', last_error TEXT
);
CREATE TABLE IF NOT EXISTS transitions (
    job_id TEXT NOT NULL, seq INTEGER NOT NULL, final INTEGER NOT NULL, body BLOB NOT NULL,
    received REAL NOT NULL, PRIMARY KEY (job_id, seq)
);
"""


class WebhookInfo(BaseModel):
    """A registered job webhook as its owner sees it (never with its secret)."""

    kind: Literal["job"] = "job"
    job_id: str
    endpoint: str
    owner: str
    url: str
    status: str = Field(description="pending (transitions to send), done, or failed.")
    delivered: int = Field(description="The last seq delivered (0: none yet).")
    attempts: int = Field(description="POSTs made, repeats after failures included.")
    last_error: str | None = None


class WebhookStore:
    """Jobs' webhooks (`jobs`) and task batches' (`batches`), in one file."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        os.chmod(path, 0o600)  # it holds the callbacks' secrets
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self.jobs = JobHooks(self._db)
        self.batches = BatchHooks(self._db)

    def close(self) -> None:
        self._db.close()


class JobHooks:
    """Jobs' webhooks, and each job's transitions until they are delivered (an `Outbox`)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self._db.executescript(_SCHEMA)

    def register(
        self, job_id: str, endpoint: str, owner: str, url: str, secret: str, give_up_at: float
    ) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO hooks (job_id, endpoint, owner, url, secret, created,"
            " give_up_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (job_id, endpoint, owner, url, secret, time.time(), give_up_at),
        )

    def keep(self, job_id: str, transition: Delivery) -> None:
        """Keep one transition (`n`: its seq) until it is delivered, or unclaimed for long."""
        self._db.execute(
            "INSERT OR IGNORE INTO transitions VALUES (?, ?, ?, ?, ?)",
            (job_id, transition.n, transition.final, transition.body, time.time()),
        )

    def registered(self, job_id: str) -> bool:
        row = self._db.execute("SELECT 1 FROM hooks WHERE job_id = ?", (job_id,)).fetchone()
        return row is not None

    def target(self, job_id: str) -> Target | None:
        row = self._db.execute(
            "SELECT * FROM hooks WHERE job_id = ? AND status = 'pending'", (job_id,)
        ).fetchone()
        if row is None:
            return None
        return Target(job_id, row["url"], row["secret"], row["give_up_at"], row["delivered"])

    def pending(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT job_id FROM hooks WHERE status='pending'")]

    def delivery(self, job_id: str, n: int) -> Delivery | None:
        row = self._db.execute(
            "SELECT seq, final, body FROM transitions WHERE job_id = ? AND seq = ?", (job_id, n)
        ).fetchone()
        return None if row is None else Delivery(row[0], row[2], bool(row[1]))

    def attempted(self, job_id: str, error: str | None) -> None:
        self._db.execute(
            "UPDATE hooks SET attempts = attempts + 1, last_error = ? WHERE job_id = ?",
            (error, job_id),
        )

    def delivered(self, job_id: str, delivery: Delivery) -> None:
        status = "done" if delivery.final else "pending"
        with self._db:  # one transaction: the hook moves on, its sent transition goes
            self._db.execute("BEGIN")
            self._db.execute(
                "UPDATE hooks SET delivered = ?, status = ? WHERE job_id = ?",
                (delivery.n, status, job_id),
            )
            self._db.execute(
                "DELETE FROM transitions WHERE job_id = ? AND seq <= ?", (job_id, delivery.n)
            )

    def failed(self, job_id: str, error: str) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "UPDATE hooks SET status = 'failed', last_error = ? WHERE job_id = ?",
                (error, job_id),
            )
            self._db.execute("DELETE FROM transitions WHERE job_id = ?", (job_id,))

    def forget_unclaimed(self, older_than: float) -> None:
        self._db.execute(
            "DELETE FROM transitions WHERE received < ? AND job_id NOT IN "
            "(SELECT job_id FROM hooks)",
            (older_than,),
        )

    def infos(self, owner: str | None = None) -> list[WebhookInfo]:
        where, args = ("WHERE owner = ?", (owner,)) if owner is not None else ("", ())
        rows = self._db.execute(f"SELECT * FROM hooks {where} ORDER BY created", args)
        return [_info(row) for row in rows]

    def info(self, job_id: str) -> WebhookInfo | None:
        row = self._db.execute("SELECT * FROM hooks WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else _info(row)


def _info(row: sqlite3.Row) -> WebhookInfo:
    return WebhookInfo(**{key: row[key] for key in WebhookInfo.model_fields if key != "kind"})
