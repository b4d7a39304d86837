"""queue_info on the real single-node Slurm, through a real endpoint, the SDK and the CLI."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from conftest import StartEndpoint, cli_env, orbit_cli, stop_process, wait_online
from slurm_support import requires_slurm
from test_cli import run_cli

import orbit_mq
from orbit_mq.config import Settings
from orbit_mq.contracts.queue_info import (
    AccountingUnavailable,
    Backend,
    QueueInfoReport,
    QueueJobList,
    QueueJobState,
    QueueNotFound,
    UnknownUser,
)
from orbit_mq.errors import Unavailable
from orbit_mq.workers.plugins.queue_info import QueueInfo, QueueInfoSettings
from orbit_mq.workers.plugins.queue_info.hostlist import expand_hostlist

pytestmark = requires_slurm


def slurm(*args: str) -> str:
    return subprocess.run(args, capture_output=True, text=True, check=True, timeout=30).stdout


async def aslurm(*args: str) -> str:
    """A Slurm command's output, run off the loop (in-process endpoints keep serving)."""
    return await asyncio.to_thread(slurm, *args)


@pytest.fixture
def batch_jobs(name: str) -> Iterator[Callable[..., Awaitable[str]]]:
    """Submit Slurm jobs named after the test; all of them are cancelled afterwards."""
    submitted: list[str] = []

    async def submit(*options: str, command: str = "sleep 30") -> str:
        argv = ["sbatch", "--parsable", "-J", name, "-o", "/dev/null", *options]
        job_id = await aslurm(*argv, "--wrap", command)
        submitted.append(job_id.strip().split(";")[0])
        return submitted[-1]

    yield submit
    if submitted:
        subprocess.run(["scancel", *submitted], check=False, timeout=30)


class Unprefetched(QueueInfo):  # deterministic caching: nothing refreshes behind the test
    config = QueueInfoSettings(ttl=300, prefetch=False)


@pytest.fixture
async def qi(start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str) -> Any:
    await start_endpoint(plugins=[QueueInfo])
    return await fabric.endpoint(name).plugin("queue_info")


async def test_get_info_has_the_debug_partition(qi: Any) -> None:
    assert await qi.backend() is Backend.SLURM
    report = await qi.get_info()
    assert isinstance(report, QueueInfoReport)
    assert report.user == getpass.getuser()
    debug = {p.name: p for p in report.partitions}["debug"]
    assert (debug.default, debug.enabled, debug.state) == (True, True, "up")
    assert debug.nodes.total >= 1 and debug.cpus.total >= 1
    assert debug.nodes.total == debug.nodes.idle + debug.nodes.allocated + debug.nodes.other
    hosts = await aslurm("scontrol", "show", "hostnames", debug.nodelist)
    assert expand_hostlist(debug.nodelist) == hosts.split()
    everyone = await qi.get_info(user="*")
    assert "debug" in [p.name for p in everyone.partitions]


async def test_list_jobs_shows_submitted_jobs_with_normalised_states(
    qi: Any, batch_jobs: Callable[..., Awaitable[str]]
) -> None:
    running = await batch_jobs()
    held = await batch_jobs("--hold")
    jobs = await qi.list_jobs(queue="debug", force=True)
    assert isinstance(jobs, QueueJobList)
    mine = {job.job_id: job for job in jobs.jobs}
    assert {running, held} <= set(mine)
    assert mine[running].state in (QueueJobState.PENDING, QueueJobState.RUNNING)
    assert (mine[held].state, mine[held].native_state) == (QueueJobState.HELD, "PENDING")
    assert mine[running].user == getpass.getuser() and mine[running].queue == "debug"
    everyone = await qi.list_all_jobs(user="*", force=True)
    assert {running, held} <= {job.job_id for job in everyone.jobs}


