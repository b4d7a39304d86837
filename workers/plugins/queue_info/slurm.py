"""Slurm: `sinfo`, `squeue`, `scontrol` and `sacctmgr`, read by pure parse functions.

Commands print fixed `%`-field formats separated by `|` (portable across Slurm versions,
unlike `--json`); the free-text job name is the last field so a `|` inside it survives.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from orbit_mq.contracts.queue_info.errors import (
    AccountingUnavailable,
    CommandFailed,
    SchedulerOutputError,
    UnknownUser,
)
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
from orbit_mq.workers.plugins.queue_info.hostlist import expand_hostlist
from orbit_mq.workers.plugins.queue_info.parsing import (
    clock_seconds,
    is_blank,
    local_time,
    split_list,
    to_int,
)

SEP = "|"
# partition(* = default) avail timelimit defaulttime jobsize nodes(A/I/O/T) cpus(A/I/O/T)
# gres memory(MB) nodecount groups nodelist
SINFO_FORMAT = SEP.join(["%P", "%a", "%l", "%L", "%s", "%F", "%C", "%G", "%m", "%D", "%g", "%N"])
# id partition user account state nodes cpus gres(per node) used limit submit start reason
# nodelist name (last: it may contain the separator)
SQUEUE_FORMAT = SEP.join(
    ["%i", "%P", "%u", "%a", "%T", "%D", "%C", "%b", "%M", "%l", "%V", "%S", "%r", "%N", "%j"]
)
SACCTMGR_FIELDS = "Cluster,Account,User,Partition,QOS,DefaultQOS,MaxWall,GrpTRES,MaxTRES,MaxJobs"

STATES: dict[str, State] = {
    **dict.fromkeys(["PENDING", "PD", "CONFIGURING", "CF", "REQUEUED", "RQ"], State.PENDING),
    **dict.fromkeys(["REQUEUE_FED", "RF", "POWER_UP_NODE", "PU"], State.PENDING),
    **dict.fromkeys(["RUNNING", "R", "COMPLETING", "CG", "SIGNALING", "SI"], State.RUNNING),
    **dict.fromkeys(["STAGE_OUT", "SO", "RESIZING", "RS", "UPDATE_DB", "UD"], State.RUNNING),
    **dict.fromkeys(["COMPLETED", "CD"], State.DONE),
    **dict.fromkeys(["FAILED", "F", "TIMEOUT", "TO", "NODE_FAIL", "NF"], State.FAILED),
    **dict.fromkeys(["OUT_OF_MEMORY", "OOM", "BOOT_FAIL", "BF"], State.FAILED),
    **dict.fromkeys(["DEADLINE", "DL", "PREEMPTED", "PR"], State.FAILED),
    **dict.fromkeys(["CANCELLED", "CA", "REVOKED", "RV"], State.CANCELLED),
    **dict.fromkeys(["SUSPENDED", "S", "STOPPED", "ST", "SPECIAL_EXIT", "SE"], State.HELD),
    **dict.fromkeys(["REQUEUE_HOLD", "RH", "RESV_DEL_HOLD", "RD"], State.HELD),
}
# Pending jobs that only a user or an administrator can release.
HELD_REASONS = frozenset({"JobHeldUser", "JobHeldAdmin", "held"})

_GRES_COUNT = re.compile(r"^gpu(?::[^:]*)*?:(\d+)$")
_SCONTROL_KEY = re.compile(r"\s(?=[A-Za-z][\w/:]*=)")


def normalise_state(native: str, reason: str | None = None) -> State:
    """The normalised state of a Slurm state (long or short form, `CANCELLED by 123`)."""
    word = native.strip().split(" ", 1)[0].rstrip("+").upper()
    state = STATES.get(word, State.UNKNOWN)
    if state is State.PENDING and reason in HELD_REASONS:
        return State.HELD
    return state


def gres_gpus(gres: str | None) -> int:
    """GPUs in a GRES string: `gpu:a100:4(S:0-1),mps:100` → 4; `gres:gpu:2` → 2."""
    if is_blank(gres):
        return 0
    assert gres is not None
    text = re.sub(r"\([^)]*\)", "", gres)  # socket bindings, e.g. (S:0-1)
    total = 0
    for item in split_list(text):
        item = item.removeprefix("gres:").removeprefix("gres/").replace("=", ":")
        if item == "gpu" or item.startswith("gpu:"):
            match = _GRES_COUNT.match(item)
            total += int(match.group(1)) if match else 1
    return total


def _counts(text: str, line: str) -> tuple[int, int, int, int]:
    """An `A/I/O/T` figure of sinfo (allocated, idle, other, total)."""
    parts = text.split("/")
    if len(parts) != 4 or not all(part.isdigit() for part in parts):
        raise SchedulerOutputError(f"unexpected A/I/O/T figure {text!r} in sinfo line {line!r}")
    allocated, idle, other, total = (int(part) for part in parts)
    return allocated, idle, other, total


def _job_size(text: str) -> tuple[int | None, int | None]:
    low, _, high = text.partition("-")
    return to_int(low), to_int(high if high else low)


def _partition_row(line: str) -> Partition:
    fields = line.split(SEP)
    if len(fields) != 12:
        raise SchedulerOutputError(f"sinfo printed {len(fields)} fields, not 12: {line!r}")
    name, avail, limit, default_time, size, nodes, cpus, gres, memory, count, groups, hosts = fields
    node_a, node_i, node_o, node_t = _counts(nodes, line)
    cpu_a, cpu_i, cpu_o, cpu_t = _counts(cpus, line)
    min_nodes, max_nodes = _job_size(size)
    state = {"inact": "inactive"}.get(avail.strip(), avail.strip())
    group_list = split_list(groups)
    return Partition(
        name=name.rstrip("*"),
        state=state,
        enabled=state == "up",
        default=name.endswith("*"),
        max_walltime=clock_seconds(limit),
        default_walltime=clock_seconds(default_time),
        min_nodes=min_nodes,
        max_nodes=max_nodes,
        nodes=NodeCounts(total=node_t, idle=node_i, allocated=node_a, other=node_o),
        cpus=CpuCounts(total=cpu_t, idle=cpu_i, allocated=cpu_a, other=cpu_o),
        gpus=gres_gpus(gres) * (to_int(count) or 0),
        memory_per_node_mb=to_int(memory),
        allowed_groups=None if group_list in ([], ["all"]) else group_list,
        nodelist="" if is_blank(hosts) else hosts.strip(),
    )


def _merge(first: Partition, row: Partition) -> Partition:
    """One partition printed on several lines (its nodes differ in GRES or memory)."""
    node, cpu = first.nodes, first.cpus
    memories = [m for m in (first.memory_per_node_mb, row.memory_per_node_mb) if m is not None]
    return first.model_copy(
        update={
            "default": first.default or row.default,
            "nodes": NodeCounts(
                total=node.total + row.nodes.total,
                idle=node.idle + row.nodes.idle,
                allocated=node.allocated + row.nodes.allocated,
                other=node.other + row.nodes.other,
            ),
            "cpus": CpuCounts(
                total=cpu.total + row.cpus.total,
                idle=cpu.idle + row.cpus.idle,
                allocated=cpu.allocated + row.cpus.allocated,
                other=cpu.other + row.cpus.other,
            ),
            "gpus": first.gpus + row.gpus,
            "memory_per_node_mb": min(memories) if memories else None,
            "nodelist": ",".join(filter(None, [first.nodelist, row.nodelist])),
        }
    )


def parse_sinfo(text: str) -> list[Partition]:
    """Partitions from `sinfo -h -a -o SINFO_FORMAT`, one per name, in sinfo's order."""
    partitions: dict[str, Partition] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        row = _partition_row(line)
        known = partitions.get(row.name)
        partitions[row.name] = row if known is None else _merge(known, row)
    return list(partitions.values())


