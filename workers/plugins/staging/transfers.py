"""One upload: a hidden partial file next to the target, written in order, and the final
atomic rename.

Chunks are written strictly in order, so the partial file is always a gap-free prefix of the
upload: its size *is* the resume offset, and the SHA-256 is kept up to date as bytes arrive.
Only after an endpoint restart is the prefix read once to rebuild the digest. A chunk that
arrives before its predecessors (pipelined calls may overtake each other) waits for them.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from dataclasses import dataclass

from orbit_mq.contracts.staging.errors import TransferGap
from orbit_mq.contracts.staging.files import (
    NAME_KEEP,
    PART_MARK,
    continue_partial,
    os_errors,
    remove_quietly,
)

# Partial files are created exclusively and never through a symlink.
PART_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
REOPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class UploadRow:
    """What the journal keeps of an upload, enough to resume it after a restart."""

    id: str
    user: str
    target: str
    size: int
    sha256: str
    overwrite: bool
    partial: str
    created: float


def partial_path(target: str, transfer_id: str) -> str:
    """`.{name}.orbit-part-{id}` beside the target: same filesystem, so the rename is atomic."""
    parent, name = os.path.split(target)
    return os.path.join(parent, f".{name[:NAME_KEEP]}{PART_MARK}{transfer_id}")


class Upload:
    """One upload in progress: the open partial file, bytes received, the running digest.

    `append` holds a thread lock, so writes stay ordered and the digest consistent even if
    the coroutine that started one is cancelled while its thread still runs."""

    def __init__(self, row: UploadRow, fd: int, received: int, digest: hashlib._Hash) -> None:
        self.row = row
        self.fd = fd
        self.received = received
        self.closed = False
        self.touched = time.time()
        self.changed = asyncio.Condition()  # notified whenever `received` grows
        self.committing = asyncio.Lock()
        self._digest = digest
        self._lock = threading.Lock()

    @classmethod
    def create(cls, row: UploadRow) -> Upload:
        with os_errors(row.partial):
            fd = os.open(row.partial, PART_FLAGS, 0o666)
        return cls(row, fd, 0, hashlib.sha256())

    @classmethod
    def reopen(cls, row: UploadRow) -> Upload:
        """Continue a partial file left by an earlier run: its bytes are read once to rebuild
        the digest (the only full re-read an upload ever needs)."""
        with os_errors(row.partial):
            fd = os.open(row.partial, REOPEN_FLAGS)
        try:
            done, digest = continue_partial(fd, row.size)
        except BaseException:
            os.close(fd)
            raise
        return cls(row, fd, done, digest)

    def append(self, offset: int, data: bytes) -> int:
        """Write the part of `data` (which starts at `offset`) not received yet; the new total."""
        with self._lock:
            if self.closed:
                return self.received
            skip = self.received - offset
            if skip < 0:
                raise TransferGap(
                    f"chunk at offset {offset} leaves a gap after byte {self.received}; send "
                    f"from offset {self.received}",
                    {"offset": offset, "received": self.received},
                )
            if skip < len(data):
                view = memoryview(data)[skip:]
                with os_errors(self.row.partial):
                    while view:  # pwrite may write less than asked
                        written = os.pwrite(self.fd, view, self.received)
                        self._digest.update(view[:written])
                        self.received += written
                        view = view[written:]
            self.touched = time.time()
            return self.received

    def finish(self) -> str:
        """Flush the partial file to disk and return the SHA-256 of what was received."""
        with self._lock, os_errors(self.row.partial):
            os.fsync(self.fd)
            return self._digest.hexdigest()

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                self.closed = True
                os.close(self.fd)

    def discard(self) -> None:
        """Close and delete the partial file, where it is now: its directory may have been
        moved (and a symlink put in its place) since it was opened."""
        with self._lock:
            where = self.row.partial if self.closed else _open_file_path(self.fd)
        self.close()
        remove_quietly(where or self.row.partial)


def _open_file_path(fd: int) -> str | None:
    """The path an open file has now (Linux: /proc/self/fd), or None when unknown or deleted."""
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None
    return None if path.endswith(" (deleted)") else path


async def write_chunk(upload: Upload, offset: int, data: bytes, wait: float) -> int:
    """Write a chunk in order: one that arrived early waits (up to `wait` s) for the bytes
    before it. Resent or overlapping chunks write only what is new. Returns bytes received."""
    if offset > upload.received:
        async with upload.changed:
            try:
                async with asyncio.timeout(wait):
                    await upload.changed.wait_for(
                        lambda: upload.received >= offset or upload.closed
                    )
            except TimeoutError:
                raise TransferGap(
                    f"chunk at offset {offset} waited {wait:.0f} s for bytes from "
                    f"{upload.received} on that never came; resume with put_begin",
                    {"offset": offset, "received": upload.received},
                ) from None
    received = await asyncio.to_thread(upload.append, offset, data)
    async with upload.changed:
        upload.changed.notify_all()
    return received
