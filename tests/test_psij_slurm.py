"""The psij plugin with PSI/J's Slurm executor, on a real (single-node) Slurm."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import StartEndpoint, Watcher
from slurm_support import requires_slurm, slurm_executor_config
from test_psij import checked_states, spec, submit

import orbit_mq
from orbit_mq.contracts.psij import JobState
from orbit_mq.workers.plugins.psij import PsiJ

pytestmark = requires_slurm


@pytest.fixture
async def psij(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str, tmp_path: Path
) -> Any:
    class QuickSlurm(PsiJ):  # squeue every second instead of every 5 s
        executor_options = {"slurm": slurm_executor_config(tmp_path / "psij-work")}

    await start_endpoint(plugins=[QuickSlurm])
    return await fabric.endpoint(name).plugin("psij")


async def test_slurm_job_completes(psij: Any, watcher: Watcher) -> None:
    assert "slurm" in await psij.executors()
    job = await submit(psij, spec=spec("/bin/echo", "hello"), executor="slurm")
    assert job.native_id and job.native_id.isdigit()
    await watcher.until_ended(job.job_id, timeout=60)
    assert checked_states(watcher.status[job.job_id]) == ["NEW", "QUEUED", "ACTIVE", "COMPLETED"]
    status = await psij.get_job_status(job_id=job.job_id)
    assert (status.state, status.exit_code, status.stdout) == (JobState.COMPLETED, 0, "hello\n")


async def test_slurm_running_job_is_canceled(psij: Any, watcher: Watcher) -> None:
    job = await submit(psij, spec=spec("/bin/sleep", "60"), executor="slurm")
    await watcher.until_state(job.job_id, "ACTIVE", timeout=60)
    await psij.cancel_job(job_id=job.job_id)
    await watcher.until_ended(job.job_id, timeout=60)
    assert checked_states(watcher.status[job.job_id]) == ["NEW", "QUEUED", "ACTIVE", "CANCELED"]


async def test_slurm_queued_job_is_canceled(psij: Any, watcher: Watcher) -> None:
    later = {"custom_attributes": {"slurm.begin": "now+3600"}}  # stays pending for an hour
    job = await submit(psij, spec=spec("/bin/true", attributes=later), executor="slurm")
    await watcher.until_state(job.job_id, "QUEUED", timeout=60)
    await psij.cancel_job(job_id=job.job_id)
    await watcher.until_ended(job.job_id, timeout=60)
    assert checked_states(watcher.status[job.job_id]) == ["NEW", "QUEUED", "CANCELED"]
