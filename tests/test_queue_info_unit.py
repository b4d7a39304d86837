"""queue_info without a broker: detection, settings, command running, the cache and the
plugin's filtering over a scripted backend (the parsers: test_queue_info_{slurm,pbs}_unit.py)."""

from __future__ import annotations

import asyncio
import getpass
from pathlib import Path
from typing import Any

import pytest
from queue_info_support import Scripted, recorded

from orbit_mq.config import Settings
from orbit_mq.contracts.queue_info import (
    AccountingUnavailable,
    Backend,
    CommandFailed,
    QueueInfoUnavailable,
    QueueNotFound,
    UnknownUser,
)
from orbit_mq.contracts.queue_info import QueueInfo as QueueInfoContract
from orbit_mq.errors import ConfigError, InvalidArguments, InvalidRequest, NotFound
from orbit_mq.testing import PluginHarness
from orbit_mq.workers.plugin import PluginContext
from orbit_mq.workers.plugins.queue_info import QueueInfo, QueueInfoSettings
from orbit_mq.workers.plugins.queue_info.base import (
    command_environment,
    detect_backend,
    run_command,
)
from orbit_mq.workers.plugins.queue_info.cache import TtlCache
from orbit_mq.workers.plugins.queue_info.plugin import load_settings

# -- detection, settings, commands --------------------------------------------------------------


def which_of(*present: str) -> Any:
    return lambda command: f"/usr/bin/{command}" if command in present else None


def test_detection() -> None:
    assert detect_backend("auto", which_of("sinfo", "squeue")) is Backend.SLURM
    assert detect_backend("auto", which_of("qstat", "pbsnodes")) is Backend.PBS
    # Slurm sites may install a qstat wrapper: Slurm wins.
    assert detect_backend("auto", which_of("sinfo", "squeue", "qstat", "pbsnodes")) is Backend.SLURM
    assert detect_backend("auto", which_of("qstat")) is Backend.NONE
    assert detect_backend("pbs", which_of()) is Backend.PBS


def test_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORBIT_MQ_QUEUE_INFO_BACKEND", "none")
    monkeypatch.setenv("ORBIT_MQ_QUEUE_INFO_TTL", "5")
    monkeypatch.setenv("ORBIT_MQ_QUEUE_INFO_PREFETCH", "false")
    settings = load_settings()
    assert (settings.backend, settings.ttl, settings.prefetch) == ("none", 5.0, False)
    assert not QueueInfo.is_available()
    monkeypatch.setenv("ORBIT_MQ_QUEUE_INFO_BACKEND", "lsf")
    with pytest.raises(ConfigError, match="ORBIT_MQ_QUEUE_INFO_"):
        load_settings()


def test_command_environment_drops_format_overrides() -> None:
    env = command_environment({"SQUEUE_FORMAT": "%i", "SLURM_TIME_FORMAT": "relative", "A": "1"})
    assert env == {"A": "1", "LC_ALL": "C"}


async def test_missing_failing_and_hanging_commands() -> None:
    with pytest.raises(QueueInfoUnavailable, match="not installed or not on PATH"):
        await run_command(["orbit-mq-no-such-command"], 5)
    with pytest.raises(CommandFailed, match=r"exit 3\): oops") as failed:
        await run_command(["sh", "-c", "echo oops >&2; exit 3"], 5)
    assert (failed.value.details["returncode"], failed.value.stderr) == (3, "oops\n")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(QueueInfoUnavailable, match=r"did not answer within 0\.3 s"):
        await run_command(["sleep", "30"], 0.3)
    assert loop.time() - started < 10
    result = await run_command(["sh", "-c", "echo out; echo warn >&2"], 5)
    assert (result.stdout, result.stderr) == ("out\n", "warn\n")


