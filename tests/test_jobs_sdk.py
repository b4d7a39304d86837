"""The SDK's job handles: watch, wait, output and cancel, also across a broker restart."""

from __future__ import annotations

import asyncio

import pytest
from broker_control import ensure_running, restart, restartable
from conftest import StartEndpoint

import orbit_mq
from orbit_mq.contracts.psij import JobNotFound
from orbit_mq.workers.plugins.psij import PsiJ


async def test_watch_wait_and_output(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str
) -> None:
    await start_endpoint(plugins=[PsiJ])
    psij = await fabric.endpoint(name).plugin("psij")
    job = await psij.submit_job(
        spec={"executable": "/bin/sh", "arguments": ["-c", "echo one; echo two >&2; exit 3"]}
    )
    assert isinstance(job, orbit_mq.Job)
    async with asyncio.timeout(20):
        transitions = [t async for t in job.watch()]
    assert [t.seq for t in transitions] == list(range(1, len(transitions) + 1))
    assert transitions[0].state == "NEW" and transitions[-1].state == "FAILED"
    assert transitions[-1].exit_code == 3
    final = await job.wait(timeout=10)  # the job has ended: answered from the journal
    assert final.seq == transitions[-1].seq
    async with asyncio.timeout(20):
        chunks = [chunk async for chunk in job.output()]
    assert {(c.stream, c.text) for c in chunks} == {("stdout", "one\n"), ("stderr", "two\n")}


async def test_attaching_to_a_job_by_id(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str
) -> None:
    await start_endpoint(plugins=[PsiJ])
    psij = await fabric.endpoint(name).plugin("psij")
    submitted = await psij.submit_job(spec={"executable": "/bin/true"})
    job = await orbit_mq.Job.attach(psij, submitted.job_id)
    assert (await job.wait(timeout=20)).state == "COMPLETED"
    with pytest.raises(JobNotFound, match="no-such-job"):
        await orbit_mq.Job.attach(psij, "no-such-job")


async def test_following_output_and_cancel(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str
) -> None:
    await start_endpoint(plugins=[PsiJ])
    psij = await fabric.endpoint(name).plugin("psij")
    job = await psij.submit_job(
        spec={"executable": "/bin/sh", "arguments": ["-c", "echo started; exec sleep 60"]}
    )
    async with asyncio.timeout(20):
        async for chunk in job.output(follow=True):
            assert chunk.text == "started\n"
            break
        await job.cancel()
        assert (await job.wait()).state == "CANCELED"


async def test_jobs_end_once_across_a_broker_restart(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str, settings: orbit_mq.Settings
) -> None:
    if not restartable(settings.url):
        pytest.skip("needs root, rabbitmqctl and a broker on this host")
    await start_endpoint(plugins=[PsiJ])
    psij = await fabric.endpoint(name).plugin("psij", session=False)
    jobs = await psij.submit_jobs(specs=[{"executable": "/bin/sleep", "arguments": ["1"]}] * 5)
    watches = [asyncio.create_task(_states(job)) for job in jobs]
    try:
        await restart()
    finally:
        await ensure_running()
    async with asyncio.timeout(60):
        for watch in watches:
            seqs, states = await watch
            assert seqs == list(range(1, len(seqs) + 1))  # no gap, no repeat
            assert states[-1] == "COMPLETED" and states.count("COMPLETED") == 1


async def _states(job: orbit_mq.Job) -> tuple[list[int], list[str]]:
    """Watch a job to its end in one `watch()`: it must ride out the restart itself."""
    seen = [transition async for transition in job.watch()]
    return [t.seq for t in seen], [t.state for t in seen]


async def test_a_psij_proxy_idle_past_its_session_ttl_keeps_working(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str
) -> None:
    await start_endpoint(plugins=[PsiJ])
    async with fabric.subscribe(f"{name}.psij.session_status") as statuses:
        psij = await fabric.endpoint(name).plugin("psij", ttl=2)
        first = psij.session_id
        async with asyncio.timeout(15):  # idle until the endpoint expires the session
            async for event in statuses:
                if event.data == {**event.data, "session_id": first, "status": "expired"}:
                    break
    assert (await psij.list_jobs()).total == 0  # refused in the old session, run in a new one
    assert psij.session_id not in (None, first)
    job = await psij.submit_job(spec={"executable": "/bin/true"})
    assert (await job.wait(timeout=30)).state == "COMPLETED"
    assert job.session == psij.session_id
