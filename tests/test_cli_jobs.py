"""The job commands (submit, status, jobs, cancel, logs) and the demo's job step, as
subprocesses against the real broker and an endpoint process serving psij (local executor)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_online
from test_cli import Result, assert_one_error_line, finish, run_cli, start_watch

import orbit_mq
from orbit_mq.cli.jobs_cmd import SpecFlags, build_spec
from orbit_mq.config import Settings

EndpointProcess = Callable[..., subprocess.Popen[str]]

DEMO_JOB = ["/bin/sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.2; done"]
STATES = ["NEW", "QUEUED", "ACTIVE", "COMPLETED"]


@pytest.fixture
async def psij_endpoint(
    name: str, fabric: orbit_mq.Fabric, endpoint_process: EndpointProcess
) -> str:
    """This test's endpoint, serving psij, online."""
    endpoint_process("--plugins", "psij")
    await wait_online(fabric, name)
    return name


def json_lines(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


async def submit(settings: Settings, endpoint: str, *args: str, command: list[str]) -> Result:
    return await run_cli(settings, "submit", endpoint, *args, "--", *command)


# -- submit, logs, status, jobs ----------------------------------------------------------------


async def test_submit_wait_then_logs_status_and_jobs(
    settings: Settings, psij_endpoint: str
) -> None:
    done = await submit(settings, psij_endpoint, "--wait", command=["/bin/echo", "hello"])

    assert done.code == 0, done
    job_id, summary = done.stdout.splitlines()
    assert summary.startswith(f"job {job_id} COMPLETED"), done
    logs, status, listing = await asyncio.gather(
        run_cli(settings, "logs", psij_endpoint, job_id),
        run_cli(settings, "status", psij_endpoint, job_id, "--json"),
        run_cli(settings, "jobs", psij_endpoint, "--json"),
    )
    assert (logs.code, logs.stdout) == (0, "hello\n"), logs
    found = status.json()
    assert isinstance(found, dict)
    assert (found["state"], found["exit_code"], found["executable"]) == (
        "COMPLETED",
        0,
        "/bin/echo",
    )
    assert [item["seq"] for item in found["history"]] == list(range(1, len(found["history"]) + 1))
    assert [item["state"] for item in found["history"]] == STATES
    assert "stdout" not in found  # the output is what `logs` is for
    jobs = listing.json()
    assert isinstance(jobs, dict)
    assert [(job["job_id"], job["state"]) for job in jobs["jobs"]] == [(job_id, "COMPLETED")]


async def test_logs_pages_through_large_output(settings: Settings, psij_endpoint: str) -> None:
    size = 2_500_000  # more than one page of get_job_status output (1 MiB)
    big = ["/bin/sh", "-c", f"head -c {size} /dev/zero | tr '\\0' x"]
    done = await submit(settings, psij_endpoint, "--wait", command=big)
    job_id = done.stdout.splitlines()[0]

    logs = await run_cli(settings, "logs", psij_endpoint, job_id)

    assert logs.code == 0, logs.stderr
    assert logs.stdout == "x" * size


async def test_status_and_jobs_tables(settings: Settings, psij_endpoint: str) -> None:
    submitted = await submit(
        settings, psij_endpoint, "--wait", "--name", "tabled", command=["/bin/true"]
    )
    job_id = submitted.stdout.splitlines()[0]

    wide = {"COLUMNS": "200"}
    status, table = await asyncio.gather(
        run_cli(settings, "status", psij_endpoint, job_id, env=wide),
        run_cli(settings, "jobs", psij_endpoint, "--state", "completed", env=wide),
    )

    assert status.code == 0 and table.code == 0, (status, table)
    assert job_id in status.stdout and "history" in status.stdout
    assert all(state in status.stdout for state in STATES)
    assert job_id in table.stdout and "tabled" in table.stdout and "1 of 1 job(s)" in table.stdout


async def test_exit_status_follows_the_job(settings: Settings, psij_endpoint: str) -> None:
    failed, coded = await asyncio.gather(
        submit(settings, psij_endpoint, "--wait", command=["/bin/false"]),
        submit(settings, psij_endpoint, "--wait", command=["/bin/sh", "-c", "exit 7"]),
    )
    assert failed.code == 1 and "FAILED" in failed.stdout, failed
    assert coded.code == 7 and "exit code 7" in coded.stdout, coded


async def test_wait_json_prints_every_transition(settings: Settings, psij_endpoint: str) -> None:
    done = await submit(settings, psij_endpoint, "--wait", "--json", command=["/bin/true"])

    assert done.code == 0, done
    transitions = json_lines(done)
    assert [(t["seq"], t["state"]) for t in transitions] == list(enumerate(STATES, 1))
    assert len({t["job_id"] for t in transitions}) == 1


async def test_rm_removes_ended_jobs_only(settings: Settings, psij_endpoint: str) -> None:
    done = await submit(settings, psij_endpoint, "--wait", "--json", command=["/bin/true"])
    job_id = json_lines(done)[0]["job_id"]
    running = await submit(settings, psij_endpoint, command=["/bin/sleep", "30"])
    sleeper = running.stdout.split()[0]
    removed = await run_cli(settings, "rm", psij_endpoint, job_id)
    assert removed.code == 0 and f"removed {job_id} (COMPLETED)" in removed.stdout, removed
    gone = await run_cli(settings, "status", psij_endpoint, job_id)
    assert_one_error_line(gone, 1, job_id)
    refused = await run_cli(settings, "rm", psij_endpoint, sleeper)
    assert_one_error_line(refused, 1, "cancel it")
    await run_cli(settings, "cancel", psij_endpoint, sleeper, "--wait")


async def test_jobs_older_than_rm_removes_only_ended_ones(
    settings: Settings, psij_endpoint: str
) -> None:
    ended = []
    for command in ("/bin/true", "/bin/false"):
        done = await submit(settings, psij_endpoint, "--wait", "--json", command=[command])
        ended.append(json_lines(done)[0]["job_id"])
    sleeping = await submit(settings, psij_endpoint, command=["/bin/sleep", "30"])
    running = sleeping.stdout.split()[0]
    listed = await run_cli(settings, "jobs", psij_endpoint, "--older-than", "0s", "--json")
    assert {job["job_id"] for job in json.loads(listed.stdout)["jobs"]} == set(ended), listed
    refused = await run_cli(settings, "jobs", psij_endpoint, "--rm")
    assert_one_error_line(refused, 2, "--older-than")
    removed = await run_cli(settings, "jobs", psij_endpoint, "--older-than", "0s", "--rm")
    assert removed.code == 0 and "removed 2 jobs" in removed.stdout, removed
    left = await run_cli(settings, "jobs", psij_endpoint, "--json")
    assert [job["job_id"] for job in json.loads(left.stdout)["jobs"]] == [running], left
    await run_cli(settings, "cancel", psij_endpoint, running, "--wait")


async def test_follow_streams_output_in_order(settings: Settings, psij_endpoint: str) -> None:
    streamed, mixed = await asyncio.gather(
        submit(settings, psij_endpoint, "--follow", command=DEMO_JOB),
        submit(
            settings,
            psij_endpoint,
            "-f",
            command=["/bin/sh", "-c", "echo out; echo err >&2; exit 3"],
        ),
    )

    assert (streamed.code, streamed.stdout) == (0, "line 1\nline 2\nline 3\n"), streamed
    assert "COMPLETED" in streamed.stderr
    assert (mixed.code, mixed.stdout) == (3, "out\n"), mixed
    assert "err\n" in mixed.stderr and "FAILED" in mixed.stderr


async def test_follow_json_prints_chunks_then_the_job(
    settings: Settings, psij_endpoint: str
) -> None:
    result = await submit(settings, psij_endpoint, "--follow", "--json", command=DEMO_JOB)

    assert result.code == 0, result
    *chunks, final = json_lines(result)
    assert (
        "".join(c["text"] for c in chunks if c["stream"] == "stdout") == "line 1\nline 2\nline 3\n"
    )
    assert (final["state"], final["exit_code"]) == ("COMPLETED", 0)


async def test_cancel_a_running_job(settings: Settings, psij_endpoint: str) -> None:
    submitted = await submit(settings, psij_endpoint, "--json", command=["/bin/sleep", "30"])
    job = submitted.json()
    assert isinstance(job, dict), submitted

    cancelled = await run_cli(settings, "cancel", psij_endpoint, job["job_id"], "--wait", "--json")

    assert cancelled.code == 0, cancelled
    info = cancelled.json()
    assert isinstance(info, dict)
    assert (info["job_id"], info["state"]) == (job["job_id"], "CANCELED")
    again = await run_cli(settings, "cancel", psij_endpoint, job["job_id"])
    assert again.code == 0 and "CANCELED" in again.stdout, again


async def test_watch_shows_every_seq_without_gaps(settings: Settings, psij_endpoint: str) -> None:
    watch = await start_watch(
        settings, f"{psij_endpoint}.psij.job_status", "--json", "--count", "8", "--timeout", "60"
    )
    await asyncio.gather(
        *(submit(settings, psij_endpoint, command=["/bin/echo", str(i)]) for i in range(2))
    )
    result = await finish(watch, timeout=70)

    assert result.code == 0, result
    by_job: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for event in json_lines(result):
        by_job[event["data"]["job_id"]].append((event["data"]["seq"], event["data"]["state"]))
    assert len(by_job) == 2
    for seen in by_job.values():
        assert seen == list(enumerate(STATES, 1))


# -- errors ------------------------------------------------------------------------------------


async def test_bad_spec_is_one_line_naming_the_field(
    settings: Settings, psij_endpoint: str, tmp_path: Path
) -> None:
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps({"executable": "/bin/true", "colour": "blue"}))
    resources = tmp_path / "resources.json"
    resources.write_text(
        json.dumps(
            {
                "executable": "/bin/true",
                "resources": {"node_count": 2, "processes_per_node": 2, "process_count": 3},
            }
        )
    )

    unknown, inconsistent, no_job = await asyncio.gather(
        run_cli(settings, "submit", psij_endpoint, "--spec", str(spec)),
        run_cli(settings, "submit", psij_endpoint, "--spec", str(resources)),
        run_cli(settings, "status", psij_endpoint, "nosuchjob"),
    )

    assert_one_error_line(unknown, 2, "colour")  # found before anything was sent: usage
    assert_one_error_line(inconsistent, 2, "process_count")
    assert_one_error_line(no_job, 1, "nosuchjob")


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--spec", "/nonexistent/job.json"], ["--spec", "/nonexistent/job.json"]),
        (["--env", "NOEQUALS", "--", "/bin/true"], ["--env", "NOEQUALS"]),
        (["--attr", "=x", "--", "/bin/true"], ["--attr"]),
        ([], ["nothing to run"]),
    ],
)
async def test_bad_flags_fail_before_anything_is_sent(
    settings: Settings, name: str, args: list[str], fragments: list[str]
) -> None:
    result = await run_cli(settings, "submit", name, *args)  # no endpoint is needed
    assert_one_error_line(result, 2, *fragments)