# -- the cache ----------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_cache_reuses_until_the_ttl_and_force_refreshes() -> None:
    clock, values = Clock(), iter(range(100))
    cache = TtlCache(30, clock)

    async def produce() -> int:
        return next(values)

    assert [await cache.get("k", produce) for _ in range(3)] == [0, 0, 0]
    assert await cache.get("k", produce, force=True) == 1
    assert await cache.get("other", produce) == 2
    clock.now = 29.9
    assert await cache.get("k", produce) == 1
    clock.now = 30.0
    assert await cache.get("k", produce) == 3
    assert cache.runs == 4


async def test_concurrent_identical_requests_share_one_run() -> None:
    cache, started, gate = TtlCache(30), asyncio.Event(), asyncio.Event()

    async def produce() -> str:
        started.set()
        await gate.wait()
        return "answer"

    waiters = [asyncio.create_task(cache.get("k", produce, force=i % 2 == 0)) for i in range(6)]
    async with asyncio.timeout(5):
        await started.wait()
    gate.set()
    assert await asyncio.gather(*waiters) == ["answer"] * 6
    assert cache.runs == 1


async def test_cache_does_not_keep_errors_and_survives_a_cancelled_caller() -> None:
    cache, gate, outcomes = TtlCache(30), asyncio.Event(), ["boom", "fine"]
    started = asyncio.Event()

    async def produce() -> str:
        started.set()
        await gate.wait()
        outcome = outcomes.pop(0)
        if outcome == "boom":
            raise QueueInfoUnavailable("scheduler down")
        return outcome

    gate.set()
    with pytest.raises(QueueInfoUnavailable):
        await cache.get("k", produce)
    gate.clear()
    started.clear()
    impatient = asyncio.create_task(cache.get("k", produce))
    patient = asyncio.create_task(cache.get("k", produce))
    async with asyncio.timeout(5):
        await started.wait()
    impatient.cancel()
    gate.set()
    assert await patient == "fine"
    assert cache.fresh("k") and cache.runs == 2
    await cache.close()
    assert len(cache) == 0


# -- the plugin over scripted backends, through the dispatcher (orbit_mq.testing) ---------------


def plugin_class(backend: str, run: Scripted | None = None, **options: Any) -> type[QueueInfo]:
    """queue_info configured with `options`, its scheduler commands answered by `run`."""

    class Configured(QueueInfo):
        config = QueueInfoSettings(backend=backend, **options)  # type: ignore[arg-type]

        def __init__(self, context: PluginContext) -> None:
            super().__init__(context)
            if run is not None:
                self.impl = type(self.impl)(run, environ={})

    return Configured


def harness(tmp_path: Path, backend: str, run: Scripted | None = None, **options: Any) -> Any:
    return PluginHarness(plugin_class(backend, run, **options), home=tmp_path)


PBS_ANSWERS: dict[str, str | Exception] = {
    "qstat -Qf": recorded("pbs/qstat_Qf.txt"),
    "pbsnodes": recorded("pbs/pbsnodes_a.txt"),
    "qstat -Bf": recorded("pbs/qstat_Bf.txt"),
    "qstat -f": recorded("pbs/qstat_f.txt"),
}


async def test_get_info_shows_the_queues_a_user_may_use(tmp_path: Path) -> None:
    async with harness(tmp_path, "pbs", Scripted(PBS_ANSWERS), prefetch=False) as h:
        qi = await h.proxy(QueueInfoContract)
        me = getpass.getuser()
        mine = await qi.get_info()
        assert (mine.backend, mine.user) == (Backend.PBS, me)
        # gpu wants group gpuusers or admins, routeq users alice and bob: not us.
        assert [q.name for q in mine.partitions] == ["workq", "long"]
        everything = await qi.get_info(user="*")
        assert [q.name for q in everything.partitions] == ["workq", "gpu", "long", "routeq"]
        assert everything.collected == mine.collected  # one cached qstat answer
        with pytest.raises(UnknownUser, match="orbit-no-such-user"):
            await qi.get_info(user="orbit-no-such-user")


