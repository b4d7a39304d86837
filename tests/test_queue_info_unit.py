"""queue_info without a broker: parsers on recorded Slurm/PBS output, the cache, detection,
command running and the plugin's filtering over a scripted backend."""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from orbit_mq.config import Settings
from orbit_mq.errors import ConfigError, InvalidRequest, NotFound, Unavailable
from orbit_mq.workers.plugin import PluginContext
from orbit_mq.workers.plugins.queue_info import (
    AccountingUnavailable,
    Backend,
    CommandFailed,
    InvalidHostlist,
    JobState,
    QueueInfo,
    QueueInfoSettings,
    QueueInfoUnavailable,
    QueueNotFound,
    SchedulerOutputError,
    UnknownUser,
    pbs,
    slurm,
)
from orbit_mq.workers.plugins.queue_info.base import (
    CommandResult,
    command_environment,
    detect_backend,
    run_command,
)
from orbit_mq.workers.plugins.queue_info.cache import TtlCache
from orbit_mq.workers.plugins.queue_info.hostlist import expand_hostlist
from orbit_mq.workers.plugins.queue_info.parsing import clock_seconds, memory_mb, pbs_seconds
from orbit_mq.workers.plugins.queue_info.plugin import load_settings

DATA = Path(__file__).parent / "data" / "queue_info"