def _job_row(line: str) -> QueueJob:
    fields = line.split(SEP, 14)
    if len(fields) != 15:
        raise SchedulerOutputError(f"squeue printed {len(fields)} fields, not 15: {line!r}")
    job_id, queue, user, account, state, nodes, cpus, gres = fields[:8]
    used, limit, submit, start, reason, hosts, name = fields[8:]
    node_count = to_int(nodes)
    per_node = gres_gpus(gres)
    reason_text = None if is_blank(reason) else reason.strip()
    return QueueJob(
        job_id=job_id.strip(),
        name=name,
        user=user.strip(),
        account=None if is_blank(account) else account.strip(),
        queue=queue.strip(),
        state=normalise_state(state, reason_text),
        native_state=state.strip(),
        reason=reason_text,
        nodes=node_count,
        cpus=to_int(cpus),
        gpus=per_node * (node_count or 1),
        nodelist=None if is_blank(hosts) else hosts.strip(),
        time_used=clock_seconds(used),
        time_limit=clock_seconds(limit),
        submit_time=local_time(submit),
        start_time=local_time(start),
    )


def parse_squeue(text: str) -> list[QueueJob]:
    """Jobs from `squeue -h -o SQUEUE_FORMAT`."""
    return [_job_row(line) for line in text.splitlines() if line.strip()]


def parse_scontrol_record(line: str) -> dict[str, str]:
    """`Key=Value Key=Value …` from `scontrol show … -o` (values may contain spaces)."""
    record: dict[str, str] = {}
    for pair in _SCONTROL_KEY.split(" " + line.strip()):
        key, sep, value = pair.strip().partition("=")
        if sep:
            record[key] = value
    return record


