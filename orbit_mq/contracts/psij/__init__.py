"""The `psij` contract: submit, watch, stream, cancel and list jobs through PSI/J executors
(local, slurm, pbs, lsf, …), with a durable journal and strongly ordered `job_status` events.

    psij = await fabric.endpoint("hpc1").plugin(PsiJ)
    job = await psij.submit_job(spec=JobSpec(executable="/bin/echo", arguments=["hello"]))
    print((await job.wait()).state)

Events (`{endpoint}.psij.job_status`, data `JobStatusEvent`): every transition, seq 1, 2, 3 …
per job without gaps (seq 1 = NEW); terminal ones carry exit_code, message and the last 4 KiB
of stdout and stderr. `{endpoint}.psij.job_output` (`JobOutputEvent`, jobs submitted with
`stream_output`): at most 64 KiB each, polled every 0.5 s, all before the job's terminal state.

A job belongs to the user who submitted it: every method that names a job (or a tunneled
endpoint, through its job) refuses another user's with `NotJobOwner` (`unauthorized`), except
to the endpoint's admins (ORBIT_MQ_ADMIN_USERS).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar

from pydantic import BaseModel, Field, NonNegativeFloat, NonNegativeInt

from orbit_mq.contract import Contract
from orbit_mq.contracts.psij.errors import (
    EndpointNameMissing,
    ExecutorUnavailable,
    HostKeyRejected,
    InvalidJobSpec,
    JobNotEnded,
    JobNotFound,
    LoginRefused,
    NotJobOwner,
    TunnelConflict,
    TunnelError,
)
from orbit_mq.contracts.psij.models import (
    TERMINAL,
    HistoryEntry,
    Job,
    JobAttributes,
    JobList,
    JobOutputEvent,
    JobSpec,
    JobState,
    JobStatus,
    JobStatusEvent,
    OutputChunk,
    ResourceSpec,
    TunneledJobSpec,
    TunnelMode,
    TunnelStatus,
)
from orbit_mq.rpc import rpc

Limit = Annotated[int, Field(ge=1, le=1000)]


class PsiJ(Contract):
    name = "psij"
    version = "1.0.0"
    events: ClassVar[dict[str, type[BaseModel]]] = {
        **Contract.events,
        "job_status": JobStatusEvent,
        "job_output": JobOutputEvent,
    }
    errors = (
        JobNotFound,
        NotJobOwner,
        JobNotEnded,
        InvalidJobSpec,
        ExecutorUnavailable,
        EndpointNameMissing,
        TunnelConflict,
        TunnelError,
        HostKeyRejected,
        LoginRefused,
    )

    @rpc(dedupe=True, session="optional")
    async def submit_job(
        self, spec: JobSpec, executor: str = "local", stream_output: bool = False
    ) -> Job:
        """Submit one job to `executor` (see `executors`); returns it once the executor has it.

        The job belongs to the caller's session, if any. Its state changes follow as
        `job_status` events (seq 1 = NEW); with `stream_output`, its output as `job_output`
        events. A refused submission (e.g. a missing executable) ends FAILED with a message.
        Unknown spec fields and inconsistent resources are refused before anything runs. A
        request repeated with the same message_id returns the first job instead of a second.
        """
        raise NotImplementedError

    @rpc(dedupe=True, session="optional")
    async def submit_jobs(
        self, specs: list[JobSpec], executor: str = "local", stream_output: bool = False
    ) -> list[Job]:
        """Submit several jobs in one request, as `submit_job` does each; results in order.

        If any spec is invalid, none is submitted.
        """
        raise NotImplementedError

    @rpc
    async def get_job_status(
        self, job_id: str, stdout_offset: NonNegativeInt = 0, stderr_offset: NonNegativeInt = 0
    ) -> JobStatus:
        """A job's state, native id, exit code, message, times, spec summary and state history,
        with its stdout and stderr from the given byte offsets (at most 1 MiB each); pass the
        returned offsets next time to page through or follow the output."""
        raise NotImplementedError

    @rpc
    async def list_jobs(
        self,
        state: JobState | None = None,
        session: str | None = None,
        offset: NonNegativeInt = 0,
        limit: Limit = 100,
        ended_before: datetime | None = None,
    ) -> JobList:
        """The caller's jobs on the endpoint (an admin's: every user's), newest first,
        optionally only those in `state`, submitted in `session`, or ended before
        `ended_before`; `offset` and `limit` page through them (`total` counts all matches)."""
        raise NotImplementedError

    @rpc
    async def cancel_job(self, job_id: str) -> Job:
        """Cancel a queued or running job; a job that already ended is returned unchanged.

        The job then ends CANCELED, even where the scheduler reports it FAILED or COMPLETED.
        The reply may still show the job running: a batch scheduler confirms later (watch its
        job_status events, or `wait_jobs`).
        """
        raise NotImplementedError

    @rpc
    async def remove_job(self, job_id: str) -> Job:
        """Remove an ended job: its directory on the endpoint (output, work/ unless the spec
        named a directory of its own) and its journal rows; returns the job as it was. A job
        that has not ended is refused (JobNotEnded, a Conflict): cancel it first."""
        raise NotImplementedError

    @rpc
    async def wait_jobs(
        self, job_ids: list[str], timeout: NonNegativeFloat | None = None
    ) -> list[Job]:
        """Wait until all the jobs ended, or `timeout` s passed (at most until shortly before
        the request's deadline); returns them in the order asked for, ended or not."""
        raise NotImplementedError

    @rpc(dedupe=True, session="optional")
    async def submit_tunneled(
        self,
        spec: TunneledJobSpec,
        executor: str = "local",
        tunnel: TunnelMode = "none",
        stream_output: bool = False,
    ) -> Job:
        """Start a child endpoint (`orbit-mq endpoint start -n NAME …`) as a job, reached through
        an SSH tunnel when its node cannot reach the broker; see `tunnel_status`.

        spec.arguments must name the child (-n/--name); without spec.executable the job runs
        this endpoint's Python with `-m orbit_mq.cli endpoint start` and those arguments.
        `forward`: the child tunnels through this host (--tunnel-via is added). `reverse`: once
        the job runs, this endpoint logs in to the job's node and forwards a port there to the
        broker; if that fails for ORBIT_MQ_TUNNEL_RETRY_WINDOW s, the job is cancelled and ends
        FAILED with the reason. One child per name at a time (else `conflict`).
        """
        raise NotImplementedError

    @rpc
    async def tunnel_status(self, name: str) -> TunnelStatus:
        """The tunnel of the child endpoint `name`: pending, active (with its port), failed
        (with the reason), done (its job ended) or no_tunnel."""
        raise NotImplementedError

    @rpc
    async def executors(self) -> list[str]:
        """The PSI/J executors installed on this endpoint (values for `executor`)."""
        raise NotImplementedError


__all__ = [
    "TERMINAL",
    "EndpointNameMissing",
    "ExecutorUnavailable",
    "HistoryEntry",
    "HostKeyRejected",
    "InvalidJobSpec",
    "Job",
    "JobAttributes",
    "JobList",
    "JobNotEnded",
    "JobNotFound",
    "JobOutputEvent",
    "JobSpec",
    "JobState",
    "JobStatus",
    "JobStatusEvent",
    "LoginRefused",
    "NotJobOwner",
    "OutputChunk",
    "PsiJ",
    "ResourceSpec",
    "TunnelConflict",
    "TunnelError",
    "TunnelMode",
    "TunnelStatus",
    "TunneledJobSpec",
]
