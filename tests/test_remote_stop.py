"""Stopping an endpoint remotely (the control plugin and `orbit-mq endpoint stop`), against
real endpoint processes, the real broker and PSI/J's local executor."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import StartEndpoint, Watcher, wait_online
from test_cli import run_cli

import orbit_mq
from orbit_mq.config import Settings
from orbit_mq.contracts.control import Control
from orbit_mq.contracts.psij import Job, JobState, PsiJ
from orbit_mq.errors import CallTimeout, EndpointOffline, Unauthorized

EXIT_WITHIN = 30  # s for an endpoint process to exit once it was told to stop


async def exited(process: subprocess.Popen[str]) -> tuple[int, str]:
    code = await asyncio.to_thread(process.wait, EXIT_WITHIN)
    assert process.stdout is not None
    return code, process.stdout.read()


def waiting_job(flag: Path) -> dict[str, Any]:
    """A job that ends once `flag` exists (at most 60 s)."""
    script = f"for i in $(seq 600); do [ -e {flag} ] && exit 0; sleep 0.1; done; exit 1"
    return {"executable": "/bin/sh", "arguments": ["-c", script]}


async def psij_endpoint(
    endpoint_process: Any, fabric: orbit_mq.Fabric, name: str
) -> tuple[subprocess.Popen[str], PsiJ]:
    process = endpoint_process("--plugins", "psij")
    await wait_online(fabric, name)
    return process, await fabric.endpoint(name).plugin(PsiJ, session=False)


async def running(psij: PsiJ, watcher: Watcher, flag: Path) -> Job:
    """A job, ACTIVE, that ends once `flag` exists."""
    job = await psij.submit_job(spec=waiting_job(flag))
    await watcher.until_state(job.job_id, "ACTIVE")
    return job


async def test_drain_waits_for_running_jobs_then_exits_0(
    settings: Settings,
    fabric: orbit_mq.Fabric,
    name: str,
    endpoint_process: Any,
    watcher: Watcher,
    tmp_path: Path,
) -> None:
    process, psij = await psij_endpoint(endpoint_process, fabric, name)
    flag = tmp_path / "go"
    job = await running(psij, watcher, flag)

    async with fabric.presence(f"{name}.*") as presence:
        stopping = asyncio.create_task(run_cli(settings, "endpoint", "stop", name, "--drain"))
        async with asyncio.timeout(20):  # a heartbeat says it drains
            async for info in presence:
                if info.draining:
                    break
        # Requests are no longer taken while it drains: they wait in the queue.
        with pytest.raises((CallTimeout, EndpointOffline)):
            await orbit_mq.with_options(psij, timeout=1).list_jobs()
        assert process.poll() is None and not stopping.done()
        flag.touch()
        result = await stopping

    assert result.code == 0, result
    assert "is draining" in result.stdout and f"endpoint {name} stopped" in result.stdout
    code, log = await exited(process)
    assert code == 0, log
    assert "stop requested by 'guest'" in log and "drained" in log
    assert watcher.states(job.job_id)[-1] == "COMPLETED"


async def test_stop_leaves_jobs_running_for_the_next_start(
    settings: Settings,
    fabric: orbit_mq.Fabric,
    name: str,
    endpoint_process: Any,
    watcher: Watcher,
    tmp_path: Path,
) -> None:
    process, psij = await psij_endpoint(endpoint_process, fabric, name)
    flag = tmp_path / "go"
    job = await running(psij, watcher, flag)

    result = await run_cli(settings, "endpoint", "stop", name)
    assert result.code == 0 and f"endpoint {name} stopped" in result.stdout, result
    code, log = await exited(process)
    assert code == 0, log

    await psij_endpoint(endpoint_process, fabric, name)  # the next start re-attaches the job
    assert (await psij.get_job_status(job_id=job.job_id)).state is JobState.ACTIVE
    flag.touch()
    await watcher.until_state(job.job_id, "COMPLETED", timeout=30)


async def test_only_admins_may_stop(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str
) -> None:
    endpoint = await start_endpoint(admin_users=["operator"])
    control = await fabric.endpoint(name).plugin(Control, session=False)
    with pytest.raises(Unauthorized, match="operator"):
        await control.shutdown()
    # still serving
    assert (await control.health()).healthy and not endpoint._stopping.is_set()
