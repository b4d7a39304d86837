"""`queue_info` on the endpoint: the contract (orbit_mq/contracts/queue_info) answered from
Slurm, PBS Pro or nothing, cached and refreshed in the background.

Settings come from `ORBIT_MQ_QUEUE_INFO_*` environment variables (see `QueueInfoSettings`).
"""

from __future__ import annotations

import asyncio
import getpass
import grp
import os
import pwd
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from pydantic import ValidationError

from orbit_mq.contracts import queue_info as contract
from orbit_mq.contracts.queue_info import (
    EVERYONE,
    QUEUE_PATTERN,
    USER_PATTERN,
    AllocationList,
    Backend,
    JobAllocation,
    Partition,
    QueueInfoReport,
    QueueJob,
    QueueJobList,
    QueueName,
    QueueNotFound,
    UnknownUser,
    UserName,
)
from orbit_mq.errors import ConfigError, InvalidRequest
from orbit_mq.workers.plugin import Plugin, PluginContext
from orbit_mq.workers.plugins.queue_info.base import (
    BatchBackend,
    QueueInfoSettings,
    Runner,
    command_runner,
    detect_backend,
)
from orbit_mq.workers.plugins.queue_info.cache import TtlCache
from orbit_mq.workers.plugins.queue_info.none import NoBackend
from orbit_mq.workers.plugins.queue_info.pbs import PbsBackend
from orbit_mq.workers.plugins.queue_info.slurm import SlurmBackend

T = TypeVar("T")


BACKENDS: dict[Backend, type[BatchBackend]] = {
    Backend.SLURM: SlurmBackend,
    Backend.PBS: PbsBackend,
    Backend.NONE: NoBackend,
}


def load_settings() -> QueueInfoSettings:
    try:
        return QueueInfoSettings()
    except ValidationError as exc:
        raise ConfigError(f"bad ORBIT_MQ_QUEUE_INFO_* setting: {exc}") from None


def make_backend(settings: QueueInfoSettings, run: Runner | None = None) -> BatchBackend:
    """The backend `settings` ask for (or the one detected), running commands with `run`."""
    backend = detect_backend(settings.backend)
    return BACKENDS[backend](run or command_runner(settings.command_timeout))


