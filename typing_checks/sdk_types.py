"""Checked by `make lint` (mypy): the SDK is typed by the plugins' contracts.

`reveal_type(await psij.submit_job(spec=...))` shows `orbit_mq.contracts.psij.models.Job`,
the job handle; `assert_type` below makes mypy fail when that changes. A misspelt parameter is
a mypy error: the `type: ignore[call-arg]` on it is needed, and `warn_unused_ignores` fails the
check if it ever is not.
"""

from __future__ import annotations

from typing import assert_type, reveal_type

import orbit_mq
from orbit_mq import Job, JobSpec, JobStatus, JobStatusEvent, PluginProxy, PsiJ, Staging
from orbit_mq.contracts.psij import JobList
from orbit_mq.contracts.staging import FileInfo
from orbit_mq.contracts.sysinfo import Metrics, SysInfo


async def jobs(fabric: orbit_mq.Fabric) -> None:
    psij = await fabric.endpoint("hpc1").plugin(PsiJ)
    job = await psij.submit_job(spec=JobSpec(executable="/bin/date"))
    reveal_type(job)  # make lint prints: Revealed type is "orbit_mq.contracts.psij.models.Job"
    assert_type(job, Job)
    assert_type(await job.wait(timeout=60), JobStatusEvent)
    assert_type(await job.status(), JobStatus)
    assert_type(await psij.list_jobs(limit=5), JobList)
    assert_type(await psij.submit_jobs(specs=[JobSpec(executable="/bin/date")]), list[Job])
    await psij.submit_job(spek=JobSpec(executable="/bin/date"))  # type: ignore[call-arg]
    await psij.cancel_job(job_id=42)  # type: ignore[arg-type]


async def others(fabric: orbit_mq.Fabric) -> None:
    sysinfo = await fabric.endpoint("hpc1").plugin(SysInfo, session=False)
    assert_type(await sysinfo.metrics(), Metrics)
    staging = await fabric.endpoint("hpc1").plugin(Staging)
    assert_type(await staging.stat(path="/tmp"), FileInfo)
    unknown = await fabric.endpoint("hpc1").plugin("greeter")  # no contract here: JSON
    assert_type(unknown, PluginProxy)
    assert_type(orbit_mq.remote(staging).session_id, str | None)
