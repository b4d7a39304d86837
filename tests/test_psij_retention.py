"""Retention of ended jobs: the policy's parsing and choice, and the background pruning of a real
endpoint (real broker, PSI/J's local executor)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
from conftest import StartEndpoint, Watcher

import orbit_mq
from orbit_mq.config import Settings
from orbit_mq.contracts.psij import JobState
from orbit_mq.errors import ConfigError
from orbit_mq.workers.plugins.psij import PsiJ
from orbit_mq.workers.plugins.psij.retention import (
    Ended,
    Retention,
    choose,
    parse_retention,
)

# -- the policy --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "age", "size"),
    [
        ("30d", 30 * 86400, None),
        ("10G", None, 10 * 1024**3),
        ("30d,10G", 30 * 86400, 10 * 1024**3),
        ("age=12h, size=500M", 12 * 3600, 500 * 1024**2),
        ("age=30m", 1800, None),
        ("30m", None, 30 * 1024**2),
    ],
)
def test_retention_reads_ages_and_sizes(text: str, age: float | None, size: int | None) -> None:
    policy = parse_retention(text)
    assert policy is not None and (policy.max_age, policy.max_bytes) == (age, size)


@pytest.mark.parametrize("text", [None, "", "off", "none"])
def test_no_retention(text: str | None) -> None:
    assert parse_retention(text) is None


@pytest.mark.parametrize("text", ["soon", "age=big", "size=-1", "colour=red", "30d,"])
def test_a_bad_retention_says_what_to_write(text: str) -> None:
    with pytest.raises(ConfigError, match=r"ORBIT_MQ_PSIJ_RETENTION.*30d,10G"):
        parse_retention(text)


def _ended(*ages: float) -> list[Ended]:
    return [Ended(f"j{i}", Path(f"/x/j{i}"), 1000.0 - age) for i, age in enumerate(ages)]


def test_age_removes_what_ended_long_enough_ago() -> None:
    jobs = _ended(5, 50, 500)
    assert choose(jobs, {}, Retention(max_age=40), now=1000.0) == ["j2", "j1"]


def test_size_removes_the_oldest_until_under_the_cap() -> None:
    jobs = _ended(1, 2, 3, 4)
    sizes = {"j0": 10, "j1": 10, "j2": 10, "j3": 10}
    assert choose(jobs, sizes, Retention(max_bytes=25), now=1000.0) == ["j3", "j2"]
    assert choose(jobs, sizes, Retention(max_bytes=40), now=1000.0) == []


def test_age_and_size_together() -> None:
    jobs = _ended(1, 2, 100)
    sizes = {"j0": 10, "j1": 30, "j2": 5}
    # j2 is past the age; the others (40 bytes) are then over the cap of 35 by the older one
    assert choose(jobs, sizes, Retention(max_age=50, max_bytes=35), now=1000.0) == ["j2", "j1"]


# -- on a real endpoint ------------------------------------------------------------------------


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 20) -> None:
    """Wait until `check()` holds (retention sends no event: the journal is polled)."""
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 (no event to wait on)
            await asyncio.sleep(0.1)


async def job_ids(psij: Any) -> set[str]:
    listing = await psij.list_jobs(limit=1000)
    return {job.job_id for job in listing.jobs}


class AgeRetained(PsiJ):
    retention = "age=2s"
    retention_interval: ClassVar[float] = 0.2


class SizeCapped(PsiJ):
    retention = "size=24K"  # one job below (about 17 KiB), two above
    retention_interval: ClassVar[float] = 0.2


@pytest.fixture
async def psij(
    request: pytest.FixtureRequest,
    start_endpoint: StartEndpoint,
    fabric: orbit_mq.Fabric,
    name: str,
) -> Any:
    """This test's endpoint serving the psij plugin class of the test's parameter (requested
    before `watcher`, whose subscription needs the endpoint's exchange)."""
    await start_endpoint(plugins=[request.param])
    return await fabric.endpoint(name).plugin("psij")


@pytest.mark.parametrize("psij", [AgeRetained], indirect=True)
async def test_age_prunes_ended_jobs_and_never_a_live_one(
    psij: Any, watcher: Watcher, settings: Settings, name: str, tmp_path: Path
) -> None:
    sleeper = await psij.submit_job(spec={"executable": "/bin/sleep", "arguments": ["60"]})
    own_dir = tmp_path / "mine"
    own_dir.mkdir()
    quick = await psij.submit_job(spec={"executable": "/bin/true", "directory": str(own_dir)})
    await watcher.until_ended(quick.job_id)
    root = settings.home / "endpoints" / name / "jobs"
    assert (root / quick.job_id).is_dir()

    await eventually(lambda: _without(psij, quick.job_id))

    assert not (root / quick.job_id).exists()
    assert own_dir.is_dir()  # the spec's own working directory is the user's
    status = await psij.get_job_status(job_id=sleeper.job_id)  # older than 2 s, but running
    assert status.state is JobState.ACTIVE and (root / sleeper.job_id).is_dir()
    health = await psij.health()
    assert health.details["pruned"] == 1 and health.details["retention"]["max_age"] == 2
    await psij.cancel_job(job_id=sleeper.job_id)
    await watcher.until_ended(sleeper.job_id)


async def _without(psij: Any, job_id: str) -> bool:
    return job_id not in await job_ids(psij)


@pytest.mark.parametrize("psij", [SizeCapped], indirect=True)
async def test_size_cap_removes_the_oldest_ended_jobs(psij: Any, watcher: Watcher) -> None:
    writes = {"executable": "/bin/sh", "arguments": ["-c", "head -c 16384 /dev/zero"]}
    ended = []
    for _ in range(3):  # one after the other: they end in a known order
        job = await psij.submit_job(spec=writes)
        await watcher.until_ended(job.job_id)
        ended.append(job.job_id)

    await eventually(lambda: _only(psij, {ended[-1]}))

    assert (await psij.health()).details["pruned"] == 2
    status = await psij.get_job_status(job_id=ended[-1])
    assert status.state is JobState.COMPLETED and len(status.stdout) == 16384


async def _only(psij: Any, expected: set[str]) -> bool:
    return await job_ids(psij) == expected


async def test_a_bad_retention_setting_stops_the_start(
    start_endpoint: StartEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORBIT_MQ_PSIJ_RETENTION", "forever")
    with pytest.raises(ConfigError, match="ORBIT_MQ_PSIJ_RETENTION='forever'"):
        await start_endpoint(plugins=[PsiJ])
