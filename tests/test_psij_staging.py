"""PSI/J staging (stage_in, stage_out, cleanup) through the psij plugin: real broker, PSI/J's
local executor, the endpoint's job-side stager."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import StartEndpoint, Watcher
from test_psij import checked_states, spec, submit

import orbit_mq
from orbit_mq.errors import InvalidArguments
from orbit_mq.workers.plugins.psij import PsiJ


@pytest.fixture
async def psij(start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str) -> Any:
    await start_endpoint(plugins=[PsiJ])
    return await fabric.endpoint(name).plugin("psij")


def upper_casing(source: Path, result: Path, **more: Any) -> dict[str, Any]:
    """A job that stages `source` in, upper-cases it and stages the result out to `result`."""
    return spec(
        "/bin/sh",
        "-c",
        "tr a-z A-Z < data.txt > result.txt",
        stage_in=[{"source": source.as_uri(), "target": "data.txt"}],
        stage_out=[{"source": "result.txt", "target": str(result)}],
        **more,
    )


async def test_stage_in_run_stage_out_and_clean_up(
    psij: Any, watcher: Watcher, tmp_path: Path
) -> None:
    source = tmp_path / "in" / "data.txt"
    source.parent.mkdir()
    source.write_text("hello\n")
    results = tmp_path / "out"
    job = await submit(
        psij, spec=upper_casing(source, results / "result.txt", cleanup=["data.txt"])
    )
    await watcher.until_ended(job.job_id)

    assert checked_states(watcher.status[job.job_id]) == [
        "NEW", "QUEUED", "STAGE_IN", "ACTIVE", "STAGE_OUT", "CLEANUP", "COMPLETED",
    ]  # fmt: skip
    assert (results / "result.txt").read_text() == "HELLO\n"
    status = await psij.get_job_status(job_id=job.job_id)
    work = Path(status.directory or "")
    assert (work / "result.txt").exists() and not (work / "data.txt").exists()
    assert [entry.state.value for entry in status.history][-3:] == [
        "STAGE_OUT", "CLEANUP", "COMPLETED",
    ]  # fmt: skip


async def test_a_failed_stage_in_fails_the_job_before_it_runs(
    psij: Any, watcher: Watcher, tmp_path: Path
) -> None:
    ran = tmp_path / "ran"
    missing = tmp_path / "nothing-here"
    job = await submit(
        psij,
        spec=spec("/bin/touch", str(ran), stage_in=[{"source": str(missing), "target": "x"}]),
    )
    await watcher.until_ended(job.job_id)

    assert checked_states(watcher.status[job.job_id]) == ["NEW", "QUEUED", "STAGE_IN", "FAILED"]
    last = watcher.status[job.job_id][-1]
    assert "stage in" in last["message"] and "does not exist" in last["message"]
    assert not ran.exists()


async def test_stage_out_follows_its_flags(psij: Any, watcher: Watcher, tmp_path: Path) -> None:
    kept = tmp_path / "kept.txt"
    job = await submit(
        psij,
        spec=spec(
            "/bin/sh",
            "-c",
            "echo partial > out.txt; exit 3",
            stage_out=[
                {"source": "out.txt", "target": str(kept), "flags": ["on_error"]},
                {"source": "out.txt", "target": str(tmp_path / "no"), "flags": ["on_success"]},
                {
                    "source": "absent",
                    "target": str(tmp_path / "a"),
                    "flags": ["on_error", "if_present"],
                },
            ],
        ),
    )
    await watcher.until_ended(job.job_id)

    assert checked_states(watcher.status[job.job_id]) == [
        "NEW", "QUEUED", "ACTIVE", "STAGE_OUT", "FAILED",
    ]  # fmt: skip
    assert watcher.status[job.job_id][-1]["exit_code"] == 3
    assert kept.read_text() == "partial\n" and not (tmp_path / "no").exists()


async def test_only_local_paths_are_staged(psij: Any) -> None:
    with pytest.raises(InvalidArguments, match="orbit-mq stage put"):
        await psij.submit_job(
            spec=spec("/bin/true", stage_in=[{"source": "https://x.org/a", "target": "a"}])
        )
