"""The tasks plugin end to end: a real broker, endpoint processes serving `tasks`, the CLI, the
SDK's TaskExecutor in a plain script, a rhapsody-py Session, and kill -9 of the endpoint."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import cli_env, wait_online
from test_cli import run_cli

import orbit_mq
from orbit_mq.contracts.tasks import Tasks, TaskSpec, TaskState
from orbit_mq.tasks import as_completed, result, submit

EndpointProcess = Callable[..., subprocess.Popen[str]]
pytestmark = pytest.mark.timeout(300)
STOPPED = "the endpoint stopped while the task ran"


@pytest.fixture
async def tasks_endpoint(
    name: str, fabric: orbit_mq.Fabric, endpoint_process: EndpointProcess
) -> str:
    endpoint_process("--plugins", "tasks")
    await wait_online(fabric, name)
    return name


async def test_cli_runs_a_thousand_executables(
    settings: orbit_mq.Settings, tasks_endpoint: str
) -> None:
    sent = await run_cli(
        settings, "tasks", "submit", tasks_endpoint, "--count", "1000", "--", "/bin/true"
    )
    assert sent.code == 0, sent
    assert len(sent.stdout.split()) == 1000
    waited = await run_cli(settings, "tasks", "wait", tasks_endpoint, "--all", timeout=120)
    assert waited.code == 0, waited
    assert "ended: DONE 1000" in waited.stdout
    listed = await run_cli(settings, "tasks", "list", tasks_endpoint, "--limit", "2", "--json")
    assert listed.json()["counts"]["DONE"] == 1000  # type: ignore[index]
    failing = await run_cli(
        settings, "tasks", "submit", tasks_endpoint, "--wait", "--", "/bin/false"
    )
    assert failing.code == 1 and "FAILED 1" in failing.stdout


async def test_task_executor_in_a_plain_script(
    settings: orbit_mq.Settings, tasks_endpoint: str, tmp_path: Path
) -> None:
    script = tmp_path / "sweep.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import orbit_mq

            def f(x):
                return x * x

            with orbit_mq.TaskExecutor({tasks_endpoint!r}) as ex:
                squares = list(ex.map(f, range(10_000)))
                root = ex.submit("math:sqrt", 2.0).result()
                failed = ex.submit(f, "a")
            assert squares == [x * x for x in range(10_000)], squares[:10]
            assert abs(root - 2 ** 0.5) < 1e-12
            assert isinstance(failed.exception(), orbit_mq.TaskFailed), failed.exception()
            print("ok", len(squares))
            """
        )
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-P",
        str(script),
        env=cli_env(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 180)
    assert process.returncode == 0, err.decode()[-3000:]
    assert out.decode().split() == ["ok", "10000"]


async def test_a_rhapsody_session_runs_tasks_on_the_endpoint(
    settings: orbit_mq.Settings, tasks_endpoint: str
) -> None:
    from rhapsody.api import ComputeTask, Session

    from orbit_mq.rhapsody import OrbitMQBackend

    backend = await OrbitMQBackend(tasks_endpoint, settings=settings)
    session = Session(backends=[backend])
    try:
        hello = ComputeTask(executable="/bin/echo", arguments=["hello"])
        square = ComputeTask(function=pow, args=(7, 2))
        futures = await session.submit_tasks([hello, square])
        async with asyncio.timeout(60):
            await asyncio.gather(*futures)
    finally:
        await session.close()
    assert hello["state"] == "DONE" and hello["stdout"] == "hello\n"
    assert square["state"] == "DONE" and square["return_value"] == 49


async def test_the_plugin_answers_as_rhapsody_too(
    fabric: orbit_mq.Fabric, tasks_endpoint: str
) -> None:
    backends = await fabric.call(tasks_endpoint, "rhapsody", "backends", {})
    assert backends[0]["name"] == "concurrent"
    info = await fabric.endpoint(tasks_endpoint).info()
    assert {"tasks", "rhapsody"} <= {plugin.name for plugin in info.plugins}


