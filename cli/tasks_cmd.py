"""`orbit-mq tasks submit|wait|list|status|cancel|backends`: many small tasks through an
endpoint's tasks plugin."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from orbit_mq.cli.common import (
    EndpointArg,
    JsonFlag,
    TimeoutOption,
    UrlOption,
    guarded,
    on_plugin,
    run_async,
    settings_for,
)
from orbit_mq.cli.output import console, print_json
from orbit_mq.client import Fabric
from orbit_mq.config import Settings
from orbit_mq.contracts.tasks import TERMINAL, Tasks, TaskSpec, TaskState, TaskStatus
from orbit_mq.errors import CallTimeout, ConfigError
from orbit_mq.tasks import as_completed, submit
from orbit_mq.waiting import wait_within

tasks_app = typer.Typer(
    name="tasks",
    help="Many small tasks (executables and Python functions) through an endpoint's tasks "
    "plugin: journaled, thousands per second.",
    no_args_is_help=True,
)
UidsArg = Annotated[
    list[str] | None, typer.Argument(metavar="UID...", help="Task uids.", show_default=False)
]
AllFlag = Annotated[bool, typer.Option("--all", help="All of your tasks that have not ended.")]
QuietFlag = Annotated[bool, typer.Option("--no-progress", help="Do not draw a progress bar.")]
RECHECK = 1.0  # s: `wait --all` reads the counts at least this often


async def _proxy(fabric: Fabric, endpoint: str) -> Tasks:
    return await fabric.endpoint(endpoint).plugin(Tasks, session=False)


def _check_uids_or_all(uids: list[str] | None, all_open: bool) -> None:
    if bool(uids) == all_open:
        raise ConfigError("give task uids or --all")


# -- submit ------------------------------------------------------------------------------------


def _specs(
    command: list[str], function: str | None, args: list[str], count: int, options: dict[str, Any]
) -> Iterator[TaskSpec]:
    if function is None and not command:
        raise ConfigError("give the command after --, or --function module:name")
    if function is not None and command:
        raise ConfigError("give either a command after -- or --function, not both")
    for _ in range(count):
        if function is not None:
            values = [_json_or_text(arg) for arg in args]
            yield TaskSpec(function=function, args=values, **options)
        else:
            yield TaskSpec(executable=command[0], arguments=command[1:], **options)


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


@tasks_app.command("submit")
@guarded
def submit_command(
    ctx: typer.Context,
    endpoint: EndpointArg,
    command: Annotated[
        list[str] | None,
        typer.Argument(metavar="-- COMMAND [ARG...]", help="The program to run, after --."),
    ] = None,
    function: Annotated[
        str | None, typer.Option("--function", metavar="MODULE:NAME", help="A Python function.")
    ] = None,
    args: Annotated[
        list[str] | None,
        typer.Option("--arg", metavar="VALUE", help="An argument of --function (JSON or text)."),
    ] = None,
    count: Annotated[int, typer.Option("--count", min=1, help="Submit this many copies.")] = 1,
    task_timeout: Annotated[
        float | None, typer.Option("--task-timeout", metavar="SECONDS", help="Per task.")
    ] = None,
    retries: Annotated[int, typer.Option("--retries", min=0, help="Attempts after a failure.")] = 0,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for them to end.")] = False,
    no_progress: QuietFlag = False,
    as_json: JsonFlag = False,
    timeout: TimeoutOption = None,
    url: UrlOption = None,
) -> None:
    """Submit tasks: `tasks submit ep1 --count 1000 -- /bin/true`, or `--function math:sqrt
    --arg 2`. Prints the uids (one per line); with --wait, exits 1 unless all end DONE."""
    options: dict[str, Any] = {"retries": retries}
    if task_timeout is not None:
        options["timeout"] = task_timeout
    specs = _specs(command or [], function, args or [], count, options)
    settings = settings_for(ctx, url=url, timeout=timeout)

    async def main() -> tuple[list[str], list[TaskStatus]]:
        async with Fabric(settings) as fabric:
            tasks = await _proxy(fabric, endpoint)
            uids = await submit(tasks, specs)
            if not wait:
                return uids, []
            return uids, await _wait_uids(tasks, uids, not no_progress and not as_json)

    uids, ended = run_async(main())
    if as_json:
        print_json({"uids": uids, "ended": [s.model_dump(mode="json") for s in ended]})
    elif not wait:
        for uid in uids:
            typer.echo(uid)
    else:
        _summary(ended)
    if wait and any(status.state is not TaskState.DONE for status in ended):
        raise typer.Exit(1)


# -- wait --------------------------------------------------------------------------------------


def _bar(enabled: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[states]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not enabled,
    )


def _states(counts: dict[TaskState, int]) -> str:
    return " ".join(f"{state.value} {counts[state]}" for state in TaskState if counts.get(state))


async def _wait_uids(tasks: Tasks, uids: list[str], show: bool) -> list[TaskStatus]:
    ended: list[TaskStatus] = []
    counts = dict.fromkeys(TaskState, 0)
    with _bar(show) as bar:
        line = bar.add_task("tasks", total=len(uids), states="")
        async for status in as_completed(tasks, uids):
            ended.append(status)
            counts[status.state] += 1
            bar.update(line, completed=len(ended), states=_states(counts))
    return ended


async def _wait_all(
    settings: Settings, endpoint: str, show: bool, timeout: float | None
) -> dict[TaskState, int]:
    """Until none of the caller's tasks is open: counts re-read at each batch of events."""
    async with Fabric(settings) as fabric:
        tasks = await _proxy(fabric, endpoint)
        topic = f"{endpoint}.{Tasks.name}.task_status_batch"
        async with fabric.subscribe(topic) as events, asyncio.timeout(timeout):
            with _bar(show) as bar:
                line = bar.add_task("tasks", total=None, states="")
                while True:
                    counts = (await tasks.list_tasks(limit=0)).counts
                    total = sum(counts.values())
                    ended = sum(counts[state] for state in TERMINAL)
                    bar.update(line, total=total, completed=ended, states=_states(counts))
                    if ended == total:
                        return counts
                    with contextlib.suppress(TimeoutError):
                        await wait_within(anext(events), RECHECK)


