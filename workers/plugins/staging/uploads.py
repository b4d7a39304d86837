"""The uploads of one endpoint: live ones in memory, every one in the endpoint journal (table
`staging_uploads`) so a restarted endpoint resumes them, and the sweep of stale partials.

Used from the event loop only (the journal is); file work goes to threads.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
import uuid

from orbit_mq.contracts.staging.errors import (
    ChecksumMismatch,
    FileNotFound,
    IncompleteTransfer,
    PathNotAllowed,
    TransferNotFound,
)
from orbit_mq.contracts.staging.files import publish, remove_quietly
from orbit_mq.contracts.staging.models import FileInfo
from orbit_mq.workers.logs import bounded_logger
from orbit_mq.workers.plugins.staging import files
from orbit_mq.workers.plugins.staging.paths import Roots
from orbit_mq.workers.plugins.staging.transfers import Upload, UploadRow, partial_path

log = bounded_logger("orbit_mq.plugin.staging")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS staging_uploads (
    id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    target TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    overwrite INTEGER NOT NULL,
    partial TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS staging_uploads_key ON staging_uploads (user, target, size, sha256);
"""


class UploadJournal:
    """The staging_uploads table of the endpoint journal."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        db.executescript(_SCHEMA)

    def _rows(self, where: str, *args: object) -> list[UploadRow]:
        cursor = self.db.execute(
            "SELECT id, user, target, size, sha256, overwrite, partial, created "
            f"FROM staging_uploads {where}",
            args,
        )
        return [
            UploadRow(
                id=row[0], user=row[1], target=row[2], size=row[3], sha256=row[4],
                overwrite=bool(row[5]), partial=row[6], created=row[7],
            )
            for row in cursor
        ]  # fmt: skip

    def find(self, user: str, target: str, size: int, sha256: str) -> UploadRow | None:
        rows = self._rows(
            "WHERE user = ? AND target = ? AND size = ? AND sha256 = ? ORDER BY created DESC",
            user, target, size, sha256,
        )  # fmt: skip
        return rows[0] if rows else None

    def get(self, transfer_id: str) -> UploadRow | None:
        rows = self._rows("WHERE id = ?", transfer_id)
        return rows[0] if rows else None

    def all(self) -> list[UploadRow]:
        return self._rows("")

    def add(self, row: UploadRow) -> None:
        self.db.execute(
            "INSERT INTO staging_uploads VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (row.id, row.user, row.target, row.size, row.sha256, int(row.overwrite),
             row.partial, row.created),
        )  # fmt: skip

    def set_overwrite(self, transfer_id: str, overwrite: bool) -> None:
        self.db.execute(
            "UPDATE staging_uploads SET overwrite = ? WHERE id = ?", (int(overwrite), transfer_id)
        )

    def delete(self, transfer_id: str) -> None:
        self.db.execute("DELETE FROM staging_uploads WHERE id = ?", (transfer_id,))


def transfer_gone(transfer_id: str) -> TransferNotFound:
    return TransferNotFound(
        f"no active upload {transfer_id!r} on this endpoint (finished, aborted, expired, or "
        "the endpoint restarted); call put_begin again with the same path, size and sha256 "
        "to resume",
        {"transfer_id": transfer_id},
    )


class Uploads:
    def __init__(self, db: sqlite3.Connection, roots: Roots) -> None:
        self.table = UploadJournal(db)
        self.roots = roots
        self.live: dict[str, Upload] = {}
        self._begin = asyncio.Lock()  # one begin at a time: no partial file is opened twice

    def __len__(self) -> int:
        return len(self.live)

    async def begin(
        self, user: str, target: str, size: int, sha256: str, overwrite: bool
    ) -> tuple[Upload, bool]:
        """The upload of these bytes to `target` by `user`: the earlier one if there is one
        (resumed: True), else a new one."""
        async with self._begin:
            row = self.table.find(user, target, size, sha256)
            upload = await self._resume(row) if row is not None else None
            if upload is None:
                transfer_id = uuid.uuid4().hex
                row = UploadRow(
                    transfer_id, user, target, size, sha256, overwrite,
                    partial_path(target, transfer_id), time.time(),
                )  # fmt: skip
                fresh = await asyncio.to_thread(Upload.create, row)
                self.table.add(row)
                self.live[transfer_id] = fresh
                return fresh, False
            if upload.row.overwrite != overwrite:  # the latest put_begin decides
                upload.row.overwrite = overwrite
                self.table.set_overwrite(upload.row.id, overwrite)
            return upload, True

    async def _resume(self, row: UploadRow) -> Upload | None:
        live = self.live.get(row.id)
        if live is not None and not live.closed:
            return live
        try:
            upload = await asyncio.to_thread(Upload.reopen, row)
        except FileNotFound:  # the partial file is gone: start over
            self.table.delete(row.id)
            return None
        self.live[row.id] = upload
        log.info("resuming upload %s of %s at %d bytes", row.id, row.target, upload.received)
        return upload

    def get(self, transfer_id: str, user: str) -> Upload:
        upload = self.live.get(transfer_id)
        if upload is None or upload.row.user != user or upload.closed:
            raise transfer_gone(transfer_id)
        return upload

    async def commit(self, upload: Upload) -> FileInfo:
        """Check the digest and move the partial file into place."""
        async with upload.committing:
            if upload.closed:
                raise transfer_gone(upload.row.id)
            row = upload.row
            if upload.received < row.size:
                raise IncompleteTransfer(
                    f"only {upload.received} of {row.size} bytes received; send the rest from "
                    f"offset {upload.received}, then commit",
                    {"received": upload.received, "size": row.size},
                )
            digest = await asyncio.to_thread(upload.finish)
            if digest != row.sha256:
                await self._drop(upload)
                raise ChecksumMismatch(
                    f"the {row.size} bytes received have SHA-256 {digest}, not the declared "
                    f"{row.sha256}; the partial upload was deleted: put the file again",
                    {"expected": row.sha256, "actual": digest},
                )
            # On FileExists the upload stays: a put_begin with overwrite commits it at once.
            try:
                info = await asyncio.to_thread(self._publish, upload, digest)
            except PathNotAllowed:
                await self._drop(upload)  # it can never be committed: leave nothing behind
                raise
            self.live.pop(row.id, None)
            self.table.delete(row.id)
            return info

    def _publish(self, upload: Upload, digest: str) -> FileInfo:
        row = upload.row
        parent = os.path.dirname(row.target)
        if self.roots.resolve(parent) != parent:  # a directory was swapped for a symlink
            raise PathNotAllowed(
                f"{parent!r} changed into a symlink during the upload; refused, and the "
                "partial upload was deleted",
                {"path": row.target},
            )
        publish(row.partial, row.target, row.overwrite)
        upload.close()
        info = files.file_info(row.target)
        info.sha256 = digest
        return info

    async def abort(self, transfer_id: str, user: str) -> None:
        upload = self.live.get(transfer_id)
        row = upload.row if upload is not None else self.table.get(transfer_id)
        if row is None or row.user != user:
            raise transfer_gone(transfer_id)
        if upload is not None:
            await self._drop(upload)
        else:
            self.table.delete(transfer_id)
            await asyncio.to_thread(remove_quietly, row.partial)

    async def _drop(self, upload: Upload) -> None:
        """Forget an upload and delete its partial file; chunks still waiting give up."""
        self.live.pop(upload.row.id, None)
        self.table.delete(upload.row.id)
        await asyncio.to_thread(upload.discard)
        async with upload.changed:
            upload.changed.notify_all()

    async def clean_stale(self, max_age: float) -> int:
        """Delete uploads whose partial file is gone or untouched for `max_age` seconds."""
        now = time.time()
        stale = await asyncio.to_thread(stale_rows, self.table.all(), max_age, now)
        removed = 0
        for row in stale:
            live = self.live.get(row.id)
            if live is not None and now - live.touched <= max_age:
                continue
            log.info("removing stale partial upload %s of %s", row.id, row.target)
            removed += 1
            if live is not None:
                await self._drop(live)
            else:
                self.table.delete(row.id)
                await asyncio.to_thread(remove_quietly, row.partial)
        return removed

    def close(self) -> None:
        """Close the partial files; they stay on disk (and in the journal) for a resume."""
        for upload in self.live.values():
            upload.close()
        self.live.clear()


def stale_rows(rows: list[UploadRow], max_age: float, now: float) -> list[UploadRow]:
    """Uploads whose partial file is gone or untouched for `max_age` seconds."""
    stale = []
    for row in rows:
        try:
            modified = os.stat(row.partial, follow_symlinks=False).st_mtime
        except OSError:
            modified = 0.0
        if now - modified > max_age:
            stale.append(row)
    return stale