def recorded(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def env_file(name: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in recorded(name).splitlines() if "=" in line)
    return {key: value for key, value in pairs}


class Scripted:
    """A command runner answering from a table: argv[0] (or the whole argv) → output or error."""

    def __init__(self, answers: dict[str, str | Exception]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []
        self.called = asyncio.Event()

    async def __call__(self, argv: Sequence[str]) -> CommandResult:
        self.calls.append(list(argv))
        self.called.set()
        answer = self.answers.get(" ".join(argv[:2]), self.answers.get(argv[0]))
        if answer is None:
            raise CommandFailed.of(argv[0], 127, f"{argv[0]}: not scripted")
        if isinstance(answer, Exception):
            raise answer
        return CommandResult(answer, "")


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
        JobState.RUNNING,
        "RUNNING",
        None,
    )
    assert (running.nodelist, running.nodes, running.cpus, running.gpus) == ("vm", 1, 1, 0)
    assert running.time_limit == 365 * 86400 and running.time_used == 5
    assert running.start_time is not None and running.start_time.tzinfo is not None
    assert (too_big.state, too_big.reason, too_big.nodes) == (
        JobState.PENDING,
        "PartitionNodeLimit",
        2,
    )
    assert too_big.time_limit is None and too_big.start_time is None
    assert (held.state, held.native_state, held.reason) == (JobState.HELD, "PENDING", "JobHeldUser")
    assert (later.name, later.time_limit, later.reason) == ("qi|pipe name", 5400, "BeginTime")
    assert later.start_time is not None and later.submit_time is not None
    assert later.start_time - later.submit_time == timedelta(hours=1)
    assert (array.name, array.state, array.user, array.account) == (
        "qi-array",
        JobState.PENDING,
        "root",
        None,
    )


SLURM_STATES = {
    JobState.PENDING: ["PENDING", "PD", "CONFIGURING", "CF", "REQUEUED", "REQUEUE_FED"],
    JobState.RUNNING: ["RUNNING", "R", "COMPLETING", "CG", "SIGNALING", "STAGE_OUT", "RESIZING"],
    JobState.DONE: ["COMPLETED", "CD"],
    JobState.FAILED: [
        *("FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "OOM", "BOOT_FAIL"),
        *("DEADLINE", "PREEMPTED", "TO", "NF"),
    ],
    JobState.CANCELLED: ["CANCELLED", "CA", "CANCELLED by 123", "CANCELLED+", "REVOKED"],
    JobState.HELD: [
        *("SUSPENDED", "S", "STOPPED", "ST", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SPECIAL_EXIT"),
    ],
    JobState.UNKNOWN: ["", "SOMETHING_NEW"],
}


@pytest.mark.parametrize(
    ("native", "state"), [(n, s) for s, natives in SLURM_STATES.items() for n in natives]
)
def test_every_slurm_state_is_normalised(native: str, state: JobState) -> None:
    assert slurm.normalise_state(native) is state


def test_pending_jobs_held_by_someone_are_held() -> None:
    assert slurm.normalise_state("PENDING", "JobHeldAdmin") is JobState.HELD
    assert slurm.normalise_state("PENDING", "Priority") is JobState.PENDING


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


# -- PBS ----------------------------------------------------------------------------------------


def test_pbs_records_join_wrapped_values() -> None:
    records = dict(pbs.parse_records(recorded("pbs/qstat_f.txt"), "Job Id:"))
    assert list(records) == ["1001.pbs01", "1002.pbs01", "1003.pbs01", "1004.pbs01", "1005[].pbs01"]
    variables = records["1001.pbs01"]["Variable_List"]
    assert "PBS_O_LANG=en_US.UTF-8,PBS_O_LOGNAME=alice" in variables
    assert variables.endswith("PBS_O_HOST=login1.cluster.local")
    assert (
        "PBS_O_WORKDIR=/scratch/carol/very/long/path/that/wraps/twice"
        in records["1004.pbs01"]["Variable_List"]
    )
    assert records["1004.pbs01"]["some.future_attribute"] == "kept but ignored"
    assert pbs.parse_records(recorded("pbs/empty.txt")) == []


def test_pbs_jobs() -> None:
    jobs = {job.job_id: job for job in pbs.parse_jobs(recorded("pbs/qstat_f.txt"))}
    spread, queued, held, wrapped, array = jobs.values()
    assert (spread.state, spread.native_state, spread.user, spread.account) == (
        JobState.RUNNING,
        "R",
        "alice",
        "chem123",
    )
    assert (spread.nodelist, spread.nodes, spread.cpus) == ("node1,node2", 2, 8)
    assert (spread.time_used, spread.time_limit) == (29 * 60 + 47, 7200)
    assert spread.start_time is not None and spread.submit_time is not None
    assert spread.start_time - spread.submit_time == timedelta(minutes=2, seconds=32)
    assert (queued.state, queued.account) == (JobState.PENDING, None)
    assert queued.reason == "Not Running: Insufficient amount of resource: ncpus (R: 32 A: 4 T: 40)"
    assert (held.state, held.native_state) == (JobState.HELD, "H")
    assert (
        wrapped.name
        == "a_job_with_a_rather_long_name_that_the_server_prints_wrapped_across_two_lines"
    )
    assert wrapped.submit_time is not None and wrapped.submit_time.hour == 8
    assert (array.job_id, array.state, array.native_state) == (
        "1005[].pbs01",
        JobState.RUNNING,
        "B",
    )


def test_pbs_finished_moved_and_junk() -> None:
    jobs = {job.job_id: job for job in pbs.parse_jobs(recorded("pbs/qstat_fx_history.txt"))}
    assert [(j.job_id, j.state) for j in jobs.values()] == [
        ("990.pbs01", JobState.DONE),
        ("991.pbs01", JobState.FAILED),
        ("1005[1].pbs01", JobState.DONE),
        ("992.pbs01", JobState.UNKNOWN),
    ]
    assert jobs["992.pbs01"].queue == "workq@otherserver"


@pytest.mark.parametrize(
    ("letter", "state"),
    [
        *[(letter, JobState.PENDING) for letter in "QWT"],
        *[(letter, JobState.RUNNING) for letter in "REB"],
        *[(letter, JobState.HELD) for letter in "HSU"],
        ("X", JobState.DONE),
        ("M", JobState.UNKNOWN),
        ("Z", JobState.UNKNOWN),
    ],
)
def test_every_pbs_state_is_normalised(letter: str, state: JobState) -> None:
    assert pbs.normalise_state(letter) is state


def test_pbs_finished_jobs_use_their_exit_status() -> None:
    assert pbs.normalise_state("F", "0") is JobState.DONE
    assert pbs.normalise_state("F", "-3") is JobState.FAILED
    assert pbs.normalise_state("F") is JobState.DONE


def test_pbs_queues_with_node_counts() -> None:
    queues = {
        q.name: q
        for q in pbs.parse_queues(
            recorded("pbs/qstat_Qf.txt"),
            recorded("pbs/pbsnodes_a.txt"),
            pbs.default_queue(recorded("pbs/qstat_Bf.txt")),
        )
    }
    workq, gpu, long, route = queues["workq"], queues["gpu"], queues["long"], queues["routeq"]
    assert (workq.default, workq.enabled, workq.max_walltime, workq.default_walltime) == (
        True,
        True,
        86400,
        3600,
    )
    assert (workq.min_nodes, workq.max_nodes, workq.nodelist) == (1, 4, "node1,node2,node3,node4")
    assert workq.nodes.model_dump() == {"total": 4, "idle": 1, "allocated": 2, "other": 1}
    assert workq.cpus.model_dump() == {"total": 32, "idle": 12, "allocated": 12, "other": 8}
    assert (gpu.nodelist, gpu.gpus, gpu.memory_per_node_mb) == ("gpu1", 4, 196608)
    assert gpu.allowed_groups == ["gpuusers", "admins"] and gpu.allowed_users is None
    assert (long.state, long.enabled, long.max_walltime, long.max_nodes) == (
        "disabled",
        False,
        None,
        None,
    )
    assert (route.state, route.nodes.total, route.allowed_users) == ("route", 0, ["alice", "bob"])


def test_pbs_queues_without_nodes_or_server() -> None:
    [workq, *_] = pbs.parse_queues(recorded("pbs/qstat_Qf.txt"))
    assert (workq.default, workq.nodes.total, workq.cpus.total) == (False, 0, 0)
    assert pbs.parse_queues("") == [] and pbs.default_queue("") is None


def test_pbs_allocation_from_environment_nodefile_and_qstat() -> None:
    [(_, job)] = pbs.parse_records(recorded("pbs/qstat_f.txt").split("\n\n")[0], "Job Id:")
    env = {"PBS_JOBID": "1001.pbs01", "PBS_QUEUE": "workq", "PBS_JOBNAME": "relax_md", "NCPUS": "4"}
    allocation = pbs.allocation_from_env(env, recorded("pbs/nodefile.txt"), job)
    assert allocation is not None
    assert (allocation.job_id, allocation.partition, allocation.account) == (
        "1001.pbs01",
        "workq",
        "chem123",
    )
    assert (allocation.nodelist, allocation.n_nodes, allocation.cpus_per_node) == (
        ["node1", "node2"],
        2,
        4,
    )
    assert (allocation.runtime, allocation.time_limit) == (1787, 7200)
    assert pbs.allocation_from_env({"NCPUS": "4"}) is None


async def test_pbs_backend(tmp_path: Path) -> None:
    run = Scripted(
        {
            "qstat -Qf": recorded("pbs/qstat_Qf.txt"),
            "pbsnodes": recorded("pbs/pbsnodes_a.txt"),
            "qstat -Bf": CommandFailed.of("qstat -Bf", 1, "qstat: not authorised"),
            "qstat -f": recorded("pbs/qstat_f.txt"),
        }
    )
    nodefile = tmp_path / "nodes"
    nodefile.write_text(recorded("pbs/nodefile.txt"))
    backend = pbs.PbsBackend(
        run, environ={"PBS_JOBID": "1001.pbs01", "PBS_NODEFILE": str(nodefile)}
    )
    queues = await backend.partitions()
    assert [q.name for q in queues] == ["workq", "gpu", "long", "routeq"]
    assert not any(q.default for q in queues)  # qstat -Bf failed: only that is unknown
    assert {job.user for job in await backend.jobs("alice")} == {"alice"}
    assert len(await backend.jobs(None)) == 5
    assert await backend.nodelist() == ["node1", "node2"]
    allocation = await backend.job_allocation()
    assert allocation is not None and allocation.time_limit == 7200
    with pytest.raises(AccountingUnavailable, match="PBS"):
        await backend.allocations(None)


# -- detection, settings, commands --------------------------------------------------------------


def which_of(*present: str) -> Any:
    return lambda command: f"/usr/bin/{command}" if command in present else None


def test_detection() -> None:
    assert detect_backend("auto", which_of("sinfo", "squeue")) is Backend.SLURM
    assert detect_backend("auto", which_of("qstat", "pbsnodes")) is Backend.PBS
    # Slurm sites may install a qstat wrapper: Slurm wins.
    assert detect_backend("auto", which_of("sinfo", "squeue", "qstat", "pbsnodes")) is Backend.SLURM
    assert detect_backend("auto", which_of("qstat")) is Backend.NONE
    assert detect_backend("pbs", which_of()) is Backend.PBS


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORBIT_MQ_QUEUE_INFO_BACKEND", "none")
    monkeypatch.setenv("ORBIT_MQ_QUEUE_INFO_TTL", "5")
    monkeypatch.setenv("ORBIT_MQ_QUEUE_INFO_PREFETCH", "false")
    settings = load_settings()
    assert (settings.backend, settings.ttl, settings.prefetch) == ("none", 5.0, False)
    assert not QueueInfo.is_available()
    monkeypatch.setenv("ORBIT_MQ_QUEUE_INFO_BACKEND", "lsf")
    with pytest.raises(ConfigError, match="ORBIT_MQ_QUEUE_INFO_"):
        load_settings()


def test_command_environment_drops_format_overrides() -> None:
    env = command_environment({"SQUEUE_FORMAT": "%i", "SLURM_TIME_FORMAT": "relative", "A": "1"})
    assert env == {"A": "1", "LC_ALL": "C"}


async def test_missing_failing_and_hanging_commands() -> None:
    with pytest.raises(QueueInfoUnavailable, match="not installed or not on PATH"):
        await run_command(["orbit-mq-no-such-command"], 5)
    with pytest.raises(CommandFailed, match=r"exit 3\): oops") as failed:
        await run_command(["sh", "-c", "echo oops >&2; exit 3"], 5)
    assert (failed.value.details["returncode"], failed.value.stderr) == (3, "oops\n")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(QueueInfoUnavailable, match=r"did not answer within 0\.3 s"):
        await run_command(["sleep", "30"], 0.3)
    assert loop.time() - started < 10
    result = await run_command(["sh", "-c", "echo out; echo warn >&2"], 5)
    assert (result.stdout, result.stderr) == ("out\n", "warn\n")


# -- the cache ----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_cache_reuses_until_the_ttl_and_force_refreshes() -> None:
    clock, values = Clock(), iter(range(100))
    cache = TtlCache(30, clock)

    async def produce() -> int:
        return next(values)

    assert [await cache.get("k", produce) for _ in range(3)] == [0, 0, 0]
    assert await cache.get("k", produce, force=True) == 1
    assert await cache.get("other", produce) == 2
    clock.now = 29.9
    assert await cache.get("k", produce) == 1
    clock.now = 30.0
    assert await cache.get("k", produce) == 3
    assert cache.runs == 4


async def test_concurrent_identical_requests_share_one_run() -> None:
    cache, started, gate = TtlCache(30), asyncio.Event(), asyncio.Event()

    async def produce() -> str:
        started.set()
        await gate.wait()
        return "answer"

    waiters = [asyncio.create_task(cache.get("k", produce, force=i % 2 == 0)) for i in range(6)]
    async with asyncio.timeout(5):
        await started.wait()
    gate.set()
    assert await asyncio.gather(*waiters) == ["answer"] * 6
    assert cache.runs == 1


async def test_cache_does_not_keep_errors_and_survives_a_cancelled_caller() -> None:
    cache, gate, outcomes = TtlCache(30), asyncio.Event(), ["boom", "fine"]
    started = asyncio.Event()

    async def produce() -> str:
        started.set()
        await gate.wait()
        outcome = outcomes.pop(0)
        if outcome == "boom":
            raise QueueInfoUnavailable("scheduler down")
        return outcome

    gate.set()
    with pytest.raises(QueueInfoUnavailable):
        await cache.get("k", produce)
    gate.clear()
    started.clear()
    impatient = asyncio.create_task(cache.get("k", produce))
    patient = asyncio.create_task(cache.get("k", produce))
    async with asyncio.timeout(5):
        await started.wait()
    impatient.cancel()
    gate.set()
    assert await patient == "fine"
    assert cache.fresh("k") and cache.runs == 2
    await cache.close()
    assert len(cache) == 0


# -- the plugin over scripted backends ----------------------------------------------------------


async def _no_events(plugin: str, topic: str, data: dict[str, Any]) -> None:
    return None


def plugin_with(
    tmp_path: Path, backend: str, run: Scripted | None = None, **options: Any
) -> QueueInfo:
    class Configured(QueueInfo):
        config = QueueInfoSettings(backend=backend, **options)  # type: ignore[arg-type]

    context = PluginContext("unit", Settings(home=tmp_path), _no_events)
    plugin = Configured(context)
    if run is not None:
        plugin.impl = type(plugin.impl)(run, environ={})
    return plugin


PBS_ANSWERS: dict[str, str | Exception] = {
    "qstat -Qf": recorded("pbs/qstat_Qf.txt"),
    "pbsnodes": recorded("pbs/pbsnodes_a.txt"),
    "qstat -Bf": recorded("pbs/qstat_Bf.txt"),
    "qstat -f": recorded("pbs/qstat_f.txt"),
}


async def test_get_info_shows_the_queues_a_user_may_use(tmp_path: Path) -> None:
    plugin = plugin_with(tmp_path, "pbs", Scripted(PBS_ANSWERS), prefetch=False)
    me = getpass.getuser()
    mine = await plugin.get_info()
    assert (mine.backend, mine.user) == (Backend.PBS, me)
    # gpu wants group gpuusers or admins, routeq users alice and bob: not us.
    assert [q.name for q in mine.partitions] == ["workq", "long"]
    everything = await plugin.get_info(user="*")
    assert [q.name for q in everything.partitions] == ["workq", "gpu", "long", "routeq"]
    assert everything.collected == mine.collected  # one cached qstat answer
    with pytest.raises(UnknownUser, match="orbit-no-such-user"):
        await plugin.get_info(user="orbit-no-such-user")


async def test_list_jobs_filters_by_queue_and_user(tmp_path: Path) -> None:
    run = Scripted(PBS_ANSWERS)
    plugin = plugin_with(tmp_path, "pbs", run, prefetch=False)
    jobs = await plugin.list_jobs(queue="workq", user="*")
    assert (jobs.queue, jobs.user, len(jobs.jobs)) == ("workq", "*", 5)
    assert (await plugin.list_jobs(queue="gpu", user="*")).jobs == []
    with pytest.raises(QueueNotFound, match="known: workq, gpu, long, routeq") as missing:
        await plugin.list_jobs(queue="nope", user="*")
    assert isinstance(missing.value, NotFound)
    qstat_runs = sum(call[:2] == ["qstat", "-f"] for call in run.calls)
    await plugin.list_all_jobs(user="*")
    assert sum(call[:2] == ["qstat", "-f"] for call in run.calls) == qstat_runs  # cached
    await plugin.list_all_jobs(user="*", force=True)
    assert sum(call[:2] == ["qstat", "-f"] for call in run.calls) == qstat_runs + 1


async def test_the_none_backend_answers_empty(tmp_path: Path) -> None:
    plugin = plugin_with(tmp_path, "none")
    await plugin.start()
    try:
        assert await plugin.backend() is Backend.NONE
        assert (await plugin.get_info()).partitions == []
        assert (await plugin.list_all_jobs(user="*")).jobs == []
        assert await plugin.job_allocation() is None and await plugin.nodelist() == []
        with pytest.raises(AccountingUnavailable, match="no batch system"):
            await plugin.list_allocations()
        with pytest.raises(QueueNotFound):
            await plugin.list_jobs(queue="debug")
    finally:
        await plugin.stop()


async def test_prefetch_runs_at_start_and_stops(tmp_path: Path) -> None:
    run = Scripted(PBS_ANSWERS)
    plugin = plugin_with(tmp_path, "pbs", run, ttl=60, prefetch=True)
    await plugin.start()
    try:
        async with asyncio.timeout(10):
            while not (
                plugin.cache.fresh(("partitions",)) and plugin.cache.fresh(("jobs", plugin.me))
            ):
                run.called.clear()
                await run.called.wait()
        calls = len(run.calls)
        await plugin.get_info()
        await plugin.list_all_jobs()
        assert len(run.calls) == calls  # answered from the prefetched cache
        health = await plugin.health()
        assert health.healthy and health.details["backend"] == "pbs"
    finally:
        await plugin.stop()
    assert plugin._prefetcher is not None and plugin._prefetcher.done()


async def test_malformed_names_are_refused_before_anything_runs(tmp_path: Path) -> None:
    run = Scripted(PBS_ANSWERS)
    plugin = plugin_with(tmp_path, "pbs", run, prefetch=False)
    for bad in ["--all", "a b", "", "x;rm", "-u"]:
        with pytest.raises(InvalidRequest, match="not a user name"):
            await plugin.list_all_jobs(user=bad)
    with pytest.raises(InvalidRequest, match="not a partition"):
        await plugin.list_jobs(queue="--all")
    assert run.calls == []
