"""The `queue_info` contract: the batch system's partitions, jobs and allocations in one
vocabulary (Slurm, PBS Pro or none), cached and refreshed in the background.

    qi = await fabric.endpoint("hpc1").plugin(QueueInfo)
    report = await qi.get_info()            # partitions the endpoint's user may use
    jobs = await qi.list_jobs(queue="debug", user="*")
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from orbit_mq.contract import Contract
from orbit_mq.contracts.queue_info.errors import (
    AccountingUnavailable,
    CommandFailed,
    InvalidHostlist,
    QueueInfoUnavailable,
    QueueNotFound,
    SchedulerOutputError,
    UnknownUser,
)
from orbit_mq.contracts.queue_info.models import (
    Allocation,
    AllocationList,
    Backend,
    CpuCounts,
    JobAllocation,
    NodeCounts,
    Partition,
    QueueInfoReport,
    QueueJob,
    QueueJobList,
    QueueJobState,
)
from orbit_mq.rpc import rpc

EVERYONE = "*"
USER_PATTERN = r"^(\*|[A-Za-z0-9_][A-Za-z0-9_.@$-]{0,63})$"
QUEUE_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.@-]{0,127}$"
UserName = Annotated[
    str,
    Field(
        pattern=USER_PATTERN,
        description="A user name, or '*' for everyone; omitted: the endpoint's user.",
    ),
]
QueueName = Annotated[str, Field(pattern=QUEUE_PATTERN, description="Partition/queue name.")]


class QueueInfo(Contract):
    name = "queue_info"
    version = "1.0.0"
    errors = (
        QueueInfoUnavailable,
        SchedulerOutputError,
        InvalidHostlist,
        AccountingUnavailable,
        QueueNotFound,
        UnknownUser,
        CommandFailed,
    )

    @rpc
    async def backend(self) -> Backend:
        """The batch system this endpoint reports on: slurm, pbs or none."""
        raise NotImplementedError

    @rpc
    async def get_info(self, user: UserName | None = None, force: bool = False) -> QueueInfoReport:
        """Partitions/queues `user` may use, with limits (walltime, nodes per job), node counts
        by state, CPU counts, GPUs and memory per node.

        `user` omitted: the endpoint's user; '*': every partition. Answers are cached for the
        configured TTL (default 30 s); `force` asks the scheduler again.
        """
        raise NotImplementedError

    @rpc
    async def list_jobs(
        self, queue: QueueName, user: UserName | None = None, force: bool = False
    ) -> QueueJobList:
        """Jobs of `user` in partition/queue `queue`: queued, held, running and finishing,
        each with its normalised state (PENDING, RUNNING, DONE, FAILED, CANCELLED, HELD,
        UNKNOWN) and the scheduler's own.

        `user` omitted: the endpoint's user; '*': everyone's. An unknown queue is not_found.
        Cached like get_info; `force` asks the scheduler again.
        """
        raise NotImplementedError

    @rpc
    async def list_all_jobs(
        self, user: UserName | None = None, force: bool = False
    ) -> QueueJobList:
        """Jobs of `user` in every partition/queue (see list_jobs).

        `user` omitted: the endpoint's user; '*': everyone's. `force` bypasses the cache.
        """
        raise NotImplementedError

    @rpc
    async def list_allocations(
        self, user: UserName | None = None, force: bool = False
    ) -> AllocationList:
        """Accounts/projects `user` may charge, with QOS and limits (Slurm: from sacctmgr).

        Where the batch system keeps no accounting (Slurm without slurmdbd, PBS, none) the
        answer is an `unavailable` error (AccountingUnavailable) that says so.
        """
        raise NotImplementedError

    @rpc
    async def job_allocation(self) -> JobAllocation | None:
        """The batch job the endpoint itself runs in: job id, partition, nodes, hostnames,
        CPUs and GPUs per node, account, runtime and time limit; null on a login node."""
        raise NotImplementedError

    @rpc
    async def nodelist(self) -> list[str]:
        """Hostnames of the endpoint's allocation, one per node in scheduler order; [] outside
        a batch job or without a batch system."""
        raise NotImplementedError


__all__ = [
    "EVERYONE",
    "AccountingUnavailable",
    "Allocation",
    "AllocationList",
    "Backend",
    "CommandFailed",
    "CpuCounts",
    "InvalidHostlist",
    "JobAllocation",
    "NodeCounts",
    "Partition",
    "QueueInfo",
    "QueueInfoReport",
    "QueueInfoUnavailable",
    "QueueJob",
    "QueueJobList",
    "QueueJobState",
    "QueueNotFound",
    "SchedulerOutputError",
    "UnknownUser",
]
