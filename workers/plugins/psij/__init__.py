"""The psij plugin: jobs through PSI/J executors, journaled, with strongly ordered events.

psij = await fabric.endpoint("hpc1").plugin("psij")
job = await psij.submit_job(spec=JobSpec(executable="/bin/echo", arguments=["hello"]))
"""

from orbit_mq.workers.plugins.psij.errors import ExecutorUnavailable, InvalidJobSpec, JobNotFound
from orbit_mq.workers.plugins.psij.models import (
    HistoryEntry,
    JobAttributes,
    JobInfo,
    JobList,
    JobSpec,
    JobState,
    JobStatus,
    ResourceSpec,
)
from orbit_mq.workers.plugins.psij.plugin import PsiJ

__all__ = [
    "ExecutorUnavailable",
    "HistoryEntry",
    "InvalidJobSpec",
    "JobAttributes",
    "JobInfo",
    "JobList",
    "JobNotFound",
    "JobSpec",
    "JobState",
    "JobStatus",
    "PsiJ",
    "ResourceSpec",
]