class Ends:
    """Counts the terminal transitions announced for some tasks; `until(n)` waits for n."""

    def __init__(self, uids: set[str]) -> None:
        self.uids = uids
        self.counts: Counter[str] = Counter()
        self.changed = asyncio.Condition()

    async def collect(self, events: orbit_mq.Subscription[orbit_mq.Event]) -> None:
        async for event in events:
            for item in event.data["tasks"]:
                if item["uid"] in self.uids and TaskState(item["state"]).final:
                    self.counts[item["uid"]] += 1
            async with self.changed:
                self.changed.notify_all()

    async def until(self, ended: int, timeout: float = 60) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(lambda: len(self.counts) >= ended)


async def test_every_task_ends_once_across_kill_9(
    fabric: orbit_mq.Fabric, name: str, endpoint_process: EndpointProcess
) -> None:
    """Three rounds: tasks run, the endpoint is killed with SIGKILL and started again; every
    task reaches exactly one terminal state, announced exactly once; those that were running
    failed saying why, or ran again where they asked for a retry."""
    process = endpoint_process("--plugins", "tasks")
    for round_ in range(3):
        await wait_online(fabric, name)
        tasks = await fabric.endpoint(name).plugin(Tasks)
        specs = [TaskSpec(function="time:sleep", args=[0.02], retries=i % 2) for i in range(200)]
        async with fabric.subscribe(f"{name}.tasks.task_status_batch") as events:
            uids = await submit(tasks, specs)
            ends = Ends(set(uids))
            counting = asyncio.create_task(ends.collect(events))
            try:
                await ends.until(20)  # some ended, some run, most wait
                os.kill(process.pid, signal.SIGKILL)
                ended_before = len(ends.counts)
                process.wait(timeout=10)
                process = endpoint_process("--plugins", "tasks")
                statuses = [s async for s in as_completed(tasks, uids, timeout=120)]
                await ends.until(len(uids), timeout=30)
            finally:
                counting.cancel()
        assert sorted(s.uid for s in statuses) == sorted(uids), round_
        assert set(ends.counts.values()) == {1}, round_
        for status in statuses:
            if status.state is TaskState.FAILED:
                assert status.error == STOPPED and status.attempt == 1, status
            else:
                assert status.state is TaskState.DONE, status
        assert ended_before < len(uids), round_  # the kill came in the middle of the run


async def test_results_of_function_tasks_through_the_sdk(
    fabric: orbit_mq.Fabric, tasks_endpoint: str
) -> None:
    tasks = await fabric.endpoint(tasks_endpoint).plugin(Tasks)
    uids = await submit(
        tasks, (TaskSpec(function="operator:pow", args=[i, 2]) for i in range(2500)), batch_size=700
    )
    assert len(uids) == 2500
    values = {s.uid: await result(tasks, s) async for s in as_completed(tasks, uids, timeout=120)}
    assert [values[uid] for uid in uids] == [i * i for i in range(2500)]


@pytest.mark.broker_restart
async def test_tasks_run_through_a_broker_restart(
    fabric: orbit_mq.Fabric, settings: orbit_mq.Settings, tasks_endpoint: str
) -> None:
    """The broker restarts while tasks run: the endpoint's journal keeps the transitions and
    publishes them when it is back; the client misses no ending and sees none twice."""
    from broker_control import ensure_running, restart, restartable

    if not restartable(settings.url):
        pytest.skip("needs root, rabbitmqctl and a broker on this host")
    tasks = await fabric.endpoint(tasks_endpoint).plugin(Tasks)
    specs = (TaskSpec(function="operator:mul", args=[i, 3]) for i in range(300))
    slow = [TaskSpec(function="time:sleep", args=[0.05]) for _ in range(400)]  # ≈ 10 s
    uids = await submit(tasks, [*specs, *slow])
    ended: list[str] = []
    values: dict[str, object] = {}
    async with asyncio.timeout(240):
        async for status in as_completed(tasks, uids):
            ended.append(status.uid)
            values[status.uid] = await result(tasks, status)
            if len(ended) in (50, 450):  # twice: once early, once with most tasks done
                try:
                    await restart()
                finally:
                    await ensure_running()
    assert sorted(ended) == sorted(uids)
    assert [values[uid] for uid in uids[:300]] == [3 * i for i in range(300)]