def user_groups(user: str) -> set[str]:
    """Names of `user`'s Unix groups; UnknownUser if the host does not know the user."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise UnknownUser(
            f"no user {user!r} on this endpoint's host; check the name, or pass '*'"
        ) from None
    names = set()
    for gid in os.getgrouplist(user, entry.pw_gid):
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:  # a group id without a name
            names.add(str(gid))
    return names


def may_use(partition: Partition, user: str, groups: set[str]) -> bool:
    if partition.allowed_users is not None and user not in partition.allowed_users:
        return False
    return partition.allowed_groups is None or bool(groups & set(partition.allowed_groups))


class QueueInfo(Plugin, contract.QueueInfo):
    # Settings for this class (tests, embedding); None: from the environment.
    config: ClassVar[QueueInfoSettings | None] = None

    @classmethod
    def is_available(cls) -> bool:
        """True where a batch system is found (or one is configured)."""
        settings = cls.config or load_settings()
        return detect_backend(settings.backend) is not Backend.NONE

    def __init__(self, context: PluginContext) -> None:
        super().__init__(context)
        self.settings = self.config or load_settings()
        self.impl = make_backend(self.settings)
        self.cache = TtlCache(self.settings.ttl)
        self.me = getpass.getuser()
        self._prefetcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await super().start()
        self.log.info("batch system: %s", self.impl.name)
        wanted = self.settings.prefetch and self.settings.ttl > 0
        if wanted and self.impl.name is not Backend.NONE:
            self._prefetcher = asyncio.create_task(self._prefetch())

    async def stop(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.cancel()
            await asyncio.gather(self._prefetcher, return_exceptions=True)
        await self.cache.close()

    async def health_details(self) -> dict[str, Any]:
        return {"backend": self.impl.name, "cached": len(self.cache), "queries": self.cache.runs}

    async def _prefetch(self) -> None:
        """Keep partitions and the endpoint user's jobs warm: refresh them before they expire."""
        while True:
            results = await asyncio.gather(
                self._partitions(force=True), self._jobs(self.me, True), return_exceptions=True
            )
            for result in results:
                if isinstance(result, Exception):
                    self.log.warning("background refresh failed: %s", result)
            await asyncio.sleep(max(self.settings.ttl * 0.9, 1.0))

    # -- cached scheduler questions ----------------------------------------------------------

    async def _cached(
        self, key: tuple[str, ...], produce: Callable[[], Awaitable[T]], force: bool
    ) -> tuple[datetime, T]:
        async def stamped() -> tuple[datetime, T]:
            return datetime.now(UTC), await produce()

        return await self.cache.get(key, stamped, force)

    async def _partitions(self, force: bool) -> tuple[datetime, list[Partition]]:
        return await self._cached(("partitions",), self.impl.partitions, force)

    async def _jobs(self, who: str, force: bool) -> tuple[datetime, list[QueueJob]]:
        user = None if who == EVERYONE else who
        return await self._cached(("jobs", who), lambda: self.impl.jobs(user), force)

    async def _user(self, user: str | None) -> str:
        """`user` checked; None is the endpoint's user."""
        if user is None or user == self.me:
            return self.me
        # Checked here too: the name ends up in a command line.
        if not re.match(USER_PATTERN, user):
            raise UnknownUser(f"{user!r} is not a user name; pass a login name or '*'")
        if user != EVERYONE:
            await asyncio.to_thread(user_groups, user)  # UnknownUser if unknown here
        return user

    # -- the API ------------------------------------------------------------------------------

    async def backend(self) -> Backend:
        return self.impl.name

    async def get_info(self, user: UserName | None = None, force: bool = False) -> QueueInfoReport:
        who = await self._user(user)
        collected, partitions = await self._partitions(force)
        if who != EVERYONE and any(p.allowed_groups or p.allowed_users for p in partitions):
            groups = await asyncio.to_thread(user_groups, who)
            partitions = [p for p in partitions if may_use(p, who, groups)]
        return QueueInfoReport(
            backend=self.impl.name, user=who, collected=collected, partitions=partitions
        )

    async def list_jobs(
        self, queue: QueueName, user: UserName | None = None, force: bool = False
    ) -> QueueJobList:
        if not re.match(QUEUE_PATTERN, queue):
            raise InvalidRequest(f"{queue!r} is not a partition/queue name, e.g. debug")
        who = await self._user(user)
        _, partitions = await self._partitions(False)
        names = [partition.name for partition in partitions]
        if queue not in names:
            raise QueueNotFound(
                f"no partition/queue {queue!r} on this endpoint; known: {', '.join(names) or '-'}"
            )
        collected, jobs = await self._jobs(who, force)
        mine = [job for job in jobs if queue in job.queue.split(",")]
        return QueueJobList(
            backend=self.impl.name, user=who, queue=queue, collected=collected, jobs=mine
        )

    async def list_all_jobs(
        self, user: UserName | None = None, force: bool = False
    ) -> QueueJobList:
        who = await self._user(user)
        collected, jobs = await self._jobs(who, force)
        return QueueJobList(backend=self.impl.name, user=who, collected=collected, jobs=jobs)

    async def list_allocations(
        self, user: UserName | None = None, force: bool = False
    ) -> AllocationList:
        who = await self._user(user)
        target = None if who == EVERYONE else who
        collected, allocations = await self._cached(
            ("allocations", who), lambda: self.impl.allocations(target), force
        )
        return AllocationList(
            backend=self.impl.name, user=who, collected=collected, allocations=allocations
        )

    async def job_allocation(self) -> JobAllocation | None:
        return await self.impl.job_allocation()

    async def nodelist(self) -> list[str]:
        return await self.impl.nodelist()
