"""The psij plugin against the real broker and PSI/J's real local executor.

Every test subscribes to the endpoint's psij events before it submits anything and waits on
them with deadlines; no test sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

import aio_pika
import psutil
import pytest
from conftest import StartEndpoint, Watcher, wait_online

import orbit_mq
from orbit_mq.contracts.psij import (
    TERMINAL,
    ExecutorUnavailable,
    InvalidJobSpec,
    Job,
    JobNotEnded,
    JobNotFound,
    JobState,
)
from orbit_mq.errors import InvalidRequest
from orbit_mq.protocol import request_queue
from orbit_mq.workers.plugins.psij import PsiJ


def checked_states(events: list[dict[str, Any]]) -> list[str]:
    """The states of one job's events, after checking seq 1..n, NEW first and one end, last."""
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    states = [event["state"] for event in events]
    assert states[0] == "NEW"
    assert len(states) == len(set(states))
    assert [state in TERMINAL for state in states] == [False] * (len(states) - 1) + [True]
    return states


@pytest.fixture
async def psij(start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str) -> Any:
    await start_endpoint(plugins=[PsiJ])
    return await fabric.endpoint(name).plugin("psij")


def spec(executable: str, *arguments: str, **more: Any) -> dict[str, Any]:
    return {"executable": executable, "arguments": list(arguments), **more}


def info(result: Any) -> Job:
    """The Job of a submit result (the SDK wraps it in a job handle)."""
    return Job.model_validate(getattr(result, "info", result))


async def submit(psij: Any, **params: Any) -> Job:
    return info(await psij.submit_job(**params))


async def submit_many(psij: Any, **params: Any) -> list[Job]:
    return [info(result) for result in await psij.submit_jobs(**params)]


async def test_echo_completes_with_its_output(psij: Any, watcher: Watcher) -> None:
    job: Job = await submit(psij, spec=spec("/bin/echo", "hello"))
    assert job.native_id and job.executor == "local" and job.session == psij.session_id
    await watcher.until_ended(job.job_id)
    events = watcher.status[job.job_id]
    assert checked_states(events) == ["NEW", "QUEUED", "ACTIVE", "COMPLETED"]
    assert events[-1]["exit_code"] == 0 and events[-1]["stdout_tail"] == "hello\n"
    assert events[-1]["native_id"] == job.native_id
    status = await psij.get_job_status(job_id=job.job_id)
    assert (status.state, status.exit_code, status.stdout) == (JobState.COMPLETED, 0, "hello\n")
    assert (status.stdout_offset, status.stderr, status.stderr_offset) == (6, "", 0)
    assert (status.executable, status.arguments) == ("/bin/echo", ["hello"])
    assert [entry.seq for entry in status.history] == [1, 2, 3, 4]
    again = await psij.get_job_status(job_id=job.job_id, stdout_offset=status.stdout_offset)
    assert again.stdout == "" and again.stdout_offset == 6


async def test_every_job_knows_its_id_directory_and_endpoint(
    psij: Any, watcher: Watcher, settings: orbit_mq.Settings, name: str
) -> None:
    script = 'echo "$ORBIT_MQ_JOB_ID $ORBIT_MQ_JOB_DIR $ORBIT_MQ_ENDPOINT $MINE"'
    job = await submit(
        psij, spec={**spec("/bin/sh", "-c", script), "environment": {"MINE": "kept"}}
    )
    await watcher.until_ended(job.job_id)
    status = await psij.get_job_status(job_id=job.job_id)
    root = settings.home / "endpoints" / name / "jobs" / job.job_id
    assert status.stdout == f"{job.job_id} {root} {name} kept\n"


async def test_job_directory_holds_spec_history_output_and_work(
    psij: Any, watcher: Watcher, settings: orbit_mq.Settings, name: str
) -> None:
    job = await submit(psij, spec=spec("/bin/pwd"))
    await watcher.until_ended(job.job_id)
    root = settings.home / "endpoints" / name / "jobs" / job.job_id
    assert (root / "stdout").read_text() == f"{root / 'work'}\n"  # work/ is the job's cwd
    assert json.loads((root / "spec.json").read_text())["executable"] == "/bin/pwd"
    lines = [json.loads(line) for line in (root / "status.jsonl").read_text().splitlines()]
    assert [(line["seq"], line["state"]) for line in lines] == [
        (1, "NEW"),
        (2, "QUEUED"),
        (3, "ACTIVE"),
        (4, "COMPLETED"),
    ]