@tasks_app.command("wait")
@guarded
def wait_command(
    ctx: typer.Context,
    endpoint: EndpointArg,
    uids: UidsArg = None,
    all_open: AllFlag = False,
    wait_timeout: Annotated[
        float | None, typer.Option("--wait-timeout", metavar="SECONDS", help="Give up after.")
    ] = None,
    no_progress: QuietFlag = False,
    as_json: JsonFlag = False,
    timeout: TimeoutOption = None,
    url: UrlOption = None,
) -> None:
    """Wait for tasks to end, with a progress bar; exits 1 unless all ended DONE."""
    _check_uids_or_all(uids, all_open)
    settings = settings_for(ctx, url=url, timeout=timeout)
    show = not no_progress and not as_json
    try:
        if all_open:
            counts = run_async(_wait_all(settings, endpoint, show, wait_timeout))
        else:
            counts = _count(
                run_async(_wait_list(settings, endpoint, uids or [], show, wait_timeout))
            )
    except TimeoutError:
        raise CallTimeout(f"tasks did not end within {wait_timeout} s") from None
    if as_json:
        print_json({state.value: n for state, n in counts.items()})
    else:
        console.print(f"ended: {_states(counts) or 'no tasks'}")
    if any(n for state, n in counts.items() if state is not TaskState.DONE):
        raise typer.Exit(1)


async def _wait_list(
    settings: Settings, endpoint: str, uids: list[str], show: bool, timeout: float | None
) -> list[TaskStatus]:
    async with Fabric(settings) as fabric, asyncio.timeout(timeout):
        return await _wait_uids(await _proxy(fabric, endpoint), uids, show)


def _count(statuses: list[TaskStatus]) -> dict[TaskState, int]:
    counts = dict.fromkeys(TaskState, 0)
    for status in statuses:
        counts[status.state] += 1
    return counts


