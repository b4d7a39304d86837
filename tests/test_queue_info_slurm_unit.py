"""queue_info's Slurm backend without a broker: hostlists, durations and the parsers,
on output recorded from the CI cluster."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import pytest
from queue_info_support import Scripted, env_file, recorded

from orbit_mq.contracts.queue_info import (
    AccountingUnavailable,
    CommandFailed,
    InvalidHostlist,
    QueueJobState,
    SchedulerOutputError,
    UnknownUser,
)
from orbit_mq.errors import Unavailable
from orbit_mq.workers.plugins.queue_info import slurm
from orbit_mq.workers.plugins.queue_info.base import CommandResult
from orbit_mq.workers.plugins.queue_info.hostlist import expand_hostlist
from orbit_mq.workers.plugins.queue_info.parsing import clock_seconds, memory_mb, pbs_seconds

# -- hostlists ----------------------------------------------------------------------------------


def _scontrol_expansions() -> list[tuple[str, list[str]]]:
    cases: list[tuple[str, list[str]]] = []
    for line in recorded("slurm/hostnames.txt").splitlines():
        if line.startswith("# "):
            cases.append((line[2:], []))
        elif line.strip():
            cases[-1][1].append(line.strip())
    return cases


@pytest.mark.parametrize(("expression", "hosts"), _scontrol_expansions())
def test_hostlist_expands_like_scontrol(expression: str, hosts: list[str]) -> None:
    assert expand_hostlist(expression) == hosts


@pytest.mark.parametrize("blank", ["", "  ", "(null)", "None"])
def test_blank_hostlist_is_empty(blank: str) -> None:
    assert expand_hostlist(blank) == []


@pytest.mark.parametrize("bad", ["n[1-", "n]1[", "n[3-1]", "n[a-b]", "n[1-99999999]"])
def test_bad_hostlist_is_a_clear_error(bad: str) -> None:
    with pytest.raises(InvalidHostlist, match="hostlist"):
        expand_hostlist(bad)


# -- shared readers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("infinite", None),
        ("UNLIMITED", None),
        ("n/a", None),
        ("NOT_SET", None),
        ("365-00:00:00", 365 * 86400),
        ("1-02", 26 * 3600),
        ("1-02:30", 26 * 3600 + 1800),
        ("2:00:00", 7200),
        ("30:00", 1800),
        ("0:05", 5),
        ("5", 300),
        ("soon", None),
    ],
)
def test_slurm_durations(text: str, seconds: int | None) -> None:
    assert clock_seconds(text) == seconds


def test_pbs_durations_take_plain_numbers_as_seconds() -> None:
    assert (pbs_seconds("24:00:00"), pbs_seconds("90"), pbs_seconds(None)) == (86400, 90, None)


@pytest.mark.parametrize(
    ("text", "mb"),
    [("32gb", 32768), ("201326592kb", 196608), ("65536mb", 65536), ("1tb", 1048576), ("x", None)],
)
def test_memory(text: str, mb: int | None) -> None:
    assert memory_mb(text) == mb


# -- Slurm --------------------------------------------------------------------------------------


def test_sinfo_of_the_ci_cluster_while_a_job_runs() -> None:
    [debug] = slurm.parse_sinfo(recorded("slurm/sinfo.txt"))
    assert (debug.name, debug.state, debug.enabled, debug.default) == ("debug", "up", True, True)
    assert (debug.max_walltime, debug.default_walltime) == (None, None)
    assert (debug.min_nodes, debug.max_nodes) == (1, None)
    assert debug.nodes.model_dump() == {"total": 1, "idle": 0, "allocated": 1, "other": 0}
    assert debug.cpus.model_dump() == {"total": 2, "idle": 1, "allocated": 1, "other": 0}
    assert (debug.gpus, debug.memory_per_node_mb, debug.nodelist) == (0, 22900, "vm")
    assert debug.allowed_groups is None


def test_sinfo_of_the_idle_ci_cluster() -> None:
    [debug] = slurm.parse_sinfo(recorded("slurm/sinfo_idle.txt"))
    assert (debug.nodes.idle, debug.cpus.idle) == (1, 2)


# A bigger cluster in the same format: a partition printed on two lines (GPU and plain
# nodes), a hidden group-restricted one, an inactive one and a drained node.
CLUSTER_SINFO = """\
batch*|up|2-00:00:00|1:00:00|1-64|10/4/2/16|320/128/64/512|(null)|191000|16|all|c[001-016]
gpu|up|12:00:00|n/a|1-4|2/1/0/3|64/32/0/96|gpu:a100:4(S:0-1)|512000|3|all|g[01-03]
gpu|up|12:00:00|n/a|1-4|0/0/1/1|0/0/32/32|gpu:v100:2,mps:200|256000+|1|all|g04
private|up|infinite|n/a|1-infinite|0/2/0/2|0/64/0/64|(null)|191000|2|physics,chem|p[1-2]
old|inact|30:00|n/a|1|0/0/1/1|0/0/8/8|(null)|1000|1|all|o1
"""


def test_sinfo_merges_rows_of_one_partition() -> None:
    parts = {p.name: p for p in slurm.parse_sinfo(CLUSTER_SINFO)}
    assert list(parts) == ["batch", "gpu", "private", "old"]
    batch, gpu = parts["batch"], parts["gpu"]
    assert (batch.default, batch.max_walltime, batch.default_walltime) == (True, 172800, 3600)
    assert (batch.min_nodes, batch.max_nodes) == (1, 64)
    assert gpu.nodes.model_dump() == {"total": 4, "idle": 1, "allocated": 2, "other": 1}
    assert gpu.cpus.model_dump() == {"total": 128, "idle": 32, "allocated": 64, "other": 32}
    assert gpu.gpus == 3 * 4 + 1 * 2
    assert (gpu.memory_per_node_mb, gpu.nodelist) == (256000, "g[01-03],g04")
    assert parts["private"].allowed_groups == ["physics", "chem"]
    assert (parts["old"].state, parts["old"].enabled, parts["old"].max_nodes) == (
        "inactive",
        False,
        1,
    )


@pytest.mark.parametrize("line", ["debug*|up", "a|up|1|1|1|x/y|1/1/1/1|-|1|1|all|n1"])
def test_unreadable_sinfo_is_a_clear_error(line: str) -> None:
    with pytest.raises(SchedulerOutputError, match="sinfo"):
        slurm.parse_sinfo(line)


def test_squeue_of_the_ci_cluster() -> None:
    jobs = {job.job_id: job for job in slurm.parse_squeue(recorded("slurm/squeue.txt"))}
    assert set(jobs) == {"6", "7", "8", "9", "10_[1-3]"}
    running, too_big, held, later, array = (jobs[i] for i in ("6", "7", "8", "9", "10_[1-3]"))
    assert (running.state, running.native_state, running.reason) == (
        QueueJobState.RUNNING,
        "RUNNING",
        None,
    )
    assert (running.nodelist, running.nodes, running.cpus, running.gpus) == ("vm", 1, 1, 0)
    assert running.time_limit == 365 * 86400 and running.time_used == 5
    assert running.start_time is not None and running.start_time.tzinfo is not None
    assert (too_big.state, too_big.reason, too_big.nodes) == (
        QueueJobState.PENDING,
        "PartitionNodeLimit",
        2,
    )
    assert too_big.time_limit is None and too_big.start_time is None
    assert (held.state, held.native_state, held.reason) == (
        QueueJobState.HELD,
        "PENDING",
        "JobHeldUser",
    )
    assert (later.name, later.time_limit, later.reason) == ("qi|pipe name", 5400, "BeginTime")
    assert later.start_time is not None and later.submit_time is not None
    assert later.start_time - later.submit_time == timedelta(hours=1)
    assert (array.name, array.state, array.user, array.account) == (
        "qi-array",
        QueueJobState.PENDING,
        "root",
        None,
    )


SLURM_STATES = {
    QueueJobState.PENDING: ["PENDING", "PD", "CONFIGURING", "CF", "REQUEUED", "REQUEUE_FED"],
    QueueJobState.RUNNING: [
        "RUNNING",
        "R",
        "COMPLETING",
        "CG",
        "SIGNALING",
        "STAGE_OUT",
        "RESIZING",
    ],
    QueueJobState.DONE: ["COMPLETED", "CD"],
    QueueJobState.FAILED: [
        *("FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "OOM", "BOOT_FAIL"),
        *("DEADLINE", "PREEMPTED", "TO", "NF"),
    ],
    QueueJobState.CANCELLED: ["CANCELLED", "CA", "CANCELLED by 123", "CANCELLED+", "REVOKED"],
    QueueJobState.HELD: [
        *("SUSPENDED", "S", "STOPPED", "ST", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SPECIAL_EXIT"),
    ],
    QueueJobState.UNKNOWN: ["", "SOMETHING_NEW"],
}


@pytest.mark.parametrize(
    ("native", "state"), [(n, s) for s, natives in SLURM_STATES.items() for n in natives]
)
def test_every_slurm_state_is_normalised(native: str, state: QueueJobState) -> None:
    assert slurm.normalise_state(native) is state


def test_pending_jobs_held_by_someone_are_held() -> None:
    assert slurm.normalise_state("PENDING", "JobHeldAdmin") is QueueJobState.HELD
    assert slurm.normalise_state("PENDING", "Priority") is QueueJobState.PENDING


@pytest.mark.parametrize(
    ("gres", "gpus"),
    [
        ("(null)", 0),
        ("N/A", 0),
        ("gpu:4", 4),
        ("gpu:a100:4(S:0-1)", 4),
        ("gpu:v100:2,mps:200", 2),
        ("gres:gpu:2", 2),
        ("gres/gpu:3", 3),
        ("gpu:a100:2(S:0),gpu:v100:1(S:1)", 3),
        ("shard:8", 0),
    ],
)
def test_gpus_from_gres(gres: str, gpus: int) -> None:
    assert slurm.gres_gpus(gres) == gpus


def test_scontrol_record_keeps_values_with_spaces() -> None:
    record = slurm.parse_scontrol_record(recorded("slurm/scontrol_job_running.txt"))
    assert (record["JobId"], record["JobName"], record["RunTime"]) == (
        "6",
        "qi-running",
        "00:00:05",
    )
    assert (record["NodeList"], record["CPUs/Task"], record["AllocNode:Sid"]) == (
        "vm",
        "1",
        "localhost:6873",
    )
    spaced = slurm.parse_scontrol_record("JobId=3 JobName=my long job UserId=a(1) Power=")
    assert spaced == {"JobId": "3", "JobName": "my long job", "UserId": "a(1)", "Power": ""}


def test_allocation_from_a_real_srun_environment() -> None:
    env = env_file("slurm/srun_env.txt")
    job = slurm.parse_scontrol_record(recorded("slurm/scontrol_job_self.txt"))
    allocation = slurm.allocation_from_env(env, job)
    assert allocation is not None
    assert (allocation.job_id, allocation.job_name, allocation.partition) == (
        "14",
        "qi-env",
        "debug",
    )
    assert (allocation.n_nodes, allocation.nodelist, allocation.cpus_per_node) == (1, ["vm"], 1)
    assert (allocation.account, allocation.gpus_per_node) == (None, None)
    assert (allocation.runtime, allocation.time_limit) == (0, 600)


def test_allocation_of_a_multi_node_gpu_job() -> None:
    env = {
        "SLURM_JOB_ID": "77",
        "SLURM_JOB_NODELIST": "nid[001-003]",
        "SLURM_JOB_NUM_NODES": "3",
        "SLURM_JOB_CPUS_PER_NODE": "64(x3)",
        "SLURM_JOB_GPUS": "0,1,2,3",
        "SLURM_JOB_ACCOUNT": "proj42",
    }
    allocation = slurm.allocation_from_env(env)
    assert allocation is not None
    assert allocation.nodelist == ["nid001", "nid002", "nid003"]
    assert (allocation.cpus_per_node, allocation.gpus_per_node, allocation.account) == (
        64,
        4,
        "proj42",
    )
    assert slurm.allocation_from_env({"SLURM_GPUS_ON_NODE": "2"}) is None  # no job id: login node


def test_sacctmgr_associations() -> None:
    text = (
        "perlmutter|m1234|alice|debug|normal,premium|normal|2-00:00:00|gres/gpu=64||\n"
        "perlmutter|m5678|alice||normal||||cpu=1024|500\n"
    )
    first, second = slurm.parse_sacctmgr(text)
    assert (first.account, first.user, first.partition, first.qos) == (
        "m1234",
        "alice",
        "debug",
        ["normal", "premium"],
    )
    assert (first.max_walltime, first.limits) == (172800, {"GrpTRES": "gres/gpu=64"})
    assert (second.partition, second.default_qos, second.max_walltime) == (None, None, None)
    assert second.limits == {"MaxTRES": "cpu=1024", "MaxJobs": "500"}


async def test_slurm_without_accounting_says_allocations_are_unavailable() -> None:
    refusal = CommandFailed.of("sacctmgr", 1, recorded("slurm/sacctmgr_stderr.txt"))
    backend = slurm.SlurmBackend(Scripted({"sacctmgr": refusal}), environ={})
    with pytest.raises(AccountingUnavailable, match="slurmdbd") as caught:
        await backend.allocations("alice")
    assert isinstance(caught.value, Unavailable)


async def test_slurm_commands_and_unknown_users() -> None:
    run = Scripted({"squeue": recorded("slurm/squeue.txt")})
    backend = slurm.SlurmBackend(run, environ={})
    assert len(await backend.jobs("root")) == 5
    assert run.calls[-1][-1] == "--user=root"
    await backend.jobs(None)
    assert not any(arg.startswith("--user") for arg in run.calls[-1])

    async def refusing(argv: Sequence[str]) -> CommandResult:
        return CommandResult("", "squeue: error: Invalid user: nosuch\n")  # and exit code 0

    with pytest.raises(UnknownUser, match="nosuch"):
        await slurm.SlurmBackend(refusing, environ={}).jobs("nosuch")


async def test_slurm_outside_an_allocation() -> None:
    backend = slurm.SlurmBackend(Scripted({}), environ={"PATH": "/bin"})
    assert (await backend.job_allocation(), await backend.nodelist()) == (None, [])