async def test_nonzero_exit_fails_with_its_code(psij: Any, watcher: Watcher) -> None:
    job = await submit(psij, spec=spec("/bin/sh", "-c", "echo oops >&2; exit 1"))
    await watcher.until_ended(job.job_id)
    last = watcher.status[job.job_id][-1]
    assert checked_states(watcher.status[job.job_id])[-1] == "FAILED"
    assert (last["exit_code"], last["stderr_tail"]) == (1, "oops\n")
    assert "exit code 1" in last["message"] and "oops" in last["message"]
    false = await submit(psij, spec=spec("/bin/false"))
    await watcher.until_ended(false.job_id)
    assert (await psij.get_job_status(job_id=false.job_id)).exit_code == 1


async def test_cancel_running_job(psij: Any, watcher: Watcher) -> None:
    job = await submit(psij, spec=spec("/bin/sleep", "30"))
    await watcher.until_state(job.job_id, "ACTIVE")
    await psij.cancel_job(job_id=job.job_id)
    await watcher.until_ended(job.job_id)
    assert checked_states(watcher.status[job.job_id]) == ["NEW", "QUEUED", "ACTIVE", "CANCELED"]
    again = await psij.cancel_job(job_id=job.job_id)  # already ended: unchanged
    assert (again.state, again.seq) == (JobState.CANCELED, 4)
    with pytest.raises(JobNotFound):
        await psij.cancel_job(job_id="no-such-job")


async def test_an_ended_job_can_be_removed_and_a_running_one_not(
    psij: Any, watcher: Watcher, settings: orbit_mq.Settings, name: str
) -> None:
    running = await submit(psij, spec=spec("/bin/sleep", "30"))
    ended = await submit(psij, spec=spec("/bin/echo", "bye"))
    await watcher.until_ended(ended.job_id)
    await watcher.until_state(running.job_id, "ACTIVE")
    with pytest.raises(JobNotEnded, match="cancel it"):
        await psij.remove_job(job_id=running.job_id)
    root = settings.home / "endpoints" / name / "jobs"
    assert (root / ended.job_id / "stdout").read_text() == "bye\n"
    removed = await psij.remove_job(job_id=ended.job_id)
    assert removed.state == JobState.COMPLETED and not (root / ended.job_id).exists()
    with pytest.raises(JobNotFound):
        await psij.get_job_status(job_id=ended.job_id)
    assert ended.job_id not in {job.job_id for job in (await psij.list_jobs()).jobs}
    await psij.cancel_job(job_id=running.job_id)
    await watcher.until_ended(running.job_id)
    await psij.remove_job(job_id=running.job_id)
    assert not (root / running.job_id).exists()


async def test_invalid_specs_submit_nothing(psij: Any, fabric: orbit_mq.Fabric, name: str) -> None:
    resources = {"node_count": 2, "process_count": 3, "processes_per_node": 2}
    cases = {
        r"spec\.bogus: Extra inputs": spec("/bin/true", bogus=1),
        r"spec\.resources: .*process_count \(3\)": spec("/bin/true", resources=resources),
        r"spec\.attributes\.duration": spec("/bin/true", attributes={"duration": "soon"}),
    }
    for field, bad in cases.items():
        with pytest.raises(InvalidRequest, match=field):
            await fabric.call(name, "psij", "submit_job", {"spec": bad})
    batch = {"specs": [spec("/bin/true"), spec("/bin/true", bogus=1)]}
    with pytest.raises(InvalidRequest, match=r"specs\.1\.bogus"):
        await fabric.call(name, "psij", "submit_jobs", batch)
    with pytest.raises(InvalidJobSpec, match="launcher"):
        await submit(psij, spec=spec("/bin/true", launcher="warp-drive"))
    with pytest.raises(ExecutorUnavailable, match="local") as refused:
        await submit(psij, spec=spec("/bin/true"), executor="quantum")
    assert "local" in refused.value.details["available"]
    assert (await psij.list_jobs()).total == 0
    assert "local" in await psij.executors()


