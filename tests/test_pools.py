"""Endpoint pools: two members serve one pool name, against the real broker and PSI/J's local
executor. Calls to the pool go to any live member; a job stays with the member that ran it and
is reachable by its id through the pool; when a member stops, new work goes to the other."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from conftest import StartEndpoint, delete_request_queues, wait_online
from test_cli import run_cli

import orbit_mq
from orbit_mq.config import Settings
from orbit_mq.contracts.psij import JobState, PsiJ
from orbit_mq.errors import ConfigError, EndpointNotFound
from orbit_mq.proxy import remote
from orbit_mq.workers.endpoint import Endpoint
from orbit_mq.workers.plugins.psij.plugin import PsiJ as PsiJPlugin
from orbit_mq.workers.plugins.sysinfo import SysInfo

TRUE = {"executable": "/bin/true"}


@pytest.fixture
async def pool(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str, settings: Settings
) -> AsyncIterator[list[Endpoint]]:
    """Two members, `{name}-a` and `{name}-b`, of the pool `name`."""
    members = [
        await start_endpoint([PsiJPlugin, SysInfo], endpoint=f"{name}-{m}", pool=name) for m in "ab"
    ]
    for member in members:
        await wait_online(fabric, member.name)
    yield members
    for member in members:
        await member.stop(grace=5)  # before the pool's queues go
    await asyncio.to_thread(delete_request_queues, settings.url, name)


async def member_of(fabric: orbit_mq.Fabric, pool: str) -> str | None:
    """The member a new session through the pool lands on."""
    psij = await fabric.endpoint(pool).plugin(PsiJ)
    try:
        return remote(psij).member
    finally:
        await remote(psij).close()


async def test_calls_to_the_pool_go_to_every_member_and_discovery_names_the_pool(
    pool: list[Endpoint], fabric: orbit_mq.Fabric, name: str
) -> None:
    landed = Counter([await member_of(fabric, name) for _ in range(12)])
    assert set(landed) == {member.name for member in pool}, landed
    infos = {info.endpoint: info for info in await fabric.endpoints()}
    assert {infos[member.name].pool for member in pool} == {name}
    assert await fabric.pool_members(name) == sorted(member.name for member in pool)


async def test_a_job_is_reachable_by_its_id_through_the_pool_from_another_client(
    pool: list[Endpoint], fabric: orbit_mq.Fabric, name: str, settings: Settings
) -> None:
    psij = await fabric.endpoint(name).plugin(PsiJ, session=False)
    jobs = [await psij.submit_job(spec=TRUE) for _ in range(6)]
    # Each stays with the member that ran it: both members have some.
    owners: dict[str, str] = {}
    for member in pool:
        direct = await fabric.endpoint(member.name).plugin(PsiJ, session=False)
        owners |= {job.job_id: member.name for job in (await direct.list_jobs()).jobs}
    assert set(owners) == {job.job_id for job in jobs}
    assert set(owners.values()) == {member.name for member in pool}
    async with orbit_mq.Fabric(settings) as other:
        pinned = await other.endpoint(name).plugin(PsiJ)  # a session on one member
        for job in jobs:
            status = await pinned.get_job_status(job.job_id)
            assert status.job_id == job.job_id
            # The handle goes to the job's member directly, events included.
            assert remote(status.psij).serving == owners[job.job_id]
            assert (await status.wait(timeout=30)).state is JobState.COMPLETED


async def test_when_a_member_stops_new_work_goes_to_the_other(
    pool: list[Endpoint], fabric: orbit_mq.Fabric, name: str
) -> None:
    gone, left = pool
    psij = await fabric.endpoint(name).plugin(PsiJ)
    while remote(psij).member != gone.name:  # a session held by the member about to stop
        await remote(psij).open_session()
    await gone.stop(grace=5)
    for _ in range(3):
        job = await psij.submit_job(spec=TRUE)  # the session moves to the member left
        assert remote(psij).member == left.name
        assert (await job.wait(timeout=30)).state is JobState.COMPLETED
    assert [await member_of(fabric, name) for _ in range(4)] == [left.name] * 4
    assert await fabric.pool_members(name) == [left.name]


async def test_control_is_not_served_under_the_pool_name_and_a_pool_needs_its_own_name(
    pool: list[Endpoint], fabric: orbit_mq.Fabric, name: str, settings: Settings
) -> None:
    with pytest.raises(EndpointNotFound):
        await fabric.call(name, "control", "health")
    assert (await fabric.call(pool[0].name, "control", "health"))["healthy"]
    with pytest.raises(ConfigError, match="pool of its own name"):
        Endpoint(name, [SysInfo], settings.model_copy(update={"pool": name}))


async def test_orbit_mq_endpoints_shows_the_pool_and_its_members(
    pool: list[Endpoint], settings: Settings, name: str
) -> None:
    table = await run_cli(settings, "endpoints", env={"COLUMNS": "250"})
    assert table.code == 0, table.stderr
    assert f"pool(s): {name}" in table.stdout
    rows = [line for line in table.stdout.splitlines() if f"{name}-" in line]
    assert len(rows) == 2 and all(f" {name} " in row for row in rows), table.stdout
    listed = await run_cli(settings, "endpoints", "--json")
    pools = {info["endpoint"]: info["pool"] for info in listed.json()}  # type: ignore[attr-defined]
    assert {pools[member.name] for member in pool} == {name}
