"""PBS Pro: `qstat -f`, `qstat -Qf`, `qstat -Bf` and `pbsnodes -a`, read by pure parse functions.

All four print the classic text form: a header line (`Job Id: 12.srv`, `Queue: workq`,
`Server: srv`, or a bare node name), then indented `key = value` lines; a long value goes on
in lines that start with a tab. `-F json` is not available on every PBS, so it is not used.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

from orbit_mq.contracts.queue_info.errors import AccountingUnavailable, CommandFailed
from orbit_mq.contracts.queue_info.models import (
    Allocation,
    Backend,
    CpuCounts,
    JobAllocation,
    NodeCounts,
    Partition,
    QueueJob,
)
from orbit_mq.contracts.queue_info.models import (
    QueueJobState as State,
)
from orbit_mq.workers.plugins.queue_info.base import BatchBackend
from orbit_mq.workers.plugins.queue_info.parsing import (
    is_blank,
    local_time,
    memory_mb,
    pbs_seconds,
    split_list,
    to_int,
)

Record = tuple[str, dict[str, str]]

NO_PROJECT = "_pbs_project_default"  # what PBS Pro shows for a job without a project
CTIME_FORMATS = ("%a %b %d %H:%M:%S %Y",)  # e.g. "Mon Jan 15 10:00:00 2024"

STATES: dict[str, State] = {
    **dict.fromkeys("QWT", State.PENDING),  # queued, waiting for its start time, in transit
    **dict.fromkeys("REB", State.RUNNING),  # running, exiting, array begun
    **dict.fromkeys("HSU", State.HELD),  # held, suspended, suspended for workstation use
    **dict.fromkeys("XC", State.DONE),  # finished subjob; Torque's completed
    "M": State.UNKNOWN,  # moved to another server: its state is that server's
}
_NODE_OTHER = frozenset(
    {"down", "offline", "state-unknown", "unknown", "stale", "unresolvable", "provisioning",
     "wait-provisioning", "maintenance", "sleep", "initializing", "busy"}
)  # fmt: skip
_NODE_ALLOCATED = frozenset({"job-busy", "job-exclusive", "job-sharing", "resv-exclusive"})


def parse_records(text: str, header: str | None = None) -> list[Record]:
    """(name, attributes) of every record; unknown keys are kept, odd lines skipped.

    `header` is the prefix of a record's first line (`Job Id:`); None takes every line
    that is not indented as a record name (pbsnodes prints bare node names).
    """
    records: list[Record] = []
    attrs: dict[str, str] | None = None  # None: outside a record (before one, or after junk)
    last: str | None = None
    for raw in text.splitlines():
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        if not line[0].isspace():
            attrs, last = None, None
            if header is None or line.startswith(header):
                attrs = {}
                records.append((line.removeprefix(header or "").strip(), attrs))
        elif attrs is None:
            continue
        elif line.startswith("\t") and last is not None:  # a wrapped value goes on
            attrs[last] += line.lstrip("\t")
        else:
            key, sep, value = line.lstrip().partition(" = ")
            if sep:
                last, attrs[key] = key, value
    # Trailing blanks only now: a value may wrap right after one.
    return [(name, {k: v.strip() for k, v in attrs.items()}) for name, attrs in records]


def normalise_state(native: str, exit_status: str | None = None) -> State:
    """The normalised state of a PBS job state letter (F uses the exit status)."""
    letter = native.strip().upper()
    if letter == "F":
        code = exit_status.strip() if exit_status else ""
        return State.DONE if code in ("", "0") else State.FAILED
    return STATES.get(letter, State.UNKNOWN)


def exec_hosts(exec_host: str | None) -> list[str]:
    """Hosts of `node1/0*4+node2/0*4` (or exec_vnode `(node1:ncpus=4)+(node2:ncpus=4)`),
    each once, in order."""
    hosts: list[str] = []
    for chunk in split_list(exec_host, "+"):
        host = chunk.strip("()").split("/", 1)[0].split(":", 1)[0]
        if host and host not in hosts:
            hosts.append(host)
    return hosts


def _account(attrs: Mapping[str, str]) -> str | None:
    """Account_Name, else the project unless it is PBS's placeholder for none."""
    project = attrs.get("project", "")
    return attrs.get("Account_Name") or (project if project and project != NO_PROJECT else None)


