"""Slurm helpers for the tests of the psij plugin.

    from slurm_support import requires_slurm, slurm_available, slurm_executor_config

    @requires_slurm
    def test_submit(tmp_path): ...

`requires_slurm` skips a test where no Slurm cluster is usable (locally: set one up with
`sudo bash scripts/ensure-slurm.sh`). With `ORBIT_MQ_REQUIRE_SLURM=1` (set by .ci/run in CI) the
test is never skipped, so a missing Slurm makes it fail instead of passing silently.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from psij.executors.batch.slurm import SlurmExecutorConfig

REQUIRE_ENV = "ORBIT_MQ_REQUIRE_SLURM"


def slurm_required() -> bool:
    """True when the slurm tests must run (and fail) even without a usable Slurm."""
    return os.environ.get(REQUIRE_ENV, "").strip().lower() in ("1", "true", "yes")


@functools.cache
def slurm_available() -> bool:
    """True when `sinfo` works and shows at least one partition that is `up` (cached)."""
    sinfo = shutil.which("sinfo")
    if sinfo is None:
        return False
    try:
        out = subprocess.run(
            [sinfo, "-h", "-o", "%a"],
            capture_output=True,
            text=True,
            timeout=15,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return any(line.strip() == "up" for line in out.splitlines())


requires_slurm = pytest.mark.skipif(
    not slurm_required() and not slurm_available(),
    reason=(
        "no usable Slurm (sinfo shows no partition up); set one up with "
        f"`sudo bash scripts/ensure-slurm.sh`, or set {REQUIRE_ENV}=1 to fail instead of skip"
    ),
)


def slurm_executor_config(work_dir: str | os.PathLike[str]) -> SlurmExecutorConfig:
    """A psij Slurm executor config for tests: its files in `work_dir`, squeue polled every 1 s.

    psij's default polling interval (30 s) is far too slow for tests.
    """
    from psij.executors.batch.slurm import SlurmExecutorConfig

    return SlurmExecutorConfig(
        work_directory=Path(work_dir),
        queue_polling_interval=1,
        initial_queue_polling_delay=1,
    )