async def test_job_commands_need_an_endpoint_serving_psij(settings: Settings, name: str) -> None:
    result = await run_cli(settings, "jobs", name)
    assert_one_error_line(result, 1, name)


# -- the spec the flags build ------------------------------------------------------------------


def test_flags_override_the_spec_file() -> None:
    base = {
        "executable": "/bin/old",
        "arguments": ["x"],
        "environment": {"A": "1"},
        "attributes": {"queue_name": "q0", "custom_attributes": {"slurm.qos": "low"}},
        "resources": {"__version": 1, "process_count": 4},
    }
    flags = SpecFlags(
        command=["/bin/new", "-v"],
        env=["B=2=3"],
        queue="debug",
        duration="90",
        nodes=2,
        attrs=["slurm.constraint=gpu"],
        name="n",
    )
    assert build_spec(base, flags) == {
        "executable": "/bin/new",
        "arguments": ["-v"],
        "name": "n",
        "environment": {"A": "1", "B": "2=3"},
        "attributes": {
            "queue_name": "debug",
            "duration": 90.0,
            "custom_attributes": {"slurm.qos": "low", "slurm.constraint": "gpu"},
        },
        "resources": {"__version": 1, "process_count": 4, "node_count": 2},
    }


def test_spec_file_alone_is_submitted_as_is() -> None:
    base = {"executable": "/bin/date", "attributes": {"duration": "600.0 s"}}
    assert build_spec(base, SpecFlags(command=[])) == base
    assert build_spec(base, SpecFlags(command=[], duration="1h"))["attributes"] == {
        "duration": "1h"
    }


# -- the demo ----------------------------------------------------------------------------------


async def test_demo_runs_a_job_and_shows_its_events(settings: Settings, name: str) -> None:
    result = await run_cli(settings, "demo", "--name", f"demo-{name}", timeout=120)

    assert result.code == 0, result
    out = result.stdout
    assert "Demo complete" in out
    lines = [line for line in out.splitlines() if "stdout" in line and "line " in line]
    assert [line.split()[-2:] for line in lines] == [["line", "1"], ["line", "2"], ["line", "3"]]
    events = [line.split()[-2:] for line in out.splitlines() if line.strip().startswith("event")]
    assert events == [[str(seq), state] for seq, state in enumerate(STATES, 1)]
