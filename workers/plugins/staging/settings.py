"""Staging settings: keyword arguments > `ORBIT_MQ_STAGING_*` environment > defaults.

ORBIT_MQ_STAGING_ROOTS=/scratch/alice:/home/alice   # ':' or ',' separated
ORBIT_MQ_STAGING_CHUNK_SIZE=4194304
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MiB = 1024 * 1024


def default_roots() -> list[Path]:
    return [Path.home(), Path("/tmp")]


class StagingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ORBIT_MQ_STAGING_", extra="ignore")

    roots: Annotated[list[Path], NoDecode] = Field(
        default_factory=default_roots,
        description="Directories the plugin may touch (absolute; symlinks in them are resolved).",
    )
    chunk_size: int = Field(MiB, gt=0, description="Chunk size offered to clients, bytes.")
    max_chunk_size: int = Field(
        8 * MiB,
        gt=0,
        description="Largest chunk accepted, bytes (also bounded by the endpoint's "
        "max_message_size, since chunks travel base64-encoded in JSON).",
    )
    partial_max_age: float = Field(
        24 * 3600.0, gt=0, description="Partial uploads untouched this long are deleted, s."
    )
    gap_wait: float = Field(
        30.0, gt=0, description="How long a chunk that came early waits for the bytes before it, s."
    )
    list_limit: int = Field(10_000, gt=0, description="Most entries one `list` call returns.")

    @field_validator("roots", mode="before")
    @classmethod
    def _split_roots(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in re.split(rf"[,{os.pathsep}]", value) if part.strip()]
        return value

    @field_validator("roots")
    @classmethod
    def _absolute_roots(cls, roots: list[Path]) -> list[Path]:
        expanded = [root.expanduser() for root in roots]
        relative = [str(root) for root in expanded if not root.is_absolute()]
        if relative:
            raise ValueError(f"staging roots must be absolute paths, not {', '.join(relative)}")
        if not expanded:
            raise ValueError("give at least one staging root")
        return expanded

    @model_validator(mode="after")
    def _chunk_fits(self) -> StagingSettings:
        if self.chunk_size > self.max_chunk_size:
            raise ValueError(
                f"chunk_size {self.chunk_size} is over max_chunk_size {self.max_chunk_size}"
            )
        return self
