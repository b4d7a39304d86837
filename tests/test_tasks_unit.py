"""The tasks plugin through `orbit_mq.testing.PluginHarness` (no broker): real worker processes
and real child processes, the endpoint's dispatcher, an in-memory journal."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from orbit_mq.contracts.tasks import (
    INLINE_RESULT,
    BackendUnavailable,
    InvalidTask,
    PickleRefused,
    ResultNotAvailable,
    Tasks,
    TaskSpec,
    TaskState,
    TaskStatus,
)
from orbit_mq.contracts.tasks.values import decode_value, encode_value, is_json, pickled
from orbit_mq.errors import InvalidArguments
from orbit_mq.tasks import fetch_result, result
from orbit_mq.testing import PluginHarness
from orbit_mq.workers.plugins.tasks.plugin import TasksPlugin

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def harness() -> AsyncIterator[PluginHarness]:
    async with PluginHarness(TasksPlugin) as running:
        yield running


async def proxy(harness: PluginHarness) -> Tasks:
    return await harness.proxy(Tasks)


async def run(tasks: Tasks, *specs: TaskSpec, timeout: float = 60) -> list[TaskStatus]:
    sent = await tasks.submit_tasks(tasks=list(specs))
    return await tasks.wait_tasks(uids=sent.uids, timeout=timeout)


def transitions(harness: PluginHarness) -> dict[str, list[dict[str, Any]]]:
    """Every transition the plugin announced, by task, in order."""
    seen: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in harness.events:
        if event.topic == "task_status_batch":
            for item in event.data["tasks"]:
                seen[item["uid"]].append(item)
    return seen


# -- values and specs --------------------------------------------------------------------------


def test_json_values_stay_json_and_the_rest_is_pickled() -> None:
    for value in (None, 1, 2.5, "x", [1, [2]], {"a": {"b": None}}):
        assert is_json(value) and encode_value(value)[0] == "json"
        assert decode_value(*encode_value(value)) == value
    for value in ((1, 2), {1: "a"}, float("nan"), {1, 2}, 2**70, b"raw"):
        encoding, data = encode_value(value)
        assert encoding == "pickle", value
        decoded = decode_value(encoding, data)
        assert decoded == value or (value != value and decoded != decoded)


def test_a_spec_names_exactly_one_kind_of_work() -> None:
    with pytest.raises(ValidationError, match="exactly one of"):
        TaskSpec()
    with pytest.raises(ValidationError, match="exactly one of"):
        TaskSpec(executable="/bin/true", function="math:sqrt")
    with pytest.raises(ValidationError, match="for function tasks"):
        TaskSpec(executable="/bin/echo", args=[1])
    with pytest.raises(ValidationError, match="module:name"):
        TaskSpec(function="sqrt")
    with pytest.raises(ValidationError, match="pattern"):
        TaskSpec(uid="no spaces", executable="/bin/true")
    spec = TaskSpec.model_validate({"function": "cloudpickle::QUJD", "uid": "a.1"})
    assert spec.pickled_function == "QUJD" and spec.function is None and spec.pickled
    legacy = TaskSpec.model_validate(
        {"executable": "/bin/true", "task_backend_specific_kwargs": {"type": "mpi"}}
    )
    assert legacy.backend_kwargs == {"type": "mpi"}


# -- running -----------------------------------------------------------------------------------


async def test_executables_and_functions_end_with_their_outcomes(harness: PluginHarness) -> None:
    tasks = await proxy(harness)
    echo, false, sqrt, lam, boom, missing = await run(
        tasks,
        TaskSpec(executable="/bin/sh", arguments=["-c", "echo out; echo err >&2"]),
        TaskSpec(executable="/bin/false"),
        TaskSpec(function="math:sqrt", args=[16]),
        TaskSpec(pickled_function=pickled(lambda a, b=1: (a, b)), args=[2], kwargs={"b": 3}),
        TaskSpec(function="operator:truediv", args=[1, 0]),
        TaskSpec(executable="/no/such/program"),
    )
    assert (echo.state, echo.exit_code, echo.stdout, echo.stderr) == ("DONE", 0, "out\n", "err\n")
    assert (false.state, false.exit_code, false.error) == ("FAILED", 1, "exit code 1")
    assert (sqrt.state, sqrt.return_value, sqrt.result_encoding) == ("DONE", 4.0, "json")
    assert lam.result_encoding == "pickle" and await result(tasks, lam) == (2, 3)  # a tuple
    assert boom.state == "FAILED" and boom.error == "ZeroDivisionError: division by zero"
    assert boom.exception is not None and "Traceback" in boom.exception
    assert missing.state == "FAILED" and "cannot start /no/such/program" in (missing.error or "")
    for uid, steps in transitions(harness).items():  # per task: 1, 2, 3, in order
        assert [s["seq"] for s in steps] == [1, 2, 3], uid
        assert [s["state"] for s in steps][:2] == ["NEW", "RUNNING"]


async def test_function_output_and_pickled_arguments(harness: PluginHarness) -> None:
    tasks = await proxy(harness)

    def talk(values: tuple[int, ...]) -> int:
        print("saw", values)
        return sum(values)

    (status,) = await run(
        tasks,
        TaskSpec(pickled_function=pickled(talk), pickled_arguments=pickled((((1, 2, 3),), {}))),
    )
    assert (
        status.state == "DONE" and status.return_value == 6 and status.stdout == "saw (1, 2, 3)\n"
    )


async def test_large_results_stay_on_the_endpoint_until_fetched(harness: PluginHarness) -> None:
    tasks = await proxy(harness)
    (status,) = await run(
        tasks, TaskSpec(pickled_function=pickled(lambda: "x" * (3 * INLINE_RESULT)))
    )
    assert status.result_kept and status.return_value is None
    assert await fetch_result(tasks, status.uid) == "x" * (3 * INLINE_RESULT)
    full = await tasks.get_task(uid=status.uid)
    assert full.result_size is not None and full.result_size > 3 * INLINE_RESULT
    (failed,) = await run(tasks, TaskSpec(executable="/bin/false"))
    with pytest.raises(ResultNotAvailable, match="has no result"):
        await tasks.get_result(uid=failed.uid)


async def test_timeouts_stop_executables_and_functions(harness: PluginHarness) -> None:
    tasks = await proxy(harness)
    started = time.monotonic()
    slow_exe, slow_fn = await run(
        tasks,
        TaskSpec(executable="/bin/sleep", arguments=["30"], timeout=0.5),
        TaskSpec(function="time:sleep", args=[30], timeout=0.5),
    )
    assert slow_exe.state == slow_fn.state == "FAILED"
    assert slow_exe.error == slow_fn.error == "timed out after 0.5 s"
    assert time.monotonic() - started < 20


async def test_a_failed_attempt_runs_again_while_retries_last(
    harness: PluginHarness, tmp_path: Path
) -> None:
    tasks = await proxy(harness)
    marker = tmp_path / "attempts"

    def flaky() -> int:
        with marker.open("a") as file:
            file.write("x")
        attempts = len(marker.read_text())
        if attempts < 3:
            raise RuntimeError(f"attempt {attempts}")
        return attempts

    (status,) = await run(tasks, TaskSpec(pickled_function=pickled(flaky), retries=3))
    assert (status.state, status.return_value, status.attempt) == ("DONE", 3, 3)
    steps = transitions(harness)[status.uid]
    assert [s["state"] for s in steps] == ["NEW", "RUNNING"] * 3 + ["DONE"]
    assert [s["seq"] for s in steps] == list(range(1, 8))
    assert steps[2]["error"] == "attempt 1 failed: RuntimeError: attempt 1; retrying"


async def test_a_worker_that_dies_fails_its_own_task_only(harness: PluginHarness) -> None:
    tasks = await proxy(harness)
    specs = [TaskSpec(function="operator:add", args=[i, 1]) for i in range(40)]
    specs.insert(20, TaskSpec(function="os:_exit", args=[3]))
    statuses = await run(tasks, *specs)
    died = statuses.pop(20)
    assert died.state == "FAILED" and "worker process died (exit code 3)" in (died.error or "")
    assert [s.return_value for s in statuses] == [i + 1 for i in range(40)]
    assert all(s.state == "DONE" for s in statuses)


# -- submission rules --------------------------------------------------------------------------


async def test_a_uid_sent_again_does_not_run_again(harness: PluginHarness, tmp_path: Path) -> None:
    tasks = await proxy(harness)
    log = tmp_path / "runs"
    spec = TaskSpec(uid="once.1", executable="/bin/sh", arguments=["-c", f"echo x >> {log}"])
    first = await tasks.submit_tasks(tasks=[spec])
    again = await tasks.submit_tasks(tasks=[spec, TaskSpec(uid="once.2", executable="/bin/true")])
    assert first.uids == ["once.1"] and first.duplicates == []
    assert again.uids == ["once.1", "once.2"] and again.duplicates == ["once.1"]
    await tasks.wait_tasks(uids=again.uids, timeout=30)
    assert log.read_text() == "x\n"
    with pytest.raises(InvalidTask, match="more than once: twice"):
        await tasks.submit_tasks(tasks=[TaskSpec(uid="twice", executable="/bin/true")] * 2)


async def test_an_invalid_task_refuses_the_whole_submission(harness: PluginHarness) -> None:
    tasks = await proxy(harness)
    with pytest.raises(InvalidArguments):
        await tasks.submit_tasks(tasks=[TaskSpec(executable="/bin/true"), {"args": [1]}])  # type: ignore[list-item]
    assert (await tasks.list_tasks()).total == 0


async def test_pickles_can_be_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORBIT_MQ_TASKS_ALLOW_PICKLE", "false")
    async with PluginHarness(TasksPlugin) as harness:
        tasks = await proxy(harness)
        with pytest.raises(PickleRefused, match="accepts no pickles"):
            await tasks.submit_tasks(tasks=[TaskSpec(pickled_function=pickled(print))])
        (status,) = await run(tasks, TaskSpec(function="math:floor", args=[2.5]))
        assert status.return_value == 2
    monkeypatch.setenv("ORBIT_MQ_TASKS_ALLOW_PICKLE", "true")
    monkeypatch.setenv("ORBIT_MQ_TASKS_PICKLE_USERS", "alice")
    async with PluginHarness(TasksPlugin, user="bob") as harness:
        tasks = await proxy(harness)
        with pytest.raises(PickleRefused, match="not from 'bob'"):
            await tasks.submit_tasks(
                tasks=[TaskSpec(function="math:floor", pickled_arguments=pickled(((2.5,), {})))]
            )


async def test_sessions_name_backends_the_endpoint_has(harness: PluginHarness) -> None:
    tasks = await proxy(harness)
    names = {info.name: info for info in await tasks.backends()}
    assert names["concurrent"].available and names["concurrent"].default
    assert {"dask", "radical_pilot", "dragon"} <= set(names)
    with pytest.raises(BackendUnavailable, match=r"'nope' is unknown; .* on: concurrent"):
        await tasks.register_session(backends=["nope"])
    session = await tasks.register_session(backends=["concurrent"])
    assert session.plugin == "tasks"


# -- queries and cancellation ------------------------------------------------------------------


async def test_list_pages_through_a_users_tasks_with_counts(harness: PluginHarness) -> None:
    tasks = await proxy(harness)
    statuses = await run(tasks, *[TaskSpec(executable="/bin/true") for _ in range(5)])
    page = await tasks.list_tasks(offset=1, limit=2)
    assert [s.uid for s in page.tasks] == [s.uid for s in statuses[1:3]]
    assert page.total == 5 and page.counts[TaskState.DONE] == 5
    assert (await tasks.list_tasks(state=TaskState.FAILED)).total == 0
    assert (await tasks.list_tasks(limit=0)).tasks == []


async def test_cancel_stops_queued_and_running_tasks(harness: PluginHarness) -> None:
    tasks = await proxy(harness)
    sleepers = [TaskSpec(executable="/bin/sleep", arguments=["30"]) for _ in range(3)]
    sent = await tasks.submit_tasks(
        tasks=[*sleepers, TaskSpec(function="time:sleep", args=[30])], notify="each"
    )
    running = await _until_running(harness, sent.uids)
    started = time.monotonic()
    canceled = await tasks.cancel_task(uid=running)
    assert canceled.state == "CANCELED" and canceled.error == "canceled"
    summary = await tasks.cancel_all_tasks()
    assert summary.canceled == 3
    ended = await tasks.wait_tasks(uids=sent.uids, timeout=20)
    assert [s.state for s in ended] == ["CANCELED"] * 4
    assert time.monotonic() - started < 15
    assert (await tasks.cancel_all_tasks()).canceled == 0
    assert (await tasks.cancel_task(uid=running)).state == "CANCELED"  # unchanged
    each = [e for e in harness.events if e.topic == "task_status"]
    assert {e.data["uid"] for e in each} == set(sent.uids)
    (after,) = await run(tasks, TaskSpec(function="operator:neg", args=[5]))
    assert after.return_value == -5  # the killed worker was replaced


async def _until_running(harness: PluginHarness, uids: list[str], timeout: float = 20) -> str:
    """The first of `uids` seen RUNNING (events are collected as the plugin emits them)."""
    deadline = time.monotonic() + timeout
    tasks = await proxy(harness)
    while time.monotonic() < deadline:
        for status in await tasks.wait_tasks(uids=uids, timeout=0):
            if status.state == "RUNNING":
                return status.uid
        await tasks.wait_tasks(uids=uids, timeout=0.2)  # a bounded pause that asks again
    raise AssertionError("no task started")


async def test_every_task_of_a_big_submission_ends_once(harness: PluginHarness) -> None:
    tasks = await proxy(harness)
    count = 3000
    sent = await tasks.submit_tasks(
        tasks=[TaskSpec(function="operator:mul", args=[i, 2]) for i in range(count)]
    )
    values = []
    for start in range(0, count, 1000):
        ended = await tasks.wait_tasks(uids=sent.uids[start : start + 1000], timeout=60)
        values += [s.return_value for s in ended]
    assert values == [2 * i for i in range(count)]
    seen = transitions(harness)
    assert all([s["seq"] for s in seen[uid]] == [1, 2, 3] for uid in sent.uids)
    batches = [e for e in harness.events if e.topic == "task_status_batch"]
    assert len(batches) < count  # many transitions to a message
    assert max(len(e.data["tasks"]) for e in batches) <= 1024