def _job(job_id: str, attrs: Mapping[str, str]) -> QueueJob:
    native = attrs.get("job_state", "")
    hosts = exec_hosts(attrs.get("exec_host") or attrs.get("exec_vnode"))
    return QueueJob(
        job_id=job_id,
        name=attrs.get("Job_Name", ""),
        user=attrs.get("Job_Owner", "").split("@", 1)[0],
        account=_account(attrs),
        queue=attrs.get("queue", ""),
        state=normalise_state(native, attrs.get("Exit_status")),
        native_state=native,
        reason=attrs.get("comment") or None,
        nodes=to_int(attrs.get("Resource_List.nodect")) or (len(hosts) or None),
        cpus=to_int(attrs.get("Resource_List.ncpus")),
        gpus=to_int(attrs.get("Resource_List.ngpus")) or 0,
        nodelist=",".join(hosts) or None,
        time_used=pbs_seconds(attrs.get("resources_used.walltime")),
        time_limit=pbs_seconds(attrs.get("Resource_List.walltime")),
        submit_time=local_time(attrs.get("ctime"), CTIME_FORMATS),
        start_time=local_time(attrs.get("stime"), CTIME_FORMATS),
    )


def parse_jobs(text: str) -> list[QueueJob]:
    """Jobs from `qstat -f`."""
    return [_job(job_id, attrs) for job_id, attrs in parse_records(text, "Job Id:")]


def _node_category(attrs: Mapping[str, str]) -> str:
    words = {word.strip() for word in attrs.get("state", "").split(",")}
    if words & _NODE_OTHER or not words - {""}:
        return "other"
    if words & _NODE_ALLOCATED or (to_int(attrs.get("resources_assigned.ncpus")) or 0) > 0:
        return "allocated"
    return "idle" if "free" in words else "other"


def _queue_nodes(name: str, queue_type: str, nodes: list[Record]) -> list[Record]:
    """Nodes that serve queue `name`: those tied to it, else the nodes tied to no queue."""
    if queue_type.lower() != "execution":
        return []
    tied = [node for node in nodes if node[1].get("queue") == name]
    return tied or [node for node in nodes if not node[1].get("queue")]


def _usage(nodes: list[Record]) -> tuple[NodeCounts, CpuCounts, int, int | None]:
    counts = NodeCounts(total=len(nodes))
    cpus = CpuCounts()
    gpus, memories = 0, []
    for _, attrs in nodes:
        category = _node_category(attrs)
        setattr(counts, category, getattr(counts, category) + 1)
        available = to_int(attrs.get("resources_available.ncpus")) or 0
        assigned = min(available, to_int(attrs.get("resources_assigned.ncpus")) or 0)
        cpus.total += available
        if category == "other":
            cpus.other += available
        else:
            cpus.allocated += assigned
            cpus.idle += available - assigned
        gpus += to_int(attrs.get("resources_available.ngpus")) or 0
        memory = memory_mb(attrs.get("resources_available.mem"))
        if memory is not None:
            memories.append(memory)
    return counts, cpus, gpus, min(memories) if memories else None


def _acl(attrs: Mapping[str, str], kind: str) -> list[str] | None:
    if attrs.get(f"acl_{kind}_enable", "").lower() != "true":
        return None
    return [entry.split("@", 1)[0] for entry in split_list(attrs.get(f"acl_{kind}s"))]


def parse_queues(
    queues_text: str, nodes_text: str = "", default_queue: str | None = None
) -> list[Partition]:
    """Queues from `qstat -Qf`, with node/CPU/GPU counts from `pbsnodes -a`."""
    nodes = parse_records(nodes_text)
    partitions = []
    for name, attrs in parse_records(queues_text, "Queue:"):
        queue_type = attrs.get("queue_type", "Execution")
        enabled = attrs.get("enabled", "True").lower() == "true"
        started = attrs.get("started", "True").lower() == "true"
        members = _queue_nodes(name, queue_type, nodes)
        counts, cpus, gpus, memory = _usage(members)
        state = "up" if enabled and started else ("disabled" if not enabled else "stopped")
        partitions.append(
            Partition(
                name=name,
                state=state if queue_type.lower() == "execution" else queue_type.lower(),
                enabled=enabled and started,
                default=name == default_queue,
                max_walltime=pbs_seconds(attrs.get("resources_max.walltime")),
                default_walltime=pbs_seconds(attrs.get("resources_default.walltime")),
                min_nodes=to_int(attrs.get("resources_min.nodect")),
                max_nodes=to_int(attrs.get("resources_max.nodect")),
                nodes=counts,
                cpus=cpus,
                gpus=gpus,
                memory_per_node_mb=memory,
                allowed_groups=_acl(attrs, "group"),
                allowed_users=_acl(attrs, "user"),
                nodelist=",".join(node for node, _ in members),
            )
        )
    return partitions


