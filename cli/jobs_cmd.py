"""`orbit-mq submit|status|jobs|cancel|logs`: jobs through an endpoint's psij plugin."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer

from orbit_mq.cli import jobs_output as show
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
from orbit_mq.contracts.psij import Job, JobState, PsiJ
from orbit_mq.contracts.psij.models import parse_duration as read_duration
from orbit_mq.errors import ConfigError

JobArg = Annotated[
    str, typer.Argument(metavar="JOB", help="Job id, as submit printed it.", show_default=False)
]
Pairs = list[str] | None


# -- the job spec ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpecFlags:
    """What the submit flags say about the job; each given flag overrides the --spec file."""

    command: list[str]
    directory: str | None = None
    name: str | None = None
    env: Pairs = None
    queue: str | None = None
    account: str | None = None
    duration: str | None = None
    nodes: int | None = None
    attrs: Pairs = None


def load_spec(path: Path | None) -> dict[str, Any]:
    """The --spec file: our JobSpec JSON or PSI/J's own serialisation of a spec."""
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read --spec {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"--spec {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--spec {path} must hold a JSON object (a job spec)")
    return data


def parse_pairs(values: Pairs, option: str) -> dict[str, str]:
    """`["A=1", "B=x=y"]` → `{"A": "1", "B": "x=y"}`; values stay strings."""
    pairs: dict[str, str] = {}
    for pair in values or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"{option} {pair!r} is not KEY=VALUE")
        pairs[key] = value
    return pairs


def parse_duration(text: str) -> float | str:
    """Seconds as a number when `text` is one; else the text, for the plugin to read
    (`30m`, `2h`, `hh:mm[:ss]`)."""
    try:
        seconds = float(text)
    except ValueError:
        return text
    return seconds if math.isfinite(seconds) else text


def _merged(current: Any, update: dict[str, Any]) -> dict[str, Any]:
    return {**(current if isinstance(current, dict) else {}), **update}


def _given(**values: Any) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


def build_spec(base: dict[str, Any], flags: SpecFlags) -> dict[str, Any]:
    """The spec to submit: the --spec file, with every given flag over it."""
    spec = dict(base)
    if flags.command:
        spec["executable"], spec["arguments"] = flags.command[0], flags.command[1:]
    elif not spec.get("executable"):
        raise ConfigError("nothing to run: give -- EXECUTABLE [ARGS …] or --spec FILE")
    spec.update(_given(directory=flags.directory, name=flags.name))
    if flags.env:
        spec["environment"] = _merged(spec.get("environment"), parse_pairs(flags.env, "--env"))
    duration = None if flags.duration is None else parse_duration(flags.duration)
    attributes = _given(queue_name=flags.queue, account=flags.account, duration=duration)
    if flags.attrs:
        custom = _merged(spec.get("attributes"), {}).get("custom_attributes")
        attributes["custom_attributes"] = _merged(custom, parse_pairs(flags.attrs, "--attr"))
    if attributes:
        spec["attributes"] = _merged(spec.get("attributes"), attributes)
    if flags.nodes is not None:
        spec["resources"] = _merged(spec.get("resources"), {"node_count": flags.nodes})
    return spec


# -- the commands ------------------------------------------------------------------------------


def _option(*names: str, metavar: str, help: str, **extra: Any) -> Any:
    return typer.Option(*names, metavar=metavar, help=help, show_default=False, **extra)


