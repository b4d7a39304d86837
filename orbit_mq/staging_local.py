"""The client's side of transfers, on its own files: the digest of a file to upload, chunks
read and encoded, the partial file of a download, and blocking calls that never outlive the
file they use. Used by `orbit_mq.staging`; blocking functions run in worker threads."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from orbit_mq.contracts.staging.codec import decode_base64, encode_base64
from orbit_mq.contracts.staging.errors import ChecksumMismatch, FileExists
from orbit_mq.contracts.staging.files import NAME_KEEP, PART_MARK, continue_partial

T = TypeVar("T")


class BlockingCalls:
    """Blocking file calls in a thread, one at a time; `settle` waits for one that a cancelled
    task left running, so a file is never closed under a thread still using it."""

    def __init__(self) -> None:
        self._running: asyncio.Future[Any] | None = None

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        running = asyncio.ensure_future(asyncio.to_thread(func, *args))
        running.add_done_callback(lambda done: done.cancelled() or done.exception())
        self._running = running
        result: T = await asyncio.shield(running)
        return result

    async def settle(self) -> None:
        if self._running is not None and not self._running.done():
            await asyncio.wait([self._running])


def local_digest(path: Path) -> tuple[int, str]:
    """Size and SHA-256 of the regular file `path`."""
    with path.open("rb") as file:
        st = os.fstat(file.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(21, "not a regular file", str(path))
        return st.st_size, hashlib.file_digest(file, "sha256").hexdigest()


def read_encoded(fd: int, offset: int, length: int, path: Path) -> str:
    """`length` bytes of the file at `offset`, as base64 text."""
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise ChecksumMismatch(f"{path} changed while it was being sent; put it again")
    return encode_base64(data)


def local_target(local: str | os.PathLike[str], remote: str, overwrite: bool) -> Path:
    """Where a download goes: `local`, or inside it when it is (or ends like) a directory."""
    target = Path(local).expanduser()
    if str(local).endswith(("/", os.sep)):  # "into this directory", made if need be
        target.mkdir(parents=True, exist_ok=True)
    if target.is_dir():
        target = target / PurePosixPath(remote).name
    if target.exists() and not overwrite:
        raise FileExists(
            f"local file {str(target)!r} already exists; pass overwrite=True (CLI: --overwrite) "
            "to replace it",
            {"path": str(target)},
        )
    return target


@dataclass
class LocalPartial:
    """The partial file of a download, beside its target. Its name carries the start of the
    content's SHA-256, so a resume never continues the bytes of another version of the file."""

    path: Path
    fd: int
    have: int
    digest: Any  # a hashlib sha256 object

    @classmethod
    def open(cls, target: Path, sha256: str, size: int) -> LocalPartial:
        """Open (or continue) the partial file; the bytes already there are hashed once."""
        name = f".{target.name[:NAME_KEEP]}{PART_MARK}"
        path = target.with_name(f"{name}{sha256[:16]}")
        for old in target.parent.glob(f"{name}*"):  # other versions' partials are useless now
            if old != path:
                old.unlink(missing_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        try:
            done, digest = continue_partial(fd, size)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, done, digest)

    def append(self, pieces: list[str]) -> None:
        """Decode base64 pieces and write them, in order, at the end."""
        for text in pieces:
            view = memoryview(decode_base64(text))
            while view:
                written = os.pwrite(self.fd, view, self.have)
                self.digest.update(view[:written])
                self.have += written
                view = view[written:]

    def finish(self) -> str:
        """Flush to disk, close, and return the SHA-256 of everything received."""
        os.fsync(self.fd)
        self.close()
        return str(self.digest.hexdigest())

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
