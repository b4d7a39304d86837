"""Retention: ended jobs' directories and journal rows pruned in the background, so that job
output does not fill a small `$HOME` forever.

    ORBIT_MQ_PSIJ_RETENTION=30d          # jobs that ended more than 30 days ago go
    ORBIT_MQ_PSIJ_RETENTION=10G          # the oldest-ended go while all ended jobs' directories
                                         # together take more than 10 GiB
    ORBIT_MQ_PSIJ_RETENTION=30d,10G      # both (also written age=30d,size=10G; a bare
                                         # 30m is 30 MiB, age=30m is 30 minutes)
    ORBIT_MQ_PSIJ_RETENTION_INTERVAL=600 # s between rounds; the first runs at start

Unset or `off`: nothing is pruned (`remove_job` and `orbit-mq rm` still remove by hand). A job
that has not ended, or that the tracker still follows, is never touched. Only the job's own
directory under the endpoint's home goes: a working directory the spec named is the user's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from orbit_mq.contracts.psij.models import parse_duration
from orbit_mq.errors import ConfigError
from orbit_mq.numbers import parse_size

ENV = "ORBIT_MQ_PSIJ_RETENTION"
ENV_INTERVAL = f"{ENV}_INTERVAL"
DEFAULT_INTERVAL = 600.0


@dataclass(frozen=True)
class Retention:
    max_age: float | None = None  # s since the job ended
    max_bytes: int | None = None  # all ended jobs' directories together
    interval: float = DEFAULT_INTERVAL

    def describe(self) -> str:
        parts = []
        if self.max_age is not None:
            parts.append(f"ended more than {self.max_age:g} s ago")
        if self.max_bytes is not None:
            parts.append(f"beyond {self.max_bytes} bytes of ended jobs' directories")
        return " or ".join(parts)


def parse_retention(text: str | None, interval: float = DEFAULT_INTERVAL) -> Retention | None:
    """`"30d"`, `"10G"`, `"30d,10G"`, `"age=30d,size=10G"`; None, `""` or `"off"`: no policy."""
    if text is None or text.strip().lower() in ("", "off", "none"):
        return None
    age: float | None = None
    size: int | None = None
    for raw in text.split(","):
        key, _, value = raw.strip().rpartition("=")
        try:
            if key == "age" or (key == "" and _is_age(value)):
                age = parse_duration(value)
            elif key in ("", "size"):
                size = parse_size(value)
            else:
                raise ValueError(f"unknown key {key!r}")
        except ValueError as exc:
            raise ConfigError(
                f"{ENV}={text!r}: cannot read {raw.strip()!r} ({exc}); use an age such as 30d "
                "or 12h, a size such as 10G, or both: 30d,10G"
            ) from None
    if interval <= 0:
        raise ConfigError(f"{ENV_INTERVAL} must be a positive number of seconds")
    return Retention(age, size, interval)


def _is_age(value: str) -> bool:
    # Without a key, M is a size (500M); minutes need the key: age=30m.
    return value.strip()[-1:].lower() in ("s", "h", "d")


def from_environment(configured: str | None, interval: float) -> Retention | None:
    """The policy: the environment's, else the plugin class's `retention` attributes."""
    raw_interval = os.environ.get(ENV_INTERVAL)
    try:
        interval = float(raw_interval) if raw_interval else interval
    except ValueError:
        raise ConfigError(f"{ENV_INTERVAL}={raw_interval!r} is not a number of seconds") from None
    return parse_retention(os.environ.get(ENV, configured), interval)


@dataclass(frozen=True)
class Ended:
    """An ended job that retention may remove."""

    job_id: str
    job_dir: Path
    ended: float


def choose(ended: list[Ended], sizes: dict[str, int], policy: Retention, now: float) -> list[str]:
    """The jobs to remove, oldest-ended first: those past the age, then the oldest of the rest
    while the directories of all ended jobs together exceed the size cap."""
    ordered = sorted(ended, key=lambda job: job.ended)
    chosen: list[str] = []
    if policy.max_age is not None:
        chosen = [job.job_id for job in ordered if now - job.ended > policy.max_age]
    if policy.max_bytes is not None:
        past_age = set(chosen)
        kept = [job for job in ordered if job.job_id not in past_age]
        total = sum(sizes.get(job.job_id, 0) for job in kept)
        for job in kept:
            if total <= policy.max_bytes:
                break
            chosen.append(job.job_id)
            total -= sizes.get(job.job_id, 0)
    return chosen


def directory_sizes(ended: list[Ended]) -> dict[str, int]:
    """Bytes under each job's directory (blocking: run it in a thread)."""
    return {job.job_id: _size(job.job_dir) for job in ended}


def _size(root: Path) -> int:
    total = 0
    for folder, _, names in os.walk(root):
        for name in names:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:  # removed meanwhile
                continue
    return total