@guarded
def submit(
    ctx: typer.Context,
    endpoint: EndpointArg,
    command: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="-- EXECUTABLE [ARGS]...",
            help="What to run, after --; replaces executable and arguments of --spec.",
            show_default=False,
        ),
    ] = None,
    executor: Annotated[
        str, typer.Option("--executor", "-e", metavar="NAME", help="PSI/J executor.")
    ] = "local",
    queue: Annotated[str | None, _option("--queue", "-q", metavar="Q", help="Queue.")] = None,
    account: Annotated[
        str | None, _option("--account", "-A", metavar="A", help="Account to charge.")
    ] = None,
    duration: Annotated[
        str | None,
        _option("--duration", metavar="S", help="Wall time: seconds, 30m, 2h or hh:mm[:ss]."),
    ] = None,
    nodes: Annotated[
        int | None, _option("--nodes", "-N", metavar="N", help="Node count.", min=1)
    ] = None,
    attrs: Annotated[
        Pairs,
        _option("--attr", metavar="K=V", help="Custom attribute (e.g. slurm.constraint=knl)."),
    ] = None,
    env: Annotated[Pairs, _option("--env", metavar="K=V", help="Environment variable.")] = None,
    directory: Annotated[
        str | None, _option("--dir", metavar="DIR", help="Working directory on the endpoint.")
    ] = None,
    name: Annotated[str | None, _option("--name", metavar="NAME", help="Job name.")] = None,
    spec_file: Annotated[
        Path | None,
        _option("--spec", metavar="FILE", help="JobSpec JSON (ours or PSI/J's); flags override."),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Show a live state line until the job ends.")
    ] = False,
    follow: Annotated[
        bool,
        typer.Option("--follow", "-f", help="Stream its output until it ends (implies --wait)."),
    ] = False,
    stream: Annotated[
        bool, typer.Option("--stream", help="Have the endpoint publish job_output events.")
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="JSON: the job; JSON lines with --wait or --follow."),
    ] = False,
    timeout: TimeoutOption = None,
    url: UrlOption = None,
) -> None:
    """Submit a job to ENDPOINT's psij plugin and print its id.

    Example: orbit-mq submit hpc1 -q debug --duration 1h --wait -- ./sim 100

    --wait shows a live state line, then prints the job id and final state.
    --follow writes the job's stdout to stdout and its stderr to stderr as
    they are written (its id and final state go to stderr).
    --json prints the job; with --wait each transition as a JSON line; with
    --follow each output chunk as a JSON line, then the final job.

    Exit status with --wait or --follow: 0 when the job COMPLETED, its exit
    code when it FAILED (1 if unknown), 1 when it was CANCELED.
    """
    flags = SpecFlags(command or [], directory, name, env, queue, account, duration, nodes, attrs)
    spec = build_spec(load_spec(spec_file), flags)
    mode = show.SubmitMode(executor, stream, wait, follow, as_json)
    settings = settings_for(ctx, url=url, timeout=timeout)
    code = run_async(
        on_plugin(settings, endpoint, PsiJ, partial(show.submit_job, spec=spec, mode=mode))
    )
    if code:
        raise typer.Exit(code)


@guarded
def status(
    ctx: typer.Context,
    endpoint: EndpointArg,
    job_id: JobArg,
    as_json: JsonFlag = False,
    timeout: TimeoutOption = None,
    url: UrlOption = None,
) -> None:
    """Show a job: state, exit code, native id, executor, times and state history.

    Its output is what `orbit-mq logs` prints.
    """
    settings = settings_for(ctx, url=url, timeout=timeout)
    found = run_async(
        on_plugin(settings, endpoint, PsiJ, lambda psij: psij.get_job_status(job_id=job_id))
    )
    if as_json:
        print_json(show.job_json(found))
    else:
        console.print(show.status_view(found))


