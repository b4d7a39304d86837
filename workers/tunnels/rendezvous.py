"""Rendezvous files: how a tunneled child endpoint and its parent tell each other ports.

One small JSON file per child endpoint (`{rendezvous_dir}/{endpoint}.json`, on a filesystem
both sides see). In reverse mode the child announces its node there (only if the file does
not exist yet), and the parent writes the port its remote forward listens on; the child reads
the port again before every (re)connection. In forward mode the child writes the port of its
local forward, for `tunnel_status`. Writes are atomic (a new file renamed over the old one),
so a reader never sees half a file. Blocking file IO, on tiny files.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError


class Rendezvous(BaseModel):
    endpoint: str
    mode: Literal["forward", "reverse"]
    port: int | None = Field(None, description="The port the child connects to.")
    node: str | None = Field(None, description="The child's host name.")
    pid: int | None = Field(None, description="The process that wrote the file.")
    updated: float = Field(default_factory=time.time)


def _temporary(path: Path, info: Rendezvous) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(info.model_dump_json())
    return Path(name)


def write(path: Path, info: Rendezvous) -> None:
    """Replace the file with `info`."""
    os.replace(_temporary(path, info), path)


def announce(path: Path, info: Rendezvous) -> bool:
    """Create the file with `info` unless it exists (then False: the parent wrote it first)."""
    temporary = _temporary(path, info)
    try:
        os.link(temporary, path)  # atomic, and fails when the file exists
        return True
    except FileExistsError:
        return False
    finally:
        temporary.unlink()


def read(path: Path) -> Rendezvous | None:
    """The file's content, or None when it is missing or unreadable."""
    try:
        return Rendezvous.model_validate_json(path.read_bytes())
    except (OSError, ValidationError):
        return None


def remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