async def test_missing_executable_fails_with_a_message(psij: Any, watcher: Watcher) -> None:
    job = await submit(psij, spec=spec("/no/such/program", "x"))
    await watcher.until_ended(job.job_id)
    assert checked_states(watcher.status[job.job_id]) == ["NEW", "FAILED"]
    assert "/no/such/program" in watcher.status[job.job_id][-1]["message"]
    on_path = await submit(psij, spec=spec("no-such-program-anywhere"))
    await watcher.until_ended(on_path.job_id)
    assert "not found" in (await psij.get_job_status(job_id=on_path.job_id)).message


async def test_huge_output_tails_and_pages(psij: Any, watcher: Watcher) -> None:
    size, line = 20_000_000, "0123456789\n"
    expected = (line * (size // len(line) + 1))[:size]
    job = await submit(psij, spec=spec("/bin/sh", "-c", f"yes 0123456789 | head -c {size}"))
    await watcher.until_ended(job.job_id, timeout=30)
    last = watcher.status[job.job_id][-1]
    assert last["state"] == "COMPLETED" and last["stdout_tail"] == expected[-4096:]
    offset, pages = 0, []
    for _ in range(3):  # page through the start
        status = await psij.get_job_status(job_id=job.job_id, stdout_offset=offset)
        assert status.stdout_offset == offset + len(status.stdout) == offset + 1024 * 1024
        pages.append(status.stdout)
        offset = status.stdout_offset
    assert "".join(pages) == expected[: 3 * 1024 * 1024]
    end = await psij.get_job_status(job_id=job.job_id, stdout_offset=size - 11)
    assert (end.stdout, end.stdout_offset) == (expected[-11:], size)


async def test_streamed_output_comes_in_order_before_the_end(psij: Any, watcher: Watcher) -> None:
    script = "seq 1 3; sleep 0.6; seq 4 100000; echo done >&2"
    job = await submit(psij, spec=spec("/bin/sh", "-c", script), stream_output=True)
    await watcher.until_ended(job.job_id)
    chunks = {"stdout": "", "stderr": ""}
    for chunk in watcher.output[job.job_id]:
        assert chunk["offset"] == len(chunks[chunk["stream"]].encode())  # contiguous
        assert len(chunk["text"].encode()) <= 64 * 1024
        chunks[chunk["stream"]] += chunk["text"]
    assert chunks["stdout"] == "".join(f"{n}\n" for n in range(1, 100001))
    assert chunks["stderr"] == "done\n"
    assert len(watcher.output[job.job_id]) > 2


async def test_many_jobs_end_once_each_in_order(psij: Any, watcher: Watcher) -> None:
    # one call hands 500 jobs to the executor before it answers: give it time on a busy machine
    jobs = await submit_many(
        orbit_mq.with_options(psij, timeout=120), specs=[spec("/bin/true")] * 500
    )
    ids = [job.job_id for job in jobs]
    assert len(set(ids)) == 500
    await watcher.until_ended(*ids, timeout=60)
    for job_id in ids:
        assert checked_states(watcher.status[job_id])[-1] == "COMPLETED"
    listed = await psij.list_jobs(limit=1000)
    assert listed.total == 500 and {job.job_id for job in listed.jobs} == set(ids)
    health = await psij.health()
    assert health.details["jobs"] == {"COMPLETED": 500} and health.details["running"] == 0


async def test_repeated_message_id_submits_once(
    psij: Any, fabric: orbit_mq.Fabric, name: str
) -> None:
    params = {"spec": spec("/bin/true")}
    first = await fabric.call(name, "psij", "submit_job", params, message_id="x")
    again = await fabric.call(name, "psij", "submit_job", params, message_id="x")
    assert first["job_id"] == again["job_id"]
    batch = {"specs": [spec("/bin/true")] * 3}
    jobs = await fabric.call(name, "psij", "submit_jobs", batch, message_id="y")
    assert await fabric.call(name, "psij", "submit_jobs", batch, message_id="y") == jobs
    assert (await psij.list_jobs()).total == 4


async def test_list_jobs_filters_and_pages(
    psij: Any, fabric: orbit_mq.Fabric, name: str, watcher: Watcher
) -> None:
    mine = await submit(psij, spec=spec("/bin/true"))
    other = await fabric.call(name, "psij", "submit_job", {"spec": spec("/bin/false")})
    await watcher.until_ended(mine.job_id, other["job_id"])
    by_session = await psij.list_jobs(session=psij.session_id)
    assert [job.job_id for job in by_session.jobs] == [mine.job_id] and by_session.total == 1
    failed = await psij.list_jobs(state="FAILED")
    assert [job.job_id for job in failed.jobs] == [other["job_id"]]
    newest = await psij.list_jobs(limit=1)
    assert (newest.total, [job.job_id for job in newest.jobs]) == (2, [other["job_id"]])
    older = await psij.list_jobs(offset=1, limit=1)
    assert [job.job_id for job in older.jobs] == [mine.job_id]


async def test_psij_json_spec_is_accepted(psij: Any, watcher: Watcher) -> None:
    import psij as psij_lib
    from psij.serialize import JSONSerializer

    theirs = psij_lib.JobSpec(
        executable="/bin/echo",
        arguments=["from", "psij"],
        environment={"GREETING": "hi"},
        resources=psij_lib.ResourceSpecV1(process_count=1),
        attributes=psij_lib.JobAttributes(custom_attributes={"local.x": "1"}),
    )
    text = JSONSerializer().dumps(theirs)
    as_text = await submit(psij, spec=text)
    as_object = await submit(psij, spec=json.loads(text))
    await watcher.until_ended(as_text.job_id, as_object.job_id)
    for job in (as_text, as_object):
        status = await psij.get_job_status(job_id=job.job_id)
        assert (status.state, status.stdout) == (JobState.COMPLETED, "from psij\n")


async def test_wait_jobs(psij: Any) -> None:
    quick = await submit(psij, spec=spec("/bin/sleep", "0.2"))
    slow = await submit(psij, spec=spec("/bin/sleep", "30"))
    done = await psij.wait_jobs(job_ids=[quick.job_id])
    assert [job.state for job in done] == [JobState.COMPLETED]
    both = await psij.wait_jobs(job_ids=[slow.job_id, quick.job_id], timeout=0.3)
    assert [job.state for job in both] == [JobState.ACTIVE, JobState.COMPLETED]
    await psij.cancel_job(job_id=slow.job_id)
    assert (await psij.wait_jobs(job_ids=[slow.job_id]))[0].state == JobState.CANCELED
    with pytest.raises(JobNotFound, match="nope"):
        await psij.wait_jobs(job_ids=[quick.job_id, "nope"])


async def test_site_custom_attributes_are_merged_under_the_callers(
    start_endpoint: StartEndpoint,
    fabric: orbit_mq.Fabric,
    name: str,
    settings: orbit_mq.Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ORBIT_MQ_PSIJ_LOCAL_CUSTOM_ATTRIBUTES", '{"site.a": "1", "site.b": 2}')
    await start_endpoint(plugins=[PsiJ])
    attributes = {"custom_attributes": {"site.b": "mine"}}
    params = {"spec": spec("/bin/true", attributes=attributes)}
    job = await fabric.call(name, "psij", "submit_job", params)
    root = settings.home / "endpoints" / name / "jobs" / job["job_id"]
    stored = json.loads((root / "spec.json").read_text())
    assert stored["attributes"]["custom_attributes"] == {"site.a": "1", "site.b": "mine"}


async def test_endpoint_killed_and_restarted_ends_every_job_once(
    endpoint_process: Callable[..., Any],
    fabric: orbit_mq.Fabric,
    name: str,
) -> None:
    async with fabric.subscribe(f"{name}.psij.job_status") as events:
        watcher = Watcher(events)
        first = endpoint_process("--plugins", "psij")
        await wait_online(fabric, name)
        psij = await fabric.endpoint(name).plugin("psij")
        scripts = ["sleep 2", "sleep 2; exit 3", "exit 0"]
        jobs = await submit_many(psij, specs=[spec("/bin/sh", "-c", s) for s in scripts])
        ids = [job.job_id for job in jobs]
        await watcher.until(lambda: all("ACTIVE" in watcher.states(i) for i in ids[:2]))
        first.kill()  # SIGKILL: no chance to clean up
        first.wait(timeout=10)
        endpoint_process("--plugins", "psij")
        await wait_online(fabric, name)
        await watcher.until_ended(*ids, timeout=20)
        watcher.close()
    ends = []
    for job_id in ids:
        # The outbox may publish an event again after a crash; the seq tells repeats apart.
        unique = {event["seq"]: event for event in watcher.status[job_id]}
        assert len(unique) == len({(e["seq"], e["state"]) for e in watcher.status[job_id]})
        checked_states([unique[seq] for seq in sorted(unique)])
        ends.append(unique[max(unique)])
    assert [(end["state"], end["exit_code"]) for end in ends] == [
        ("COMPLETED", 0),
        ("FAILED", 3),
        ("COMPLETED", 0),
    ]
    listed = await psij.list_jobs()
    assert {job.job_id for job in listed.jobs} == set(ids)
    assert all(job.state.final for job in listed.jobs)


async def test_running_jobs_are_reattached_after_a_graceful_restart(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str, watcher: Watcher
) -> None:
    endpoint = await start_endpoint(plugins=[PsiJ])
    psij = await fabric.endpoint(name).plugin("psij")
    scripts = ["sleep 1", "sleep 1; exit 4"]
    jobs = await submit_many(psij, specs=[spec("/bin/sh", "-c", s) for s in scripts])
    ids = [job.job_id for job in jobs]
    await watcher.until(lambda: all("ACTIVE" in watcher.states(i) for i in ids))
    await endpoint.stop()
    await start_endpoint(plugins=[PsiJ])
    await watcher.until_ended(*ids)
    ends = []
    for job_id in ids:
        checked_states(watcher.status[job_id])
        ends.append((watcher.status[job_id][-1]["state"], watcher.status[job_id][-1]["exit_code"]))
    assert ends == [("COMPLETED", 0), ("FAILED", 4)]
    assert (await psij.health()).sessions == 1  # the session survived the restart too


async def test_reattached_jobs_cancel_and_later_jobs_still_end(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str, watcher: Watcher
) -> None:
    """Cancelling re-attached local jobs, most of them already gone by the time the cancel
    comes (each may or may not be noticed first: several make the race likely), leaves the
    executor noticing the end of jobs submitted afterwards."""
    endpoint = await start_endpoint(plugins=[PsiJ])
    psij = await fabric.endpoint(name).plugin("psij")
    jobs = await submit_many(psij, specs=[spec("/bin/sleep", "60") for _ in range(6)])
    ids = [job.job_id for job in jobs]
    await watcher.until(lambda: all("ACTIVE" in watcher.states(i) for i in ids))
    await endpoint.stop()
    await start_endpoint(plugins=[PsiJ])
    roots = [psutil.Process(int((await job.status()).native_id or 0)) for job in jobs[1:]]
    trees = [process for root in roots for process in [*root.children(recursive=True), root]]
    for process in trees:  # their processes end just before the cancels
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    await asyncio.gather(*(psij.cancel_job(job_id) for job_id in ids))
    await watcher.until_ended(*ids)
    assert watcher.status[ids[0]][-1]["state"] == "CANCELED"
    # CANCELED, or FAILED where the executor noticed the kill before the cancel came
    assert {watcher.status[i][-1]["state"] for i in ids[1:]} <= {"CANCELED", "FAILED"}
    later = await psij.submit_job(spec("/bin/echo", "after"))
    await watcher.until_ended(later.job_id)
    assert watcher.status[later.job_id][-1]["state"] == "COMPLETED"


async def waiting_requests(fabric: orbit_mq.Fabric, name: str) -> int:
    channel = await fabric.connection.channel()
    try:
        queue = await channel.declare_queue(request_queue(name, "psij"), passive=True)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return 0  # not declared yet (the refusal closed the channel)
    await channel.close()
    return queue.declaration_result.message_count or 0


async def test_job_sent_while_the_endpoint_is_down_runs_when_it_starts(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str, watcher: Watcher
) -> None:
    params = {"spec": spec("/bin/echo", "later")}
    call = asyncio.create_task(
        fabric.call(name, "psij", "submit_job", params, wait=True, timeout=30)
    )
    async with asyncio.timeout(10):  # until the request waits in the endpoint's queue
        while not call.done():
            if await waiting_requests(fabric, name):
                break
            await asyncio.sleep(0.05)  # the broker offers no notice of a queued message
    await start_endpoint(plugins=[PsiJ])
    job = await call
    await watcher.until_ended(job["job_id"])
    assert watcher.status[job["job_id"]][-1]["stdout_tail"] == "later\n"