def parse_sacctmgr(text: str) -> list[Allocation]:
    """Associations from `sacctmgr -n -P show associations format=SACCTMGR_FIELDS`."""
    allocations = []
    for line in text.splitlines():
        if not line.strip():
            continue
        fields = line.split(SEP)
        if len(fields) != 10:
            raise SchedulerOutputError(f"sacctmgr printed {len(fields)} fields, not 10: {line!r}")
        cluster, account, user, partition, qos, default_qos, max_wall, *limits = fields
        names = ("GrpTRES", "MaxTRES", "MaxJobs")
        allocations.append(
            Allocation(
                account=account,
                user=user or None,
                cluster=cluster or None,
                partition=partition or None,
                qos=split_list(qos),
                default_qos=default_qos or None,
                max_walltime=clock_seconds(max_wall),
                limits={key: value for key, value in zip(names, limits, strict=True) if value},
            )
        )
    return allocations


def _first_count(text: str | None) -> int | None:
    """The first node's figure of `2(x3),1`-style lists (SLURM_JOB_CPUS_PER_NODE)."""
    return to_int(text.split(",", 1)[0]) if text else None


def _gpus_per_node(env: Mapping[str, str]) -> int | None:
    if env.get("SLURM_GPUS_ON_NODE"):
        return to_int(env["SLURM_GPUS_ON_NODE"])
    if env.get("SLURM_GPUS_PER_NODE"):  # e.g. 2 or a100:2
        return to_int(env["SLURM_GPUS_PER_NODE"].rsplit(":", 1)[-1])
    if env.get("SLURM_JOB_GPUS"):  # the GPU indices, e.g. 0,1
        return len(split_list(env["SLURM_JOB_GPUS"]))
    return None


def allocation_from_env(
    env: Mapping[str, str], job: Mapping[str, str] | None = None
) -> JobAllocation | None:
    """The allocation described by SLURM_* variables (None outside one), completed with
    `scontrol show job -o` fields (`job`) where given: runtime, time limit, account."""
    job_id = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    if not job_id:
        return None
    job = job or {}
    expression = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST") or ""
    nodes = expand_hostlist(expression or job.get("NodeList", ""))
    count = to_int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES")) or len(nodes)
    account = env.get("SLURM_JOB_ACCOUNT") or job.get("Account")
    return JobAllocation(
        backend=Backend.SLURM,
        job_id=job_id,
        job_name=env.get("SLURM_JOB_NAME") or job.get("JobName"),
        partition=env.get("SLURM_JOB_PARTITION") or job.get("Partition"),
        account=None if is_blank(account) else account,
        n_nodes=count,
        nodelist=nodes,
        cpus_per_node=to_int(env.get("SLURM_CPUS_ON_NODE"))
        or _first_count(env.get("SLURM_JOB_CPUS_PER_NODE")),
        gpus_per_node=_gpus_per_node(env),
        runtime=clock_seconds(job.get("RunTime")),
        time_limit=clock_seconds(job.get("TimeLimit")),
    )


class SlurmBackend(BatchBackend):
    name = Backend.SLURM

    async def partitions(self) -> list[Partition]:
        result = await self.run(["sinfo", "-h", "-a", "-o", SINFO_FORMAT])
        return parse_sinfo(result.stdout)

    async def jobs(self, user: str | None) -> list[QueueJob]:
        argv = ["squeue", "-h", "-a", "-o", SQUEUE_FORMAT]
        result = await self.run([*argv, f"--user={user}"] if user else argv)
        if "Invalid user" in result.stderr:  # squeue says so but exits 0
            raise UnknownUser(f"Slurm does not know user {user!r}; check the name, or pass '*'")
        return parse_squeue(result.stdout)

    async def allocations(self, user: str | None) -> list[Allocation]:
        argv = ["sacctmgr", "-n", "-P", "show", "associations", f"format={SACCTMGR_FIELDS}"]
        try:
            result = await self.run([*argv, f"user={user}"] if user else argv)
        except CommandFailed as exc:
            if "accounting_storage" in exc.stderr or "slurmdbd" in exc.stderr:
                raise AccountingUnavailable(
                    "Slurm keeps no accounting database on this cluster (no slurmdbd), so "
                    "there are no allocations to list; ask the site which account to use "
                    "with sbatch -A",
                    exc.details,
                ) from None
            raise
        return parse_sacctmgr(result.stdout)

    async def job_allocation(self) -> JobAllocation | None:
        job_id = self.environ.get("SLURM_JOB_ID") or self.environ.get("SLURM_JOBID")
        if not job_id:
            return None
        try:
            result = await self.run(["scontrol", "show", "job", "-o", job_id])
            job = parse_scontrol_record(result.stdout.splitlines()[0] if result.stdout else "")
        except CommandFailed:  # e.g. the job ended; the environment still describes it
            job = {}
        return allocation_from_env(self.environ, job)

    async def nodelist(self) -> list[str]:
        allocation = allocation_from_env(self.environ)
        return allocation.nodelist if allocation is not None else []