async def test_a_slow_subscriber_falls_behind_and_catches_up(
    fabric: orbit_mq.Fabric, tasks_endpoint: str
) -> None:
    """A subscriber that reads nothing while 3,000 tasks run gets every transition afterwards:
    the broker keeps them in its queue (flow control), nothing is dropped for being late."""
    tasks = await fabric.endpoint(tasks_endpoint).plugin(Tasks)
    async with fabric.subscribe(f"{tasks_endpoint}.tasks.task_status_batch") as events:
        uids = await submit(
            tasks, [TaskSpec(function="operator:neg", args=[i]) for i in range(3000)]
        )
        for start in range(0, len(uids), 1000):
            await tasks.wait_tasks(uids=uids[start : start + 1000], timeout=120)
        seen: dict[str, list[str]] = {uid: [] for uid in uids}
        async with asyncio.timeout(60):
            async for event in events:  # read only now, long after they were published
                for item in event.data["tasks"]:
                    if item["uid"] in seen:
                        seen[item["uid"]].append(item["state"])
                if all(len(states) == 3 for states in seen.values()):
                    break
    assert all(states == ["NEW", "RUNNING", "DONE"] for states in seen.values())


async def test_tasks_run_on_rhapsodys_dask_backend(
    fabric: orbit_mq.Fabric, name: str, endpoint_process: EndpointProcess
) -> None:
    pytest.importorskip("distributed")
    endpoint_process("--plugins", "tasks")
    await wait_online(fabric, name)
    tasks = await fabric.endpoint(name).plugin(Tasks)
    dask = next(info for info in await tasks.backends() if info.name == "dask")
    assert dask.available, dask
    assert (await tasks.register_session(backends=["dask", "concurrent"])).plugin == "tasks"
    sent = await tasks.submit_tasks(
        tasks=[
            TaskSpec(function="operator:mul", args=[6, 7], backend="dask"),
            TaskSpec(executable="/bin/echo", arguments=["via dask"], backend="dask"),
            TaskSpec(function="operator:truediv", args=[1, 0], backend="dask"),
        ]
    )
    product, echo, failed = await tasks.wait_tasks(uids=sent.uids, timeout=120)
    assert (product.state, product.return_value) == (TaskState.DONE, 42), product
    assert echo.state is TaskState.DONE and "via dask" in echo.stdout, echo
    assert failed.state is TaskState.FAILED and "ZeroDivisionError" in (failed.error or "")
    task = await tasks.get_task(uid=product.uid)
    assert task.backend == "dask"


async def test_task_executor_futures_end_after_shutdown_without_wait(
    settings: orbit_mq.Settings, tasks_endpoint: str
) -> None:
    def use() -> list[object]:
        executor = orbit_mq.TaskExecutor(tasks_endpoint, settings=settings, timeout=30)
        futures = [executor.submit("operator:add", i, 1) for i in range(50)]
        failing = executor.submit("operator:truediv", 1, 0)
        executor.shutdown(wait=False)
        with pytest.raises(RuntimeError, match="after shutdown"):
            executor.submit("operator:neg", 1)
        values: list[object] = [future.result(timeout=60) for future in futures]
        error = failing.exception(timeout=60)
        assert isinstance(error, orbit_mq.TaskFailed), error
        assert error.status.error == "ZeroDivisionError: division by zero"
        return values

    assert await asyncio.to_thread(use) == [i + 1 for i in range(50)]


async def test_cli_cancels_all_of_a_users_open_tasks(
    settings: orbit_mq.Settings, tasks_endpoint: str
) -> None:
    sent = await run_cli(
        settings, "tasks", "submit", tasks_endpoint, "--count", "3", "--", "/bin/sleep", "30"
    )
    assert sent.code == 0, sent
    canceled = await run_cli(settings, "tasks", "cancel", tasks_endpoint, "--all")
    assert canceled.code == 0 and "canceled: 3" in canceled.stdout, canceled
    waited = await run_cli(settings, "tasks", "wait", tasks_endpoint, "--all", "--no-progress")
    assert waited.code == 1 and "CANCELED 3" in waited.stdout, waited
    refused = await run_cli(settings, "tasks", "cancel", tasks_endpoint)
    assert refused.code != 0 and "give task uids or --all" in refused.stderr, refused
