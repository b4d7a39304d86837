"""The queue_info plugin's wire models: partitions/queues, jobs, allocations and the
allocation the endpoint itself runs in. The same models serve every batch system."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field


class QueueJobState(StrEnum):
    """The normalised job states; each job also keeps its scheduler's own word."""

    PENDING = "PENDING"  # waiting for resources, a start time or a dependency
    RUNNING = "RUNNING"  # started (including starting up and cleaning up)
    DONE = "DONE"  # finished with success
    FAILED = "FAILED"  # finished without success (error, timeout, node failure, …)
    CANCELLED = "CANCELLED"  # removed by a user or an administrator
    HELD = "HELD"  # stopped until someone releases it (held, suspended, stopped)
    UNKNOWN = "UNKNOWN"  # a state this plugin does not know


class Backend(StrEnum):
    SLURM = "slurm"
    PBS = "pbs"
    NONE = "none"


class NodeCounts(BaseModel):
    total: int = Field(0, description="Nodes in the partition/queue.")
    idle: int = Field(0, description="Nodes with nothing running.")
    allocated: int = Field(0, description="Nodes running jobs (fully or partly used).")
    other: int = Field(0, description="Nodes down, drained, offline or in another state.")


class CpuCounts(BaseModel):
    total: int = Field(0, description="CPUs in the partition/queue.")
    idle: int = Field(0, description="CPUs free for new jobs.")
    allocated: int = Field(0, description="CPUs in use by jobs.")
    other: int = Field(0, description="CPUs on nodes that are down, drained or offline.")


class Partition(BaseModel):
    """One Slurm partition or PBS queue."""

    name: str = Field(description="Partition/queue name, as given to sbatch -p / qsub -q.")
    state: str = Field(description="Scheduler state, lowercase: up, down, drain, inactive, …")
    enabled: bool = Field(description="Whether it accepts and starts jobs now.")
    default: bool = Field(description="Whether jobs go here when no partition/queue is named.")
    max_walltime: int | None = Field(None, description="Longest walltime, s; null: no limit.")
    default_walltime: int | None = Field(None, description="Walltime when none is asked, s.")
    min_nodes: int | None = Field(None, description="Fewest nodes a job may ask for.")
    max_nodes: int | None = Field(None, description="Most nodes a job may ask for; null: no limit.")
    nodes: NodeCounts = Field(default_factory=NodeCounts, description="Nodes by state.")
    cpus: CpuCounts = Field(default_factory=CpuCounts, description="CPUs by state.")
    gpus: int = Field(0, description="GPUs on the partition's nodes (0 where none are known).")
    memory_per_node_mb: int | None = Field(
        None, description="Memory of the smallest node, MB; null where unknown."
    )
    allowed_groups: list[str] | None = Field(
        None, description="Unix groups allowed to use it; null: everyone."
    )
    allowed_users: list[str] | None = Field(
        None, description="Users allowed to use it; null: everyone."
    )
    nodelist: str = Field("", description="Its nodes, as a hostlist expression or list.")


class QueueInfoReport(BaseModel):
    backend: Backend = Field(description="The batch system: slurm, pbs or none.")
    user: str = Field(description="Whose view this is; '*' for every partition.")
    collected: datetime = Field(description="When the scheduler was asked (results are cached).")
    partitions: list[Partition] = Field(description="Partitions/queues the user may use.")


class QueueJob(BaseModel):
    """One job as the scheduler lists it."""

    job_id: str = Field(description="Scheduler job id, e.g. 1234, 1234_7 or 1234.server.")
    name: str = Field(description="Job name.")
    user: str = Field(description="Owner.")
    account: str | None = Field(None, description="Account/project charged; null if none.")
    queue: str = Field(description="Partition/queue (several, comma-separated, while pending).")
    state: QueueJobState = Field(description="Normalised state.")
    native_state: str = Field(description="The scheduler's own state, e.g. COMPLETING or Q.")
    reason: str | None = Field(None, description="Why it waits or what the scheduler says.")
    nodes: int | None = Field(None, description="Nodes asked for or allocated.")
    cpus: int | None = Field(None, description="CPUs asked for or allocated.")
    gpus: int | None = Field(None, description="GPUs asked for or allocated; null if unknown.")
    nodelist: str | None = Field(None, description="Hosts it runs on (hostlist); null if none.")
    time_used: int | None = Field(None, description="Walltime used so far, s.")
    time_limit: int | None = Field(None, description="Walltime limit, s; null: no limit.")
    submit_time: datetime | None = Field(None, description="When it was submitted.")
    start_time: datetime | None = Field(
        None, description="When it started (or, while pending, when it is expected to)."
    )


class QueueJobList(BaseModel):
    backend: Backend = Field(description="The batch system: slurm, pbs or none.")
    user: str = Field(description="Whose jobs; '*' for everyone's.")
    queue: str | None = Field(None, description="The partition/queue; null for all of them.")
    collected: datetime = Field(description="When the scheduler was asked (results are cached).")
    jobs: list[QueueJob] = Field(
        description="Jobs the scheduler lists (queued, running, finishing)."
    )


class Allocation(BaseModel):
    """One account (project) a user may charge, with its limits."""

    account: str = Field(description="Account/project name, as given to sbatch -A.")
    user: str | None = Field(None, description="User of this association; null: the account.")
    cluster: str | None = Field(None, description="Cluster of the association.")
    partition: str | None = Field(None, description="Partition it is limited to; null: any.")
    qos: list[str] = Field(default_factory=list, description="QOS the user may ask for.")
    default_qos: str | None = Field(None, description="QOS used when none is asked.")
    max_walltime: int | None = Field(None, description="Walltime limit per job, s.")
    limits: dict[str, str] = Field(
        default_factory=dict, description="Other limits as the scheduler prints them."
    )


class AllocationList(BaseModel):
    backend: Backend = Field(description="The batch system: slurm, pbs or none.")
    user: str = Field(description="Whose allocations; '*' for everyone's.")
    collected: datetime = Field(description="When the scheduler was asked (results are cached).")
    allocations: list[Allocation] = Field(description="Accounts and their limits.")


class JobAllocation(BaseModel):
    """The batch job the endpoint itself runs in."""

    backend: Backend = Field(description="The batch system: slurm or pbs.")
    job_id: str = Field(description="Scheduler job id.")
    job_name: str | None = Field(None, description="Job name.")
    partition: str | None = Field(None, description="Partition/queue it runs in.")
    account: str | None = Field(None, description="Account/project charged; null if none.")
    n_nodes: int = Field(description="Nodes in the allocation.")
    nodelist: list[str] = Field(description="Hostnames of the nodes, one per node.")
    cpus_per_node: int | None = Field(None, description="CPUs on this node in the allocation.")
    gpus_per_node: int | None = Field(None, description="GPUs per node; null if unknown.")
    runtime: int | None = Field(None, description="Seconds the job has run so far.")
    time_limit: int | None = Field(None, description="Walltime limit, s; null: no limit.")
