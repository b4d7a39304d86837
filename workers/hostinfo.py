"""What kind of host this is: inside a batch allocation, on a login node, or neither."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from orbit_mq.protocol import HostRole

# (scheduler, psij executor, env var set inside an allocation, client command on login nodes)
_SCHEDULERS = (
    ("slurm", "slurm", "SLURM_JOB_ID", "sbatch"),
    ("pbs", "pbs", "PBS_JOBID", "qsub"),
    ("lsf", "lsf", "LSB_JOBID", "bsub"),
    ("flux", "flux", "FLUX_JOB_ID", "flux"),
    ("cobalt", "cobalt", "COBALT_JOBID", "cqsub"),
)


@dataclass(frozen=True)
class HostRoleInfo:
    role: HostRole
    scheduler: str
    psij_executor: str
    job_id: str | None


def detect_host_role(
    environ: Mapping[str, str] | None = None,
    which: Callable[[str], str | None] | None = None,
) -> HostRoleInfo:
    """compute inside an allocation, login where a scheduler client exists, else standalone."""
    env = os.environ if environ is None else environ
    which = which or shutil.which  # looked up now, so tests can replace it
    for scheduler, executor, job_var, _ in _SCHEDULERS:
        job_id = env.get(job_var)
        if job_id:
            return HostRoleInfo(HostRole.COMPUTE, scheduler, executor, job_id)
    for scheduler, executor, _, command in _SCHEDULERS:
        if which(command):
            return HostRoleInfo(HostRole.LOGIN, scheduler, executor, None)
    return HostRoleInfo(HostRole.STANDALONE, "none", "local", None)
