"""Domain errors of the staging plugin. Each subclasses a wire class of `orbit_mq.errors`, so
the code on the wire is right and the SDK raises the same class by name on the client side."""

from __future__ import annotations

from orbit_mq.errors import Conflict, InvalidRequest, NotFound, Unauthorized, Unavailable


class PathNotAllowed(Unauthorized):
    """The path resolves (after following symlinks) outside the endpoint's allowed roots, or
    the operation would remove an allowed root itself."""


class AccessDenied(Unauthorized):
    """The endpoint's own user may not read or write there (permissions, read-only fs)."""


class NoSpace(Unavailable):
    """The filesystem is full or the quota is used up."""


class InvalidPath(InvalidRequest):
    """The path is not usable at all: relative, empty, or containing a NUL byte."""


class FileExists(Conflict):
    """The target exists and the operation does not overwrite (pass overwrite=True)."""


class FileNotFound(NotFound):
    """No file or directory at that path."""


class NotADirectory(InvalidRequest):
    """A directory was expected (listing, a parent of a target) but the path is something else."""


class NotAFile(InvalidRequest):
    """A regular file was expected (download, upload target) but the path is something else."""


class DirectoryNotEmpty(Conflict):
    """Removing a non-empty directory needs recursive=True."""


class ChecksumMismatch(Conflict):
    """The bytes received do not have the SHA-256 declared for them; nothing was written."""


class IncompleteTransfer(Conflict):
    """A commit came before every byte of the upload had arrived."""


class TransferNotFound(NotFound):
    """No active upload with that id for this user on this endpoint (restart: call put_begin
    again with the same path, size and sha256 to resume)."""


class TransferGap(InvalidRequest):
    """A chunk starts past the bytes received so far and the missing bytes never came."""


class ChunkTooLarge(InvalidRequest):
    """A chunk (or requested chunk size) is over the endpoint's limit."""
