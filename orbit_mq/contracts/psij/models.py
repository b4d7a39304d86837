"""The psij contract's models: job specifications (ours and PSI/J's own JSON form), job
states, the reports the methods return, the events, and the SDK's job handle (`Job`).

Importing this module does not import psij: SDK and CLI users load these models too, and
importing psij installs a SIGCHLD handler in the importing process.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveInt,
    PrivateAttr,
    model_validator,
)

from orbit_mq.contracts.psij.staging import ALWAYS, StageFlag, StageIn, StageOut
from orbit_mq.errors import ConfigError
from orbit_mq.numbers import NotBool


class JobState(StrEnum):
    """PSI/J's job states. A job goes NEW → QUEUED → ACTIVE → one terminal state; FAILED and
    CANCELED may also follow any state before. A job with staging also passes STAGE_IN (before
    ACTIVE), STAGE_OUT and CLEANUP (after it), as it does them."""

    NEW = "NEW"
    QUEUED = "QUEUED"
    STAGE_IN = "STAGE_IN"
    ACTIVE = "ACTIVE"
    STAGE_OUT = "STAGE_OUT"
    CLEANUP = "CLEANUP"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"

    @property
    def final(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELED})
Stream = Literal["stdout", "stderr"]

if TYPE_CHECKING:
    from orbit_mq.contracts.psij import PsiJ

# -- durations -------------------------------------------------------------------------------

_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_AMOUNT = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")


def parse_duration(text: str) -> float:
    """Seconds in a PSI/J walltime string: "90.0 s" (what psij's serializer writes), "2h",
    "hh:mm:ss", "hh:mm", or plain digits, which PSI/J reads as minutes."""
    value = text.strip()
    if ":" in value:
        parts = value.split(":")
        if len(parts) > 3 or not all(part.strip().isdigit() for part in parts):
            raise ValueError(f"cannot read duration {text!r}: expected hh:mm or hh:mm:ss")
        hours, minutes, seconds = [*(int(part) for part in parts), 0][:3]
        return float(hours * 3600 + minutes * 60 + seconds)
    if value.isdigit():
        return float(int(value) * 60)
    match = _AMOUNT.match(value)
    if match is None:
        raise ValueError(
            f"cannot read duration {text!r}: use seconds (a number), 'N s|m|h|d', "
            "'hh:mm[:ss]' or minutes as digits"
        )
    return float(match[1]) * _UNIT_SECONDS[match[2]]


def _seconds(value: Any) -> Any:
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    return value


def _env_value(value: Any) -> Any:
    # PSI/J accepts integer environment values and turns them into strings.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


# constraints before the validators, so that the schema says "exclusiveMinimum"
Seconds = Annotated[float, Field(gt=0), BeforeValidator(_seconds), NotBool]
Count = Annotated[PositiveInt, NotBool]
EnvValue = Annotated[str, BeforeValidator(_env_value)]
AttributeValue = str | int | float | bool

# -- the job specification -------------------------------------------------------------------


class ResourceSpec(BaseModel):
    """What the job needs (PSI/J ResourceSpecV1). Of node_count, process_count and
    processes_per_node any two determine the third; all three must agree."""

    model_config = ConfigDict(extra="forbid")

    node_count: Count | None = Field(default=None, description="Compute nodes.")
    process_count: Count | None = Field(default=None, description="Process instances.")
    processes_per_node: Count | None = Field(default=None, description="Processes per node.")
    cpu_cores_per_process: Count | None = Field(default=None, description="CPU cores each.")
    gpu_cores_per_process: Count | None = Field(default=None, description="GPU cores each.")
    exclusive_node_use: bool = Field(
        default=False,
        # PSI/J's name first; `exclusive_node_access` is accepted as well.
        validation_alias=AliasChoices("exclusive_node_use", "exclusive_node_access"),
        description="Nodes run no other job.",
    )
    memory: Count | None = Field(default=None, description="Memory for the job, bytes.")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        nodes, procs, per_node = self.node_count, self.process_count, self.processes_per_node
        if nodes and procs and per_node and procs != nodes * per_node:
            raise ValueError(
                f"inconsistent resources: process_count ({procs}) must equal node_count "
                f"({nodes}) * processes_per_node ({per_node})"
            )
        if procs and per_node and nodes is None and procs % per_node:
            raise ValueError(
                f"inconsistent resources: process_count ({procs}) must be a multiple of "
                f"processes_per_node ({per_node})"
            )
        if procs and nodes and per_node is None and procs % nodes:
            raise ValueError(
                f"inconsistent resources: process_count ({procs}) must be a multiple of "
                f"node_count ({nodes})"
            )
        return self


class JobAttributes(BaseModel):
    """How the job is to be scheduled."""

    model_config = ConfigDict(extra="forbid")

    duration: Seconds | None = Field(
        default=None,
        description="Walltime in seconds (a PSI/J walltime string is accepted too); "
        "the executor's default (PSI/J: 10 minutes) when null.",
    )
    queue_name: str | None = Field(default=None, description="Queue or partition.")
    account: str | None = Field(default=None, description="Account (project) to charge.")
    reservation_id: str | None = Field(default=None, description="Advance reservation.")
    custom_attributes: dict[str, AttributeValue] = Field(
        default_factory=dict,
        description="Executor-specific settings, e.g. {'slurm.constraint': 'gpu'}; merged over "
        "the endpoint's site defaults.",
    )


# The JobSpec fields that make the job stage files (and run through the job-side stager).
STAGING_FIELDS = ("stage_in", "stage_out", "cleanup")


class JobSpec(BaseModel):
    """Everything psij.JobSpec carries. PSI/J's own JSON serialisation of a spec (psij's
    JSONSerializer output, as an object or as a string) is accepted as well."""

    model_config = ConfigDict(extra="forbid")

    executable: str = Field(min_length=1, description="Program to run, e.g. /bin/date.")
    arguments: list[str] = Field(default_factory=list, description="Its arguments (argv[1:]).")
    directory: str | None = Field(
        default=None, description="Working directory; the job directory's work/ when null."
    )
    name: str | None = Field(default=None, description="A label; the executable when null.")
    environment: dict[str, EnvValue] = Field(default_factory=dict)
    inherit_environment: bool = Field(
        default=True, description="Start from the endpoint's environment (else an empty one)."
    )
    stdin_path: str | None = None
    stdout_path: str | None = Field(default=None, description="The job directory's when null.")
    stderr_path: str | None = Field(default=None, description="The job directory's when null.")
    resources: ResourceSpec | None = None
    attributes: JobAttributes = Field(default_factory=JobAttributes)
    launcher: str | None = Field(default=None, description="PSI/J launcher, e.g. mpirun, srun.")
    pre_launch: str | None = Field(default=None, description="Script sourced before launching.")
    post_launch: str | None = Field(default=None, description="Script sourced after the job.")
    stage_in: list[StageIn] = Field(default_factory=list, description="Before it runs.")
    stage_out: list[StageOut] = Field(default_factory=list, description="After it ran.")
    cleanup: list[str] = Field(
        default_factory=list, description="Paths removed at the end (after stage_out)."
    )
    cleanup_flags: list[StageFlag] = Field(
        default_factory=lambda: list(ALWAYS), description="When cleanup happens."
    )

    @property
    def staged(self) -> bool:
        return any(getattr(self, name) for name in STAGING_FIELDS)

    @model_validator(mode="before")
    @classmethod
    def _accept_psij_form(cls, data: Any) -> Any:
        return from_psij_form(data)


def from_psij_form(data: Any) -> Any:
    """Turn PSI/J's serialisation of a spec into ours; anything else passes unchanged.

    PSI/J's JSONSerializer writes the resource spec with a `__version` key, durations as
    walltime strings ("600.0 s") and the deprecated `project_name` next to `account`.
    A psij.JobSpec object is serialised with psij's own serializer first.
    """
    if type(data).__module__.startswith("psij") and hasattr(data, "executable"):
        from psij.serialize import JSONSerializer

        data = JSONSerializer().dumps(data)
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise ValueError(f"a job spec given as a string must be JSON: {exc}") from None
    if not isinstance(data, dict):
        return data
    data = dict(data)
    resources = data.get("resources")
    if isinstance(resources, dict) and "__version" in resources:
        resources = dict(resources)
        version = resources.pop("__version")
        if version != 1:
            raise ValueError(f"resources: only PSI/J ResourceSpecV1 is supported, not {version}")
        data["resources"] = resources
    attributes = data.get("attributes")
    if isinstance(attributes, dict) and "project_name" in attributes:
        attributes = dict(attributes)
        project = attributes.pop("project_name")
        attributes.setdefault("account", project)
        data["attributes"] = attributes
    return data


# -- reports ---------------------------------------------------------------------------------


class Job(BaseModel):
    """A job and where it stands. In the SDK it is also the job's handle (results of the psij
    proxy are bound to it): `await job.wait()`, `job.watch()`, `job.output()`, `job.cancel()`."""

    job_id: str = Field(description="The endpoint's id for the job.")
    native_id: str | None = Field(description="The executor's id (pid, Slurm job id, …).")
    executor: str
    state: JobState
    seq: int = Field(description="Sequence number of the job's latest job_status event.")
    exit_code: int | None = None
    message: str | None = None
    submitted: datetime
    updated: datetime
    name: str | None = None
    session: str | None = Field(default=None, description="Session that submitted the job.")

    _psij: Any = PrivateAttr(default=None)

    def __repr__(self) -> str:
        return f"<Job {self.job_id} state={self.state}>"

    def bind(self, psij: Any) -> None:
        """Tie this job to the psij proxy that returned it (the SDK does this)."""
        self._psij = psij

    @property
    def psij(self) -> PsiJ:
        if self._psij is None:
            raise ConfigError(
                f"job {self.job_id} is not bound to a psij proxy: take it from a psij call "
                "(submit_job, get_job_status, …) or Job.attach(psij, job_id)"
            )
        proxy: PsiJ = self._psij
        return proxy

    @classmethod
    async def attach(cls, psij: PsiJ, job_id: str) -> JobStatus:
        """The handle of a job submitted earlier (by anyone the endpoint serves); JobNotFound
        (a NotFound) when the endpoint does not know the id."""
        return await psij.get_job_status(job_id=job_id, **NO_OUTPUT)

    async def status(self, stdout_offset: int = 0, stderr_offset: int = 0) -> JobStatus:
        """The job's full status (state, exit code, history, output from the offsets); this
        handle takes its state too."""
        status = await self.psij.get_job_status(
            job_id=self.job_id, stdout_offset=stdout_offset, stderr_offset=stderr_offset
        )
        self._take(status)
        return status

    async def cancel(self) -> Job:
        job = await self.psij.cancel_job(job_id=self.job_id)
        self._take(job)
        return job

    def watch(self) -> AsyncIterator[JobStatusEvent]:
        """Every state transition from the first, in order, each once, to the terminal one."""
        from orbit_mq.jobs import watch

        return watch(self)

    async def wait(self, timeout: float | None = None) -> JobStatusEvent:
        """The terminal transition, waiting for it at most `timeout` seconds (CallTimeout)."""
        from orbit_mq.jobs import wait

        return await wait(self, timeout)

    def output(self, follow: bool = False) -> AsyncIterator[OutputChunk]:
        """The job's stdout and stderr, page by page; with `follow`, also what is written
        later, until the job ends."""
        from orbit_mq.jobs import output

        return output(self, follow)

    def _take(self, other: Job) -> None:
        for name in Job.model_fields:
            setattr(self, name, getattr(other, name))


class HistoryEntry(BaseModel):
    state: JobState
    seq: int
    time: datetime
    message: str | None = None


class JobStatus(Job):
    """A job with its spec summary, output from the requested offsets and its state history."""

    executable: str
    arguments: list[str]
    directory: str | None
    queue: str | None
    account: str | None
    stdout: str = Field(description="Standard output from the requested byte offset.")
    stderr: str = Field(description="Standard error from the requested byte offset.")
    stdout_offset: int = Field(description="Byte offset to ask for next time (stdout).")
    stderr_offset: int = Field(description="Byte offset to ask for next time (stderr).")
    history: list[HistoryEntry]


# -- events ----------------------------------------------------------------------------------


class JobStatusEvent(BaseModel):
    """The data of a `job_status` event: one state transition of one job."""

    model_config = ConfigDict(json_schema_extra={"x-terminal-states": [*sorted(TERMINAL)]})

    job_id: str
    native_id: str | None = Field(description="The executor's id, once it is known.")
    state: JobState = Field(
        description="The state entered; COMPLETED, FAILED and CANCELED are terminal: no event "
        "of the job follows one of them."
    )
    seq: int = Field(
        ge=1,
        description="1 for NEW, then one more per transition, without gaps; the event's dedupe "
        "key is `{job_id}:{seq}`.",
    )
    time: datetime = Field(description="When the state was entered.")
    executor: str
    message: str | None = Field(default=None, description="Why, where the executor says.")
    exit_code: int | None = Field(default=None, description="Terminal states: the exit code.")
    stdout_tail: str | None = Field(default=None, description="Terminal: last 4 KiB of stdout.")
    stderr_tail: str | None = Field(default=None, description="Terminal: last 4 KiB of stderr.")

    def event_key(self) -> str:
        return f"{self.job_id}:{self.seq}"


class JobOutputEvent(BaseModel):
    """The data of a `job_output` event: new output of a job submitted with `stream_output`;
    every chunk of a stream follows the previous one and all precede the job's terminal
    job_status event."""

    job_id: str
    stream: Stream
    offset: int = Field(ge=0, description="Byte offset of `text` in the stream.")
    text: str = Field(description="At most 64 KiB, cut at a UTF-8 character boundary.")

    def event_key(self) -> str:
        return f"{self.job_id}:{self.stream}:{self.offset}"


class JobList(BaseModel):
    jobs: list[Job] = Field(description="Newest first.")
    total: int = Field(description="Jobs matching the filters.")
    offset: int
    limit: int


# -- tunnels (submit_tunneled) ---------------------------------------------------------------

TunnelMode = Literal["none", "forward", "reverse"]
TunnelStatusName = Literal["pending", "active", "failed", "done", "no_tunnel"]


class TunneledJobSpec(JobSpec):
    """A job spec whose executable may be left out: then it is the endpoint's Python running
    `orbit-mq endpoint start` followed by `arguments`."""

    executable: str | None = Field(  # type: ignore[assignment]
        default=None,
        description="Program to run; `python -m orbit_mq.cli endpoint start` when null.",
    )


class TunnelStatus(BaseModel):
    """Where the tunnel of a child endpoint started with submit_tunneled stands."""

    name: str = Field(description="The child endpoint's name.")
    status: TunnelStatusName = Field(
        description="pending (job or tunnel not up yet, or reconnecting), active, failed, done "
        "(the job ended), no_tunnel (no tunnel for that name, or tunnel='none')."
    )
    mode: TunnelMode | None = None
    port: int | None = Field(default=None, description="The port the child connects to.")
    job_id: str | None = None
    node: str | None = Field(default=None, description="The host at the tunnel's far end.")
    reconnects: int = Field(default=0, description="Times the SSH session was re-established.")
    message: str | None = Field(default=None, description="Why it failed.")


# -- the SDK's view of output ----------------------------------------------------------------

NO_OUTPUT = {"stdout_offset": 2**53 - 1, "stderr_offset": 2**53 - 1}  # past any output: none


@dataclass(frozen=True)
class OutputChunk:
    """A piece of a job's output, `offset` bytes into its stream (`Job.output`)."""

    stream: Stream
    offset: int
    text: str
