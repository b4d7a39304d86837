"""queue_info's PBS Pro backend without a broker: the parsers on recorded `qstat -f`,
`qstat -Qf` and `pbsnodes -a` texts, odd ones included."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from queue_info_support import Scripted, recorded

from orbit_mq.contracts.queue_info import AccountingUnavailable, CommandFailed, QueueJobState
from orbit_mq.workers.plugins.queue_info import pbs

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
        QueueJobState.RUNNING,
        "R",
        "alice",
        "chem123",
    )
    assert (spread.nodelist, spread.nodes, spread.cpus) == ("node1,node2", 2, 8)
    assert (spread.time_used, spread.time_limit) == (29 * 60 + 47, 7200)
    assert spread.start_time is not None and spread.submit_time is not None
    assert spread.start_time - spread.submit_time == timedelta(minutes=2, seconds=32)
    assert (queued.state, queued.account) == (QueueJobState.PENDING, None)
    assert queued.reason == "Not Running: Insufficient amount of resource: ncpus (R: 32 A: 4 T: 40)"
    assert (held.state, held.native_state) == (QueueJobState.HELD, "H")
    assert (
        wrapped.name
        == "a_job_with_a_rather_long_name_that_the_server_prints_wrapped_across_two_lines"
    )
    assert wrapped.submit_time is not None and wrapped.submit_time.hour == 8
    assert (array.job_id, array.state, array.native_state) == (
        "1005[].pbs01",
        QueueJobState.RUNNING,
        "B",
    )


def test_pbs_finished_moved_and_junk() -> None:
    jobs = {job.job_id: job for job in pbs.parse_jobs(recorded("pbs/qstat_fx_history.txt"))}
    assert [(j.job_id, j.state) for j in jobs.values()] == [
        ("990.pbs01", QueueJobState.DONE),
        ("991.pbs01", QueueJobState.FAILED),
        ("1005[1].pbs01", QueueJobState.DONE),
        ("992.pbs01", QueueJobState.UNKNOWN),
    ]
    assert jobs["992.pbs01"].queue == "workq@otherserver"


@pytest.mark.parametrize(
    ("letter", "state"),
    [
        *[(letter, QueueJobState.PENDING) for letter in "QWT"],
        *[(letter, QueueJobState.RUNNING) for letter in "REB"],
        *[(letter, QueueJobState.HELD) for letter in "HSU"],
        ("X", QueueJobState.DONE),
        ("M", QueueJobState.UNKNOWN),
        ("Z", QueueJobState.UNKNOWN),
    ],
)
def test_every_pbs_state_is_normalised(letter: str, state: QueueJobState) -> None:
    assert pbs.normalise_state(letter) is state


def test_pbs_finished_jobs_use_their_exit_status() -> None:
    assert pbs.normalise_state("F", "0") is QueueJobState.DONE
    assert pbs.normalise_state("F", "-3") is QueueJobState.FAILED
    assert pbs.normalise_state("F") is QueueJobState.DONE


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