async def test_list_jobs_filters_by_queue_and_user(tmp_path: Path) -> None:
    run = Scripted(PBS_ANSWERS)
    async with harness(tmp_path, "pbs", run, prefetch=False) as h:
        qi = await h.proxy(QueueInfoContract)
        jobs = await qi.list_jobs(queue="workq", user="*")
        assert (jobs.queue, jobs.user, len(jobs.jobs)) == ("workq", "*", 5)
        assert (await qi.list_jobs(queue="gpu", user="*")).jobs == []
        with pytest.raises(QueueNotFound, match="known: workq, gpu, long, routeq") as missing:
            await qi.list_jobs(queue="nope", user="*")
        assert isinstance(missing.value, NotFound)
        qstat_runs = sum(call[:2] == ["qstat", "-f"] for call in run.calls)
        await qi.list_all_jobs(user="*")
        assert sum(call[:2] == ["qstat", "-f"] for call in run.calls) == qstat_runs  # cached
        await qi.list_all_jobs(user="*", force=True)
        assert sum(call[:2] == ["qstat", "-f"] for call in run.calls) == qstat_runs + 1


async def test_the_none_backend_answers_empty(tmp_path: Path) -> None:
    async with harness(tmp_path, "none") as h:
        qi = await h.proxy(QueueInfoContract)
        assert await qi.backend() is Backend.NONE
        assert (await qi.get_info()).partitions == []
        assert (await qi.list_all_jobs(user="*")).jobs == []
        assert await qi.job_allocation() is None and await qi.nodelist() == []
        with pytest.raises(AccountingUnavailable, match="no batch system"):
            await qi.list_allocations()
        with pytest.raises(QueueNotFound):
            await qi.list_jobs(queue="debug")


async def _no_events(
    plugin: str, topic: str, data: dict[str, Any], key: str | None, owner: str
) -> None:
    return None


async def test_prefetch_runs_at_start_and_stops(tmp_path: Path) -> None:
    run = Scripted(PBS_ANSWERS)
    plugin = plugin_class("pbs", run, ttl=60, prefetch=True)(
        PluginContext("unit", Settings(home=tmp_path), _no_events)
    )
    await plugin.start()
    try:
        async with asyncio.timeout(10):
            while not (
                plugin.cache.fresh(("partitions",)) and plugin.cache.fresh(("jobs", plugin.me))
            ):
                run.called.clear()
                await run.called.wait()
        calls = len(run.calls)
        await plugin.get_info()
        await plugin.list_all_jobs()
        assert len(run.calls) == calls  # answered from the prefetched cache
        health = await plugin.health()
        assert health.healthy and health.details["backend"] == "pbs"
    finally:
        await plugin.stop()
    assert plugin._prefetcher is not None and plugin._prefetcher.done()


async def test_malformed_names_are_refused_before_anything_runs(tmp_path: Path) -> None:
    run = Scripted(PBS_ANSWERS)
    async with harness(tmp_path, "pbs", run, prefetch=False) as h:
        qi = await h.proxy(QueueInfoContract)
        for bad in ["--all", "a b", "", "x;rm", "-u"]:  # the contract's patterns
            with pytest.raises(InvalidArguments, match="user: String should match pattern"):
                await qi.list_all_jobs(user=bad)
        with pytest.raises(InvalidArguments, match="queue: String should match pattern"):
            await qi.list_jobs(queue="--all")
        for bad in ["--all", "a b"]:  # from a client that does not check first: the endpoint
            with pytest.raises(InvalidRequest, match="user") as refused:
                await h.call("list_all_jobs", {"user": bad})
            assert refused.value.details["errors"][0]["loc"] == "user"
    for bad in ["--all", "x;rm"]:  # and the plugin itself, called without the dispatcher
        with pytest.raises(UnknownUser, match="not a user name"):
            await plugin_class("pbs", run)(
                PluginContext("unit", Settings(home=tmp_path), _no_events)
            ).list_all_jobs(user=bad)
    assert run.calls == []