def default_queue(server_text: str) -> str | None:
    """`default_queue` of `qstat -Bf`."""
    for _, attrs in parse_records(server_text, "Server:"):
        if not is_blank(attrs.get("default_queue")):
            return attrs["default_queue"]
    return None


def nodefile_hosts(text: str) -> list[str]:
    """Hosts of a PBS_NODEFILE (one line per rank), each once, in order."""
    return list(dict.fromkeys(line.strip() for line in text.splitlines() if line.strip()))


def allocation_from_env(
    env: Mapping[str, str], nodefile: str = "", job: Mapping[str, str] | None = None
) -> JobAllocation | None:
    """The allocation of PBS_* variables (None outside one), with its PBS_NODEFILE text and
    its `qstat -f` attributes (`job`) where given."""
    job_id = env.get("PBS_JOBID")
    if not job_id:
        return None
    job = job or {}
    hosts = nodefile_hosts(nodefile) or exec_hosts(job.get("exec_host"))
    nodes = to_int(job.get("Resource_List.nodect")) or len(hosts)
    gpus = to_int(job.get("Resource_List.ngpus"))
    return JobAllocation(
        backend=Backend.PBS,
        job_id=job_id,
        job_name=env.get("PBS_JOBNAME") or job.get("Job_Name"),
        partition=env.get("PBS_QUEUE") or job.get("queue"),
        account=env.get("PBS_ACCOUNT") or _account(job),
        n_nodes=nodes,
        nodelist=hosts,
        cpus_per_node=to_int(env.get("NCPUS")),
        gpus_per_node=gpus // nodes if gpus is not None and nodes else None,
        runtime=pbs_seconds(job.get("resources_used.walltime")),
        time_limit=pbs_seconds(job.get("Resource_List.walltime")),
    )


class PbsBackend(BatchBackend):
    name = Backend.PBS

    async def partitions(self) -> list[Partition]:
        queues, nodes = await asyncio.gather(
            self.run(["qstat", "-Qf"]), self.run(["pbsnodes", "-a"])
        )
        try:
            server = (await self.run(["qstat", "-Bf"])).stdout
        except CommandFailed:  # without it only the default flag is unknown
            server = ""
        return parse_queues(queues.stdout, nodes.stdout, default_queue(server))

    async def jobs(self, user: str | None) -> list[QueueJob]:
        # `qstat -f` cannot filter by user (-u does not combine with -f): filter here.
        jobs = parse_jobs((await self.run(["qstat", "-f"])).stdout)
        return jobs if user is None else [job for job in jobs if job.user == user]

    async def allocations(self, user: str | None) -> list[Allocation]:
        raise AccountingUnavailable(
            "PBS Pro has no standard command that lists allocations; ask the site which "
            "project to give qsub with -P or -A"
        )

    async def job_allocation(self) -> JobAllocation | None:
        job_id = self.environ.get("PBS_JOBID")
        if not job_id:
            return None
        nodefile = await asyncio.to_thread(self._read_nodefile)
        try:
            records = parse_records((await self.run(["qstat", "-f", job_id])).stdout, "Job Id:")
            job = records[0][1] if records else {}
        except CommandFailed:
            job = {}
        return allocation_from_env(self.environ, nodefile, job)

    async def nodelist(self) -> list[str]:
        if not self.environ.get("PBS_JOBID"):
            return []
        return nodefile_hosts(await asyncio.to_thread(self._read_nodefile))

    def _read_nodefile(self) -> str:
        path = self.environ.get("PBS_NODEFILE")
        try:
            return Path(path).read_text(errors="replace") if path else ""
        except OSError:
            return ""