def _summary(ended: list[TaskStatus]) -> None:
    console.print(f"ended: {_states(_count(ended))}")
    for status in [s for s in ended if s.state is not TaskState.DONE][:10]:
        console.print(f"  {status.uid} {status.state.value}: {status.error or ''}", soft_wrap=True)


# -- list, status, cancel, backends ------------------------------------------------------------


@tasks_app.command("list")
@guarded
def list_command(
    ctx: typer.Context,
    endpoint: EndpointArg,
    state: Annotated[TaskState | None, typer.Option("--state", help="Only these.")] = None,
    offset: Annotated[int, typer.Option("--offset", min=0)] = 0,
    limit: Annotated[int, typer.Option("--limit", min=0, max=1000)] = 50,
    as_json: JsonFlag = False,
    timeout: TimeoutOption = None,
    url: UrlOption = None,
) -> None:
    """Your tasks on the endpoint, in the order they were submitted, with counts by state."""
    settings = settings_for(ctx, url=url, timeout=timeout)

    page = run_async(
        on_plugin(
            settings,
            endpoint,
            Tasks,
            lambda tasks: tasks.list_tasks(state=state, offset=offset, limit=limit),
        )
    )
    if as_json:
        print_json(page.model_dump(mode="json"))
        return
    table = Table("UID", "STATE", "EXIT", "ERROR", box=None)
    for status in page.tasks:
        exit_code = "" if status.exit_code is None else str(status.exit_code)
        table.add_row(status.uid, status.state.value, exit_code, status.error or "")
    console.print(table)
    console.print(f"{page.total} tasks; {_states(page.counts)}")


@tasks_app.command("status")
@guarded
def status_command(
    ctx: typer.Context,
    endpoint: EndpointArg,
    uid: Annotated[str, typer.Argument(metavar="UID", show_default=False)],
    timeout: TimeoutOption = None,
    url: UrlOption = None,
) -> None:
    """One task in full (JSON)."""
    settings = settings_for(ctx, url=url, timeout=timeout)

    task = run_async(on_plugin(settings, endpoint, Tasks, lambda tasks: tasks.get_task(uid=uid)))
    print_json(task.model_dump(mode="json"))


@tasks_app.command("cancel")
@guarded
def cancel_command(
    ctx: typer.Context,
    endpoint: EndpointArg,
    uids: UidsArg = None,
    all_open: AllFlag = False,
    timeout: TimeoutOption = None,
    url: UrlOption = None,
) -> None:
    """Cancel tasks (or --all of yours that have not ended)."""
    _check_uids_or_all(uids, all_open)
    settings = settings_for(ctx, url=url, timeout=timeout)

    async def cancel(tasks: Tasks) -> int:
        if all_open:  # all of the user's (the proxy has no session to narrow it)
            return (await tasks.cancel_all_tasks()).canceled
        ended = [await tasks.cancel_task(uid=uid) for uid in uids or []]
        return sum(task.state is TaskState.CANCELED for task in ended)

    console.print(f"canceled: {run_async(on_plugin(settings, endpoint, Tasks, cancel))}")


@tasks_app.command("backends")
@guarded
def backends_command(
    ctx: typer.Context,
    endpoint: EndpointArg,
    as_json: JsonFlag = False,
    timeout: TimeoutOption = None,
    url: UrlOption = None,
) -> None:
    """The execution backends the endpoint knows, and which can run tasks there."""
    settings = settings_for(ctx, url=url, timeout=timeout)

    infos = run_async(on_plugin(settings, endpoint, Tasks, lambda tasks: tasks.backends()))
    if as_json:
        print_json([info.model_dump(mode="json") for info in infos])
        return
    table = Table("BACKEND", "AVAILABLE", "NOTE", box=None)
    for info in infos:
        note = "default" if info.default else info.reason or ""
        table.add_row(info.name, "yes" if info.available else "no", note)
    console.print(table)
