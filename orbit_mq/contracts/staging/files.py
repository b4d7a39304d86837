"""What both sides of a transfer do with files: the hidden partial file a transfer writes
beside its target, its atomic publication, and OS errors as the contract's domain errors."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

from orbit_mq.contracts.staging.errors import (
    AccessDenied,
    FileExists,
    FileNotFound,
    InvalidPath,
    NoSpace,
    NotADirectory,
    NotAFile,
    PathNotAllowed,
)

PART_MARK = ".orbit-part-"
READ_BLOCK = 4 * 1024 * 1024
NAME_KEEP = 150  # characters of the target's name kept in the partial's name (NAME_MAX 255)


def continue_partial(fd: int, size: int) -> tuple[int, Any]:
    """The bytes a partial file (open as `fd`) already holds of a `size`-byte transfer and
    their running SHA-256; a partial longer than `size` is not a prefix of it: emptied."""
    have, digest = os.fstat(fd).st_size, hashlib.sha256()
    if have > size:
        os.ftruncate(fd, 0)
        have = 0
    done = 0
    while done < have:
        block = os.pread(fd, min(READ_BLOCK, have - done), done)
        if not block:
            break
        digest.update(block)
        done += len(block)
    return done, digest


@contextmanager
def os_errors(path: str) -> Iterator[None]:
    """Turn the OSError of a file operation on `path` into the matching domain error."""
    try:
        yield
    except FileNotFoundError:
        raise FileNotFound(f"{path!r} does not exist", {"path": path}) from None
    except FileExistsError:
        raise FileExists(
            f"{path!r} already exists; pass overwrite=True (CLI: --overwrite) to replace it",
            {"path": path},
        ) from None
    except NotADirectoryError:
        raise NotADirectory(f"a component of {path!r} is not a directory", {"path": path}) from None
    except IsADirectoryError:
        raise NotAFile(f"{path!r} is a directory, not a file", {"path": path}) from None
    except PermissionError as exc:
        raise AccessDenied(
            f"the endpoint's user may not access {path!r}: {exc.strerror}", {"path": path}
        ) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink swapped in after the check
            raise PathNotAllowed(
                f"{path!r} became a symlink while it was being used; refused", {"path": path}
            ) from None
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoSpace(f"no space left for {path!r}: {exc.strerror}", {"path": path}) from None
        if exc.errno == errno.EROFS:
            raise AccessDenied(f"{path!r} is on a read-only filesystem", {"path": path}) from None
        if exc.errno == errno.ENAMETOOLONG:
            raise InvalidPath(f"{path!r}: file name too long", {"path": path}) from None
        raise


def publish(partial: str, target: str, overwrite: bool) -> None:
    """Move the finished partial file to `target` atomically. Without `overwrite` this never
    replaces anything: a hard link fails if the target exists (then the partial stays)."""
    with os_errors(target):
        if overwrite:
            os.replace(partial, target)
        else:
            try:
                os.link(partial, target)
            except FileExistsError:
                raise FileExists(
                    f"{target!r} appeared while the upload ran; pass overwrite=True "
                    "(CLI: --overwrite) and put again to replace it (the data is kept: "
                    "nothing is sent twice)",
                    {"path": target},
                ) from None
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                # No hard links here (some network filesystems): claim the name exclusively,
                # then rename over our own placeholder.
                os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW))
                os.replace(partial, target)
            else:
                os.unlink(partial)
        sync_directory(os.path.dirname(target))


def sync_directory(path: str) -> None:
    """Make a rename in `path` durable (not possible everywhere: then it is skipped)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        with suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def remove_quietly(path: str) -> None:
    with suppress(FileNotFoundError):
        os.unlink(path)
