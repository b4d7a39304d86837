"""`orbit-mq demo`: a guided tour, as a list of steps run against a real endpoint.

The tour starts an endpoint process on this host, finds it through discovery, calls its
sysinfo plugin through the SDK, runs a job through its psij plugin (the local executor) while
streaming the job's output and state events, lists the jobs, stages a file, runs a handful of
tasks and stops the endpoint again.
A new step is a function taking the `Tour` and an entry in `STEPS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from orbit_mq.cli.common import UrlOption, guarded, optional_endpoint, run_async, settings_for
from orbit_mq.cli.jobs_output import jobs_table
from orbit_mq.cli.output import endpoints_table
from orbit_mq.cli.sysinfo_cmd import fetch_report, render_report
from orbit_mq.client import Fabric
from orbit_mq.config import Settings
from orbit_mq.contracts import PsiJ, Staging, Tasks
from orbit_mq.contracts.psij import Job, JobSpec
from orbit_mq.contracts.tasks import TaskSpec, TaskState
from orbit_mq.errors import OrbitError
from orbit_mq.staging import get_file, put_file
from orbit_mq.tasks import as_completed
from orbit_mq.tasks import result as task_result
from orbit_mq.tasks import submit as submit_tasks
from orbit_mq.waiting import wait_within

ONLINE_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
JOB_TIMEOUT = 60.0
DEMO_PLUGINS = ("sysinfo", "psij", "staging", "tasks")
DEMO_FILE_SIZE = 4 * 1024 * 1024  # bytes staged to the endpoint and back
DEMO_JOB = ["/bin/sh", "-c", "for i in 1 2 3; do echo line $i; sleep 0.2; done"]


def default_name() -> str:
    short = socket.gethostname().split(".")[0]
    return "demo-" + (re.sub(r"[^A-Za-z0-9_-]", "-", short)[:58] or "host")


@dataclass
class Tour:
    """What the steps share."""

    name: str
    settings: Settings
    fabric: Fabric
    console: Console
    log: IO[str]
    process: asyncio.subprocess.Process | None = None

    def show_log(self, lines: int = 20) -> None:
        """The end of the endpoint's log, on stderr."""
        self.log.flush()
        text = Path(self.log.name).read_text(errors="replace").splitlines()
        Console(stderr=True, highlight=False).print("\n".join(text[-lines:]), markup=False)


async def start_endpoint(tour: Tour) -> None:
    """Start an endpoint serving sysinfo, psij and staging as a separate process."""
    online = [info for info in await tour.fabric.endpoints() if info.endpoint == tour.name]
    if online:
        info = online[0]
        raise OrbitError(
            f"an endpoint named {tour.name!r} is already online (pid {info.pid} on {info.host}); "
            "stop it or pass --name"
        )
    command = [sys.executable, "-P", "-m", "orbit_mq.cli", "endpoint", "start"]
    command += ["--name", tour.name, "--plugins", ",".join(DEMO_PLUGINS)]
    env = {**os.environ, "ORBIT_MQ_URL": tour.settings.url}  # not on the command line: ps shows it
    tour.process = await asyncio.create_subprocess_exec(
        *command, stdin=asyncio.subprocess.DEVNULL, stdout=tour.log, stderr=tour.log, env=env
    )
    plugins = ",".join(DEMO_PLUGINS)
    tour.console.print(f"  [dim]$ orbit-mq endpoint start --name {tour.name} --plugins {plugins}")
    tour.console.print(f"  [dim]pid {tour.process.pid} (its log is shown if something fails)")


async def wait_online(tour: Tour) -> None:
    """Wait until the endpoint answers discovery."""
    assert tour.process is not None
    deadline = time.monotonic() + ONLINE_TIMEOUT
    while time.monotonic() < deadline:
        infos = await tour.fabric.endpoints(window=0.3)
        if any(i.endpoint == tour.name and i.pid == tour.process.pid for i in infos):
            return
        if tour.process.returncode is not None:
            tour.show_log()
            raise OrbitError(f"the endpoint exited with {tour.process.returncode} (log above)")
    raise OrbitError(f"the endpoint was not online after {ONLINE_TIMEOUT:.0f} s")


