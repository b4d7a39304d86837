"""No batch system: empty answers, so a client can ask any endpoint the same questions."""

from __future__ import annotations

from orbit_mq.contracts.queue_info.errors import AccountingUnavailable
from orbit_mq.contracts.queue_info.models import (
    Allocation,
    Backend,
    JobAllocation,
    Partition,
    QueueJob,
)
from orbit_mq.workers.plugins.queue_info.base import BatchBackend


class NoBackend(BatchBackend):
    name = Backend.NONE

    async def partitions(self) -> list[Partition]:
        return []

    async def jobs(self, user: str | None) -> list[QueueJob]:
        return []

    async def allocations(self, user: str | None) -> list[Allocation]:
        raise AccountingUnavailable(
            "no batch system on this endpoint, so no allocations; run queue_info on an "
            "endpoint where Slurm or PBS is installed"
        )

    async def job_allocation(self) -> JobAllocation | None:
        return None

    async def nodelist(self) -> list[str]:
        return []
