"""The psij plugin with PSI/J's Slurm executor, on a real (single-node) Slurm."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import StartEndpoint, Watcher
from slurm_support import requires_slurm, slurm_executor_config
from test_psij import checked_states, spec, submit
from test_psij_staging import upper_casing

import orbit_mq
from orbit_mq.contracts.psij import JobState
from orbit_mq.workers.plugins.psij import PsiJ

pytestmark = requires_slurm


def quick_slurm(work: Path) -> type[PsiJ]:
    class QuickSlurm(PsiJ):  # squeue every second instead of every 5 s
        executor_options = {"slurm": slurm_executor_config(work)}

    return QuickSlurm


@pytest.fixture
async def psij(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str, tmp_path: Path
) -> Any:
    await start_endpoint(plugins=[quick_slurm(tmp_path / "psij-work")])
    return await fabric.endpoint(name).plugin("psij")


RUNNING = ("PENDING", "RUNNING", "COMPLETING")


def scheduler_state(native_id: str) -> str:
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", native_id], capture_output=True, text=True, check=True
    ).stdout
    return out.split("JobState=", 1)[1].split()[0]


async def until_left_running(native_id: str, timeout: float = 60) -> str:
    """Wait until Slurm says the job ended (nothing to subscribe to: scontrol is polled)."""
    async with asyncio.timeout(timeout):
        while (state := await asyncio.to_thread(scheduler_state, native_id)) in RUNNING:  # noqa: ASYNC110 (no event to wait on)
            await asyncio.sleep(0.2)
    return state


@pytest.mark.parametrize("exit_code", [0, 3])
async def test_a_job_that_ended_while_the_endpoint_was_down_reports_its_exit_code(
    start_endpoint: StartEndpoint,
    fabric: orbit_mq.Fabric,
    name: str,
    tmp_path: Path,
    watcher: Watcher,
    exit_code: int,
) -> None:
    plugin = quick_slurm(tmp_path / "psij-work")
    endpoint = await start_endpoint(plugins=[plugin])
    psij = await fabric.endpoint(name).plugin("psij")
    flag = tmp_path / "go"
    script = f"for i in $(seq 600); do [ -e {flag} ] && exit {exit_code}; sleep 0.1; done"
    job = await submit(psij, spec=spec("/bin/sh", "-c", script), executor="slurm")
    await watcher.until_state(job.job_id, "ACTIVE", timeout=60)
    await endpoint.stop()
    flag.touch()  # the job ends while no endpoint watches it
    assert job.native_id is not None
    assert await until_left_running(job.native_id) in ("COMPLETED", "FAILED")

    await start_endpoint(plugins=[plugin])
    await watcher.until_ended(job.job_id, timeout=60)

    ended = "COMPLETED" if exit_code == 0 else "FAILED"
    assert checked_states(watcher.status[job.job_id]) == ["NEW", "QUEUED", "ACTIVE", ended], str(
        watcher.status[job.job_id][-1]
    )
    assert watcher.status[job.job_id][-1]["exit_code"] == exit_code
    status = await psij.get_job_status(job_id=job.job_id)
    assert (status.state.value, status.exit_code) == (ended, exit_code)


async def test_a_job_cancelled_while_the_endpoint_was_down_ends_canceled(
    start_endpoint: StartEndpoint,
    fabric: orbit_mq.Fabric,
    name: str,
    tmp_path: Path,
    watcher: Watcher,
) -> None:
    plugin = quick_slurm(tmp_path / "psij-work")
    endpoint = await start_endpoint(plugins=[plugin])
    psij = await fabric.endpoint(name).plugin("psij")
    job = await submit(psij, spec=spec("/bin/sleep", "300"), executor="slurm")
    await watcher.until_state(job.job_id, "ACTIVE", timeout=60)
    await endpoint.stop()
    assert job.native_id is not None
    await asyncio.to_thread(subprocess.run, ["scancel", job.native_id], check=True)
    assert await until_left_running(job.native_id) == "CANCELLED"

    await start_endpoint(plugins=[plugin])
    await watcher.until_ended(job.job_id, timeout=60)

    assert checked_states(watcher.status[job.job_id]) == ["NEW", "QUEUED", "ACTIVE", "CANCELED"]


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


async def test_one_squeue_per_interval_for_100_queued_jobs(
    start_endpoint: StartEndpoint,
    fabric: orbit_mq.Fabric,
    name: str,
    tmp_path: Path,
    watcher: Watcher,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counted = tmp_path / "squeue-calls"
    wrappers = tmp_path / "bin"
    wrappers.mkdir()
    real = shutil.which("squeue")
    (wrappers / "squeue").write_text(f'#!/bin/sh\necho x >> {counted}\nexec {real} "$@"\n')
    (wrappers / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrappers}:{os.environ['PATH']}")
    await start_endpoint(plugins=[quick_slurm(tmp_path / "psij-work")])
    psij = await fabric.endpoint(name).plugin("psij")
    later = {"custom_attributes": {"slurm.begin": "now+3600"}}  # pending for an hour
    jobs = await psij.submit_jobs(
        specs=[spec("/bin/true", attributes=later) for _ in range(100)], executor="slurm"
    )
    ids = [job.job_id for job in jobs]
    try:
        await watcher.until(lambda: all("QUEUED" in watcher.states(i) for i in ids), 120)
        before, began = _lines(counted), time.monotonic()
        await asyncio.sleep(6)  # the measured window, not a synchronisation
        calls, elapsed = _lines(counted) - before, time.monotonic() - began

        # one status command per interval (1 s here) for all 100 jobs, not one per job
        assert 1 <= calls <= elapsed / 1.0 + 2, calls
        details = (await psij.health()).details
        per_minute = details["scheduler_calls_last_minute"]["slurm"]
        assert per_minute["sbatch"] == 100 and per_minute["squeue"] >= calls
        assert details["polling_interval"] == {"slurm": 1.0}
    finally:
        native = [job.native_id for job in jobs if job.native_id]
        await asyncio.to_thread(subprocess.run, ["scancel", *native], check=False)
    await watcher.until_ended(*ids, timeout=120)


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


async def test_slurm_job_with_stage_in_and_stage_out(
    psij: Any, watcher: Watcher, tmp_path: Path
) -> None:
    source = tmp_path / "data.txt"
    source.write_text("hello\n")
    job = await submit(psij, spec=upper_casing(source, tmp_path / "result.txt"), executor="slurm")
    await watcher.until_ended(job.job_id, timeout=60)
    states = checked_states(watcher.status[job.job_id])
    assert states == ["NEW", "QUEUED", "STAGE_IN", "ACTIVE", "STAGE_OUT", "COMPLETED"]
    assert (tmp_path / "result.txt").read_text() == "HELLO\n"