async def list_endpoints(tour: Tour) -> None:
    """List the endpoints online (orbit-mq endpoints)."""
    tour.console.print(endpoints_table(await tour.fabric.endpoints()))


async def ask_sysinfo(tour: Tour) -> None:
    """Call sysinfo.homedir, sysinfo.host_role and sysinfo.metrics through the SDK."""
    for line in (
        "async with orbit_mq.connect() as fabric:",
        f"    sysinfo = await fabric.endpoint({tour.name!r}).plugin(SysInfo)",
        "    home, role, metrics = await sysinfo.homedir(), ...",
    ):
        tour.console.print(f"  [dim]{line}", overflow="ellipsis", no_wrap=True)
    tour.console.print(render_report(await fetch_report(tour.fabric, tour.name)))


async def _show_states(tour: Tour, job: Job) -> None:
    async for transition in job.watch():
        tour.console.print(f"  [dim]event[/] seq {transition.seq} {transition.state}")


async def _show_output(tour: Tour, job: Job) -> None:
    async for chunk in job.output(follow=True):
        for line in chunk.text.splitlines():
            tour.console.print(f"  [dim]{chunk.stream}[/] {escape(line)}")


async def run_job(tour: Tour) -> None:
    """Submit a job on the local executor; stream its output and its state events."""
    for line in (
        f"psij = await fabric.endpoint({tour.name!r}).plugin(PsiJ)",
        "job = await psij.submit_job(spec=JobSpec(executable='/bin/sh', ...))",
        "async for status in job.watch(): ...",
        "async for chunk in job.output(follow=True): ...",
    ):
        tour.console.print(f"  [dim]{line}", overflow="ellipsis", no_wrap=True)
    psij = await tour.fabric.endpoint(tour.name).plugin(PsiJ, session=False)
    spec = JobSpec(executable=DEMO_JOB[0], arguments=DEMO_JOB[1:], name="demo")
    job = await psij.submit_job(spec=spec, executor="local")
    tour.console.print(f"  [dim]job {job.job_id} runs")
    tour.console.print(f"  [dim]$ {escape(shlex.join(DEMO_JOB))}")
    async with asyncio.timeout(JOB_TIMEOUT):
        await asyncio.gather(_show_states(tour, job), _show_output(tour, job))


async def list_jobs(tour: Tour) -> None:
    """List the endpoint's jobs (orbit-mq jobs)."""
    psij = await tour.fabric.endpoint(tour.name).plugin(PsiJ, session=False)
    listing = await psij.list_jobs(limit=5)
    tour.console.print(jobs_table(listing, tour.name))


async def stage_file(tour: Tour) -> None:
    """Put a file on the endpoint and get it back (SHA-256 checked both ways), then remove it."""
    for line in (
        f"staging = await fabric.endpoint({tour.name!r}).plugin(Staging)",
        "await orbit_mq.put_file(staging, local, remote); await orbit_mq.get_file(...)",
    ):
        tour.console.print(f"  [dim]{line}", overflow="ellipsis", no_wrap=True)
    staging = await tour.fabric.endpoint(tour.name).plugin(Staging, session=False)
    with tempfile.TemporaryDirectory(prefix="orbit-mq-demo-") as scratch:
        local, back = Path(scratch) / "demo.bin", Path(scratch) / "back.bin"
        local.write_bytes(os.urandom(DEMO_FILE_SIZE))
        remote = f"/tmp/{tour.name}-demo.bin"
        sent = await put_file(staging, local, remote, overwrite=True)
        tour.console.print(f"  [dim]put[/] {sent.size} bytes → {sent.remote}")
        got = await get_file(staging, remote, back, overwrite=True)
        tour.console.print(f"  [dim]get[/] {got.size} bytes ← {got.remote}")
        await staging.remove(path=remote)
    match = "match" if sent.sha256 == got.sha256 else "DIFFER"
    tour.console.print(f"  sha256 {sent.sha256[:16]}…: checksums {match}")
    if sent.sha256 != got.sha256:
        raise OrbitError("the file came back different")


