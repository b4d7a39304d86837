"""Blocking file operations behind `stat`, `list`, `mkdir`, `remove` and downloads. Every path
here has been resolved and checked against the roots already (see paths.py)."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import threading
from collections import OrderedDict
from datetime import UTC, datetime

from orbit_mq.contracts.staging.errors import (
    DirectoryNotEmpty,
    FileExists,
    FileNotFound,
    NotADirectory,
    NotAFile,
)
from orbit_mq.contracts.staging.files import os_errors
from orbit_mq.contracts.staging.models import EntryType, FileInfo, Listing
from orbit_mq.workers.plugins.staging.paths import Roots

# Read files with O_NOFOLLOW: a last component swapped for a symlink after the check fails.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def entry_type(mode: int) -> EntryType:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "link"
    return "other"


def info_from_stat(path: str, st: os.stat_result, target: str | None = None) -> FileInfo:
    return FileInfo(
        path=path,
        name=os.path.basename(path) or path,
        type=entry_type(st.st_mode),
        size=st.st_size,
        mtime=datetime.fromtimestamp(st.st_mtime, UTC),
        mode=stat.S_IMODE(st.st_mode),
        target=target,
    )


def file_info(real: str, checksum: bool = False, cache: DigestCache | None = None) -> FileInfo:
    with os_errors(real):
        st = os.stat(real)
        info = info_from_stat(real, st)
        if checksum:
            if info.type != "file":
                raise NotAFile(f"{real!r} is a {info.type}; only files have a checksum")
            info.sha256 = (cache or DigestCache()).digest(real)
    return info


def list_dir(real: str, limit: int, start_after: str | None = None) -> Listing:
    """The entries of directory `real`, sorted by name, after `start_after`, at most `limit`."""
    with os_errors(real), os.scandir(real) as scan:
        names = sorted(entry.name for entry in scan)
    if start_after is not None:
        names = [name for name in names if name > start_after]
    entries = []
    for name in names[:limit]:
        path = os.path.join(real, name)
        try:
            st = os.lstat(path)
            target = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
        except OSError:  # removed while we listed: leave it out
            continue
        entries.append(info_from_stat(path, st, target))
    return Listing(path=real, entries=entries, total=len(names), truncated=len(names) > limit)


def make_dir(real: str, parents: bool, exist_ok: bool) -> None:
    with os_errors(real):
        if os.path.isdir(real):
            if exist_ok:
                return
            raise FileExists(
                f"directory {real!r} already exists; pass exist_ok=True to accept that",
                {"path": real},
            )
        if parents:
            os.makedirs(real)
        else:
            try:
                os.mkdir(real)
            except FileNotFoundError:
                raise FileNotFound(
                    f"parent directory {os.path.dirname(real)!r} does not exist; pass "
                    "parents=True to create it",
                    {"path": real},
                ) from None


def remove_path(real: str, recursive: bool) -> int:
    """Remove a file, a symlink (not its target) or a directory; the number of entries removed."""
    with os_errors(real):
        st = os.lstat(real)
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(real)
            return 1
        if not recursive:
            try:
                os.rmdir(real)
            except OSError as exc:
                if exc.errno == errno.ENOTEMPTY:
                    raise DirectoryNotEmpty(
                        f"directory {real!r} is not empty; pass recursive=True to remove it "
                        "with everything in it",
                        {"path": real},
                    ) from None
                raise
            return 1
        count = 1 + sum(len(dirs) + len(files) for _, dirs, files in os.walk(real))
        # rmtree never follows symlinks inside the tree (fd-based where the OS allows it).
        shutil.rmtree(real)
        return count


def sha256_of(path: str) -> str:
    with os_errors(path):
        fd = os.open(path, READ_FLAGS)
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise NotAFile(f"{path!r} is not a regular file", {"path": path})
            return hashlib.file_digest(file, "sha256").hexdigest()


class DigestCache:
    """SHA-256 digests by (device, inode, size, mtime, ctime): a repeated or resumed download
    of an unchanged file does not read it twice. Thread-safe; bounded."""

    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self._digests: OrderedDict[tuple[int, ...], str] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(st: os.stat_result) -> tuple[int, ...]:
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def digest(self, path: str) -> str:
        with os_errors(path):
            before = os.stat(path)
        key = self.key(before)
        with self._lock:
            known = self._digests.get(key)
        if known is not None:
            return known
        digest = sha256_of(path)
        with os_errors(path):
            unchanged = self.key(os.stat(path)) == key
        if unchanged:  # a file written while we read it gets no cache entry
            with self._lock:
                self._digests[key] = digest
                while len(self._digests) > self.capacity:
                    self._digests.popitem(last=False)
        return digest


def regular_file(real: str) -> os.stat_result:
    """`stat` of the regular file `real`, opened without following a last-moment symlink."""
    with os_errors(real):
        fd = os.open(real, READ_FLAGS)
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        raise NotAFile(f"{real!r} is not a regular file", {"path": real})
    return st


def read_chunk(real: str, offset: int, length: int) -> tuple[bytes, int]:
    """Up to `length` bytes of regular file `real` from `offset`, and the file's size."""
    with os_errors(real):
        fd = os.open(real, READ_FLAGS)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise NotAFile(f"{real!r} is not a regular file", {"path": real})
            return os.pread(fd, length, offset), st.st_size
        finally:
            os.close(fd)


def prepare_target(roots: Roots, path: str, overwrite: bool, parents: bool) -> str:
    """The resolved upload target, checked: not a directory, not existing unless `overwrite`,
    its parent directory present (created, inside the roots, when `parents`)."""
    target = roots.resolve(path)
    with os_errors(target):
        existing = os.stat(target) if os.path.lexists(target) else None
    if existing is not None:
        if stat.S_ISDIR(existing.st_mode):
            raise NotAFile(
                f"{target!r} is a directory; name the file to create inside it", {"path": target}
            )
        if not overwrite:
            raise FileExists(
                f"{target!r} already exists; pass overwrite=True (CLI: --overwrite) to replace it",
                {"path": target},
            )
    parent = os.path.dirname(target)
    if not os.path.isdir(parent):
        if os.path.lexists(parent):
            raise NotADirectory(f"{parent!r} is not a directory", {"path": parent})
        if not parents:
            raise FileNotFound(
                f"directory {parent!r} does not exist; create it first (mkdir) or pass "
                "parents=True",
                {"path": parent},
            )
        with os_errors(parent):
            os.makedirs(parent, exist_ok=True)
        roots.resolve(parent)  # still inside the roots once created
    return target
