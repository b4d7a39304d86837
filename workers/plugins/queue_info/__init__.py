"""The queue_info plugin: the batch system's partitions, jobs and allocations in one vocabulary.

qi = await fabric.endpoint("hpc1").plugin("queue_info")
report = await qi.get_info()            # partitions the endpoint's user may use
jobs = await qi.list_jobs(queue="debug", user="*")
"""

from orbit_mq.workers.plugins.queue_info.base import QueueInfoSettings
from orbit_mq.workers.plugins.queue_info.errors import (
    AccountingUnavailable,
    CommandFailed,
    InvalidHostlist,
    QueueInfoUnavailable,
    QueueNotFound,
    SchedulerOutputError,
    UnknownUser,
)
from orbit_mq.workers.plugins.queue_info.models import (
    Allocation,
    AllocationList,
    Backend,
    CpuCounts,
    Job,
    JobAllocation,
    JobList,
    JobState,
    NodeCounts,
    Partition,
    QueueInfoReport,
)
from orbit_mq.workers.plugins.queue_info.plugin import QueueInfo

__all__ = [
    "AccountingUnavailable",
    "Allocation",
    "AllocationList",
    "Backend",
    "CommandFailed",
    "CpuCounts",
    "InvalidHostlist",
    "Job",
    "JobAllocation",
    "JobList",
    "JobState",
    "NodeCounts",
    "Partition",
    "QueueInfo",
    "QueueInfoReport",
    "QueueInfoSettings",
    "QueueInfoUnavailable",
    "QueueNotFound",
    "SchedulerOutputError",
    "UnknownUser",
]