async def run_tasks(tour: Tour) -> None:
    """Run a handful of tasks through its tasks plugin: executables and Python functions."""
    for line in (
        f"tasks = await fabric.endpoint({tour.name!r}).plugin(Tasks)",
        "uids = await orbit_mq.tasks.submit(tasks, [TaskSpec(function='math:factorial', ...)])",
        "async for status in as_completed(tasks, uids): ...",
    ):
        tour.console.print(f"  [dim]{line}", overflow="ellipsis", no_wrap=True)
    tasks = await tour.fabric.endpoint(tour.name).plugin(Tasks, session=False)
    specs = [TaskSpec(function="math:factorial", args=[n]) for n in range(1, 6)]
    specs += [TaskSpec(executable="/bin/echo", arguments=["hello from a task"])]
    uids = await submit_tasks(tasks, specs)
    async with asyncio.timeout(JOB_TIMEOUT):
        ended = {status.uid: status async for status in as_completed(tasks, uids)}
    for uid, spec in zip(uids, specs, strict=True):
        status = ended[uid]
        what = spec.executable or f"{spec.function}{tuple(spec.args)}"
        outcome = status.stdout.strip() if spec.executable else await task_result(tasks, status)
        tour.console.print(f"  [dim]{uid}[/] {status.state} {escape(str(what))} → {outcome}")
    if any(status.state is not TaskState.DONE for status in ended.values()):
        raise OrbitError("a demo task did not end DONE")


async def stop_endpoint(tour: Tour) -> None:
    """Stop the endpoint with SIGTERM and wait for it to say goodbye."""
    process, tour.process = tour.process, None
    if process is None or process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        code = await wait_within(process.wait(), STOP_TIMEOUT)
    except TimeoutError:
        process.kill()
        await wait_within(process.wait(), 5)
        raise OrbitError(
            f"the endpoint did not stop within {STOP_TIMEOUT:.0f} s; killed it"
        ) from None
    if code != 0:
        tour.show_log()
        raise OrbitError(f"the endpoint exited with {code} (log above)")


Step = tuple[str, Callable[[Tour], Awaitable[None]]]

STEPS: list[Step] = [
    ("Starting an endpoint", start_endpoint),
    ("Waiting for it to come online", wait_online),
    ("Discovering endpoints", list_endpoints),
    ("Asking its sysinfo plugin about the host", ask_sysinfo),
    ("Running a job through its psij plugin", run_job),
    ("Listing its jobs", list_jobs),
    ("Staging a file to it and back", stage_file),
    ("Running tasks through its tasks plugin", run_tasks),
    ("Stopping the endpoint (SIGTERM)", stop_endpoint),
]


async def run_step(
    tour: Tour, number: int, title: str, step: Callable[[Tour], Awaitable[None]]
) -> None:
    console = tour.console
    console.print(f"\n[bold]{number}/{len(STEPS)} {title}[/]")
    began = time.monotonic()
    with console.status(f"{title} …"):
        await step(tour)
    console.print(f"  [green]✓[/] [dim]{time.monotonic() - began:.1f} s")


async def run_tour(settings: Settings, name: str, console: Console) -> None:
    """Run every step in order; whatever happens, the endpoint is stopped at the end."""
    with tempfile.NamedTemporaryFile("w+", prefix="orbit-mq-demo-", suffix=".log") as log:
        async with Fabric(settings) as fabric:
            tour = Tour(name, settings, fabric, console, log)
            try:
                for number, (title, step) in enumerate(STEPS, 1):
                    await run_step(tour, number, title, step)
            finally:
                with contextlib.suppress(OrbitError):
                    await stop_endpoint(tour)
    console.print("\n[bold green]Demo complete.[/] More: orbit-mq --help")


@guarded
def demo(
    ctx: typer.Context,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            metavar="NAME",
            help="Name of the demo endpoint.",
            show_default="demo-<short hostname>",
            callback=optional_endpoint,
        ),
    ] = None,
    url: UrlOption = None,
) -> None:
    """A guided tour: start an endpoint here, discover it, call it, run a job, stop it."""
    settings = settings_for(ctx, url=url)
    run_async(run_tour(settings, name or default_name(), Console(highlight=False)))
