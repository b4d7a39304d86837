"""What every batch-system backend offers, how one is chosen, and how commands are run."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from orbit_mq.contracts.queue_info.errors import CommandFailed, QueueInfoUnavailable
from orbit_mq.contracts.queue_info.models import (
    Allocation,
    Backend,
    JobAllocation,
    Partition,
    QueueJob,
)

# Environment variables that change what Slurm's commands print (formats, time style,
# default filters); unset for our commands so their output is what the parsers expect.
_FORMAT_VARIABLES = (
    "SINFO_",
    "SQUEUE_",
    "SACCT",  # SACCT_FORMAT and SACCTMGR_*
    "SCONTROL_",
    "SLURM_TIME_FORMAT",
    "PBS_QSTAT_",
)
STDERR_LIMIT = 2000  # characters of a failed command's stderr kept in the error


class QueueInfoSettings(BaseSettings):
    """queue_info settings, from `ORBIT_MQ_QUEUE_INFO_*` environment variables."""

    model_config = SettingsConfigDict(env_prefix="ORBIT_MQ_QUEUE_INFO_", extra="ignore")

    backend: Literal["auto", "slurm", "pbs", "none"] = Field(
        "auto", description="Batch system; auto: Slurm if sinfo exists, else PBS, else none."
    )
    ttl: float = Field(30.0, ge=0, description="Seconds a scheduler answer is reused.")
    prefetch: bool = Field(True, description="Refresh partitions and own jobs in the background.")
    command_timeout: float = Field(30.0, gt=0, description="Seconds a scheduler command may take.")


@dataclass(frozen=True)
class CommandResult:
    stdout: str
    stderr: str


Runner = Callable[[Sequence[str]], Awaitable[CommandResult]]


def detect_backend(
    choice: str = "auto", which: Callable[[str], str | None] = shutil.which
) -> Backend:
    """The batch system to use: `choice` unless it is auto, else what is on PATH.

    Slurm is tried first: Slurm sites may install `qstat` as a compatibility wrapper.
    """
    if choice != "auto":
        return Backend(choice)
    if which("sinfo") and which("squeue"):
        return Backend.SLURM
    if which("qstat") and which("pbsnodes"):
        return Backend.PBS
    return Backend.NONE


def command_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for scheduler commands: ours, in the C locale, without format overrides."""
    source = os.environ if environ is None else environ
    env = {key: value for key, value in source.items() if not key.startswith(_FORMAT_VARIABLES)}
    env["LC_ALL"] = "C"
    return env


def command_runner(timeout: float) -> Runner:
    """Run commands as subprocesses off the event loop, each bounded by `timeout` seconds."""
    env = command_environment()

    async def run(argv: Sequence[str]) -> CommandResult:
        return await run_command(argv, timeout, env)

    return run


async def run_command(
    argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None
) -> CommandResult:
    """`argv`'s output; a missing, failing or hanging command raises a clear domain error."""
    shown = shlex.join(argv)
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=dict(env) if env is not None else None,
        )
    except FileNotFoundError:
        raise QueueInfoUnavailable(
            f"{argv[0]} is not installed or not on PATH on this endpoint; put the batch "
            "system's client commands on the endpoint's PATH",
            {"command": shown},
        ) from None
    except OSError as exc:
        raise QueueInfoUnavailable(f"cannot run {shown}: {exc}", {"command": shown}) from None
    try:
        async with asyncio.timeout(timeout):
            out, err = await process.communicate()
    except TimeoutError:
        await _kill(process)
        raise QueueInfoUnavailable(
            f"{shown} did not answer within {timeout:g} s; the scheduler may be busy: try "
            "again later or raise ORBIT_MQ_QUEUE_INFO_COMMAND_TIMEOUT",
            {"command": shown, "timeout": timeout},
        ) from None
    except asyncio.CancelledError:
        await _kill(process)
        raise
    stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
    if process.returncode != 0:
        raise CommandFailed.of(shown, process.returncode or 0, stderr[-STDERR_LIMIT:])
    return CommandResult(stdout, stderr)


async def _kill(process: asyncio.subprocess.Process) -> None:
    """Never leave a command behind: kill it and reap it."""
    if process.returncode is None:
        process.kill()
        await process.wait()


class BatchBackend(ABC):
    """One batch system. Methods return every partition and job; the plugin filters by user."""

    name: ClassVar[Backend]

    def __init__(self, run: Runner, environ: Mapping[str, str] | None = None) -> None:
        self.run = run
        # The endpoint's own environment: inside a batch job it describes the allocation.
        self.environ = dict(os.environ if environ is None else environ)

    @abstractmethod
    async def partitions(self) -> list[Partition]:
        """Every partition/queue with its limits and node/CPU/GPU counts."""

    @abstractmethod
    async def jobs(self, user: str | None) -> list[QueueJob]:
        """The jobs the scheduler lists, of `user` (None: everyone's)."""

    @abstractmethod
    async def allocations(self, user: str | None) -> list[Allocation]:
        """Accounts `user` (None: everyone) may charge; AccountingUnavailable where unknown."""

    @abstractmethod
    async def job_allocation(self) -> JobAllocation | None:
        """The allocation the endpoint runs in, or None outside a batch job."""

    @abstractmethod
    async def nodelist(self) -> list[str]:
        """Hostnames of the endpoint's allocation, one per node; [] outside a batch job."""
