"""The psij plugin's tunnel watchers in the journal, so that a restarted endpoint follows the
children it started before (`submit_tunneled`): a reverse tunnel is opened again, and
`tunnel_status` still knows every child whose job it keeps."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from orbit_mq.contracts.psij.models import TunnelMode

_SCHEMA = """
CREATE TABLE IF NOT EXISTS psij_tunnels (
    name TEXT PRIMARY KEY,
    mode TEXT NOT NULL,
    rendezvous TEXT NOT NULL,
    job_id TEXT NOT NULL,
    executor TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Watched:
    name: str
    mode: TunnelMode
    rendezvous: Path
    job_id: str
    executor: str


class TunnelJournal:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        db.executescript(_SCHEMA)

    def record(self, watched: Watched) -> None:
        """The child `name` is now this job's (a later child of the same name replaces it)."""
        self.db.execute(
            "INSERT OR REPLACE INTO psij_tunnels (name, mode, rendezvous, job_id, executor) "
            "VALUES (?,?,?,?,?)",
            (
                watched.name,
                watched.mode,
                str(watched.rendezvous),
                watched.job_id,
                watched.executor,
            ),
        )

    def all(self) -> list[Watched]:
        rows = self.db.execute(
            "SELECT name, mode, rendezvous, job_id, executor FROM psij_tunnels ORDER BY name"
        )
        return [
            Watched(name, mode, Path(path), job_id, executor)
            for name, mode, path, job_id, executor in rows
        ]

    def forget(self, names: list[str]) -> None:
        self.db.executemany("DELETE FROM psij_tunnels WHERE name = ?", [(n,) for n in names])