async def test_answers_are_cached_until_forced(
    start_endpoint: StartEndpoint,
    fabric: orbit_mq.Fabric,
    name: str,
    batch_jobs: Callable[..., Awaitable[str]],
) -> None:
    await start_endpoint(plugins=[Unprefetched])
    qi = await fabric.endpoint(name).plugin("queue_info")
    before = await qi.list_all_jobs()
    job = await batch_jobs("--hold")
    cached = await qi.list_all_jobs()
    assert cached.collected == before.collected and job not in {j.job_id for j in cached.jobs}
    fresh = await qi.list_all_jobs(force=True)
    assert fresh.collected > before.collected and job in {j.job_id for j in fresh.jobs}


async def test_clear_errors_and_the_endpoint_keeps_serving(qi: Any) -> None:
    with pytest.raises(AccountingUnavailable, match="slurmdbd") as caught:
        await qi.list_allocations()
    assert isinstance(caught.value, Unavailable) and caught.value.code == "unavailable"
    with pytest.raises(QueueNotFound, match=r"known: .*debug"):
        await qi.list_jobs(queue="no-such-partition")
    with pytest.raises(UnknownUser):
        await qi.list_all_jobs(user="orbit-no-such-user")
    assert await qi.backend() is Backend.SLURM


async def test_outside_an_allocation(qi: Any) -> None:
    if os.environ.get("SLURM_JOB_ID"):
        pytest.skip("the tests themselves run inside a Slurm job")
    assert await qi.job_allocation() is None
    assert await qi.nodelist() == []


@pytest.fixture
def endpoint_in_a_job(settings: Settings, name: str) -> Iterator[subprocess.Popen[str]]:
    """An `orbit-mq endpoint` running as a Slurm job step (srun), so inside an allocation."""
    command = ["srun", "-N1", "-n1", "-t", "5", "-J", name, "--unbuffered"]
    process = subprocess.Popen(
        [*command, *orbit_cli("endpoint", "start", "--name", name, "--plugins", "queue_info")],
        env=cli_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield process
    finally:
        subprocess.run(["scancel", "--name", name], check=False, timeout=30)
        stop_process(process, timeout=30)


async def test_job_allocation_inside_a_slurm_job(
    endpoint_in_a_job: subprocess.Popen[str], fabric: orbit_mq.Fabric, name: str
) -> None:
    await wait_online(fabric, name, timeout=90)  # srun may wait for a free CPU first
    qi = await fabric.endpoint(name).plugin("queue_info")
    allocation = await qi.job_allocation()
    assert allocation is not None
    [job_id] = (await aslurm("squeue", "-h", "--name", name, "-o", "%i")).split()
    assert (allocation.job_id, allocation.partition, allocation.job_name) == (job_id, "debug", name)
    nodes = await aslurm("squeue", "-h", "-j", job_id, "-o", "%N")
    expected = await aslurm("scontrol", "show", "hostnames", nodes.strip())
    assert allocation.nodelist == expected.split() and allocation.n_nodes == 1
    assert allocation.cpus_per_node is not None and allocation.cpus_per_node >= 1
    assert allocation.time_limit == 300 and allocation.runtime is not None
    assert await qi.nodelist() == allocation.nodelist


async def test_cli_call_get_info_returns_the_debug_partition(
    settings: Settings,
    name: str,
    fabric: orbit_mq.Fabric,
    endpoint_process: Callable[..., subprocess.Popen[str]],
) -> None:
    endpoint_process("--plugins", "queue_info")
    await wait_online(fabric, name)
    result, everyone = await asyncio.gather(
        run_cli(settings, "call", name, "queue_info", "get_info"),
        run_cli(settings, "call", name, "queue_info", "get_info", "user=*", "force=true"),
    )
    assert result.code == 0, result
    report = json.loads(result.stdout)
    assert report["backend"] == "slurm"
    debug = {p["name"]: p for p in report["partitions"]}["debug"]
    assert debug["default"] is True and debug["cpus"]["total"] >= 1
    assert everyone.code == 0 and json.loads(everyone.stdout)["user"] == "*"