@guarded
def jobs(
    ctx: typer.Context,
    endpoint: EndpointArg,
    state: Annotated[
        JobState | None,
        typer.Option("--state", "-s", help="Only jobs in this state.", case_sensitive=False),
    ] = None,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            metavar="AGE",
            help="Only jobs that ended more than AGE ago (90s, 30m, 12h, 7d).",
        ),
    ] = None,
    remove: Annotated[
        bool,
        typer.Option("--rm", help="Remove the jobs --older-than selects (directories and rows)."),
    ] = False,
    limit: Annotated[
        int, typer.Option("--limit", "-n", metavar="N", help="At most N jobs.", min=1)
    ] = 100,
    offset: Annotated[
        int, typer.Option("--offset", metavar="N", help="Skip N jobs (paging).", min=0)
    ] = 0,
    as_json: JsonFlag = False,
    timeout: TimeoutOption = None,
    url: UrlOption = None,
) -> None:
    """List ENDPOINT's jobs, newest first; with --older-than AGE --rm, remove old ended ones."""
    settings = settings_for(ctx, url=url, timeout=timeout)
    before = None if older_than is None else _ended_before(older_than)
    if remove:
        if before is None:
            raise ConfigError(
                "--rm removes the jobs --older-than selects: add --older-than AGE (e.g. 7d); "
                f"to remove given jobs: orbit-mq rm {endpoint} JOB..."
            )
        prune = partial(show.remove_ended, state=state, before=before, progress=not as_json)
        removed = run_async(on_plugin(settings, endpoint, PsiJ, prune))
        if as_json:
            print_json([show.job_json(job) for job in removed])
        else:
            console.print(f"removed {len(removed)} jobs that ended before {before:%Y-%m-%d %H:%M}")
        return
    listing = run_async(
        on_plugin(
            settings,
            endpoint,
            PsiJ,
            lambda psij: psij.list_jobs(
                state=state, offset=offset, limit=limit, ended_before=before
            ),
        )
    )
    if as_json:
        print_json(listing.model_dump(mode="json"))
    else:
        console.print(show.jobs_table(listing, endpoint))


def _ended_before(age: str) -> datetime:
    try:
        seconds = read_duration(age)
    except ValueError as exc:
        raise ConfigError(f"--older-than: {exc}") from None
    return datetime.now(UTC) - timedelta(seconds=seconds)


@guarded
def cancel(
    ctx: typer.Context,
    endpoint: EndpointArg,
    job_id: JobArg,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait (up to --timeout) until the job has ended.")
    ] = False,
    as_json: JsonFlag = False,
    timeout: TimeoutOption = None,
    url: UrlOption = None,
) -> None:
    """Cancel a job and print its state (CANCELED once it has stopped)."""
    settings = settings_for(ctx, url=url, timeout=timeout)
    until = settings.timeout if wait else None
    job = run_async(
        on_plugin(settings, endpoint, PsiJ, partial(show.cancel_job, job_id=job_id, wait=until))
    )
    if as_json:
        print_json(show.job_json(job))
    else:
        console.print(show.cancel_line(job), soft_wrap=True)


@guarded
def rm(
    ctx: typer.Context,
    endpoint: EndpointArg,
    job_ids: Annotated[
        list[str], typer.Argument(metavar="JOB...", help="Ended jobs.", show_default=False)
    ],
    timeout: TimeoutOption = None,
    url: UrlOption = None,
) -> None:
    """Remove ended jobs: their directories on the endpoint and their journal rows."""
    settings = settings_for(ctx, url=url, timeout=timeout)

    async def remove(psij: PsiJ) -> list[Job]:
        return [await psij.remove_job(job_id=job_id) for job_id in job_ids]

    for job in run_async(on_plugin(settings, endpoint, PsiJ, remove)):
        console.print(f"removed {job.job_id} ({job.state.value})", soft_wrap=True)


@guarded
def logs(
    ctx: typer.Context,
    endpoint: EndpointArg,
    job_id: JobArg,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing output until the job ends.")
    ] = False,
    stderr: Annotated[
        bool, typer.Option("--stderr", help="Also print the job's stderr (to stderr).")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Output chunks as JSON lines (stream, offset, text).")
    ] = False,
    timeout: TimeoutOption = None,
    url: UrlOption = None,
) -> None:
    """Print a job's stdout (and with --stderr its stderr, to stderr)."""
    settings = settings_for(ctx, url=url, timeout=timeout)
    stream = partial(show.stream_output, follow=follow, as_json=as_json, stderr=stderr)

    async def stream_logs(psij: PsiJ) -> None:
        await stream(await Job.attach(psij, job_id))

    run_async(on_plugin(settings, endpoint, PsiJ, stream_logs))
