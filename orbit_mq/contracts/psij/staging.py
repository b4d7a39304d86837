"""PSI/J's file staging in a job spec: files copied in before the program runs, copied out
after it ends, and removed at the end, each step a state of the job (STAGE_IN, STAGE_OUT,
CLEANUP). The endpoint carries it out inside the job, on the node that runs it (PSI/J's
own executors on this release do not), so a batch job's staging happens where its files are.

Sources and targets are paths on the hosts the job runs on, or `file://` URLs; a relative path
is relative to the job's working directory. Bringing a file from elsewhere to the endpoint's
filesystem first is the staging plugin's work (`orbit-mq stage put`).
"""

from __future__ import annotations

from enum import StrEnum
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field, field_validator


class StageMode(StrEnum):
    COPY = "copy"
    MOVE = "move"
    LINK = "link"  # a symbolic link to the source


class StageFlag(StrEnum):
    """When a stage-out or a cleanup happens (PSI/J's StageOutFlags)."""

    IF_PRESENT = "if_present"  # a missing source is skipped, not an error
    ON_SUCCESS = "on_success"  # the program exited 0
    ON_ERROR = "on_error"  # it exited non-zero
    ON_CANCEL = "on_cancel"  # the job was cancelled


ALWAYS = [StageFlag.ON_SUCCESS, StageFlag.ON_ERROR, StageFlag.ON_CANCEL]


def local_path(text: str) -> str:
    """A path from a path or a `file://` URL; other URL schemes are refused."""
    if "://" not in text:
        return text
    url = urlparse(text)
    if url.scheme != "file" or url.netloc not in ("", "localhost"):
        raise ValueError(
            f"{text!r}: only paths and file:// URLs can be staged by the job; bring the file "
            "to the endpoint first (orbit-mq stage put)"
        )
    return unquote(url.path)


class _Transfer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1, description="Path or file:// URL.")
    target: str = Field(min_length=1, description="Path or file:// URL.")
    mode: StageMode = StageMode.COPY

    @field_validator("source", "target")
    @classmethod
    def _local(cls, value: str) -> str:
        return local_path(value)


class StageIn(_Transfer):
    """A file or directory put in place before the program starts (state STAGE_IN)."""

    flags: list[StageFlag] = Field(
        default_factory=list, description="Only if_present applies to a stage-in."
    )


class StageOut(_Transfer):
    """A file or directory copied out after the program ended (state STAGE_OUT)."""

    flags: list[StageFlag] = Field(
        default_factory=lambda: list(ALWAYS),
        description="When it happens; default: always (on success, error or cancel).",
    )
