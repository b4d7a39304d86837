"""Root confinement: every path a client names is resolved (symlinks followed) and must land
inside one of the allowed roots, which are resolved the same way.

Resolution is `os.path.realpath`: it follows every symlink that exists, also in the parents
of a target that does not exist yet, and removes `.` and `..` after each link is followed, so
`../..`, absolute escapes and symlinks that point out of the roots all end outside them.
Blocking (a few `lstat` calls): call from a worker thread.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from orbit_mq.contracts.staging.errors import (
    InvalidPath,
    PathNotAllowed,
)


class Roots:
    def __init__(self, roots: Iterable[Path | str]) -> None:
        resolved: list[str] = []
        for root in roots:
            real = os.path.realpath(os.path.expanduser(root))
            if real not in resolved:
                resolved.append(real)
        self.paths = tuple(resolved)

    def __str__(self) -> str:
        return ", ".join(self.paths)

    def contains(self, real: str) -> bool:
        return any(real == root or real.startswith(root.rstrip("/") + "/") for root in self.paths)

    def missing(self) -> list[str]:
        """The roots that are not directories (yet) on this host."""
        return [root for root in self.paths if not os.path.isdir(root)]

    def is_root(self, real: str) -> bool:
        return real in self.paths

    def resolve(self, path: str) -> str:
        """The real path of `path` (symlinks followed), or PathNotAllowed outside the roots."""
        absolute = absolute_path(path)
        real = os.path.realpath(absolute)
        self.check(path, real)
        return real

    def resolve_entry(self, path: str) -> str:
        """`path` with its parent resolved and its last component kept as it is: the entry
        itself, not what a symlink there points to (removing a link removes the link)."""
        absolute = absolute_path(path)
        parent, name = os.path.split(absolute)
        if name in ("", ".", ".."):  # a trailing slash or dots name a directory: follow it
            return self.resolve(path)
        real = os.path.join(os.path.realpath(parent), name)
        self.check(path, real)
        return real

    def check(self, path: str, real: str) -> None:
        if self.contains(real):
            return
        where = f"{path!r} is" if path == real else f"{path!r} resolves to {real!r},"
        raise PathNotAllowed(
            f"{where} outside the allowed roots {self}; use a path under one of them",
            {"path": path, "resolved": real, "roots": list(self.paths)},
        )


def absolute_path(path: str) -> str:
    """`path` with `~` expanded; InvalidPath unless that is absolute."""
    if not path or "\0" in path:
        raise InvalidPath(
            f"path {path!r} is empty or contains a NUL byte; give an absolute path",
            {"path": path},
        )
    expanded = os.path.expanduser(path)
    if not os.path.isabs(expanded):
        raise InvalidPath(
            f"path {path!r} is relative; give an absolute path (or one starting with ~)",
            {"path": path},
        )
    return expanded
