"""The `orbit-mq` command line: run endpoints, find them, call their plugins, watch events."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from orbit_mq.cli.admin_cmd import admin_app
from orbit_mq.cli.call_cmd import call
from orbit_mq.cli.common import (
    EXIT_INTERRUPTED,
    GlobalOptions,
    InsecureFlag,
    JsonFlag,
    LogLevel,
    TimeoutOption,
    UrlOption,
    guarded,
    run_async,
    settings_for,
    setup_logging,
)
from orbit_mq.cli.demo import demo
from orbit_mq.cli.endpoint_cmd import endpoint_app
from orbit_mq.cli.jobs_cmd import cancel, jobs, logs, rm, status, submit
from orbit_mq.cli.output import console, endpoints_table, print_json
from orbit_mq.cli.stage_cmd import stage_app
from orbit_mq.cli.sysinfo_cmd import sysinfo
from orbit_mq.cli.tasks_cmd import tasks_app
from orbit_mq.cli.watch_cmd import watch
from orbit_mq.cli.web_cmd import web
from orbit_mq.client import Fabric
from orbit_mq.config import Settings
from orbit_mq.protocol import EndpointInfo

app = typer.Typer(
    name="orbit-mq",
    help="Run and watch work on HPC machines through a RabbitMQ broker.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals hold the broker URL with its password
)
app.add_typer(endpoint_app, name="endpoint")
app.add_typer(admin_app, name="admin")
app.add_typer(stage_app, name="stage")
app.add_typer(tasks_app, name="tasks")
app.command()(call)
app.command()(watch)
app.command()(sysinfo)
for job_command in (submit, status, jobs, cancel, rm, logs):
    app.command()(job_command)
app.command()(demo)
app.command()(web)


@app.callback()
def main(
    ctx: typer.Context,
    url: UrlOption = None,
    timeout: TimeoutOption = None,
    insecure: InsecureFlag = False,
    log_level: Annotated[
        LogLevel, typer.Option("--log-level", help="Log level of the SDK (logs go to stderr).")
    ] = LogLevel.WARNING,
) -> None:
    """Run and watch work on HPC machines through a RabbitMQ broker.

    Settings come from flags, then ORBIT_MQ_* environment variables (ORBIT_MQ_URL, …), then
    ~/.config/orbit-mq/config.toml, then defaults.
    """
    ctx.obj = GlobalOptions(url=url, timeout=timeout, insecure=insecure or None)
    setup_logging(log_level)


async def _discover(settings: Settings, window: float | None) -> list[EndpointInfo]:
    async with Fabric(settings) as fabric:
        return await fabric.endpoints(window=window)


@app.command()
@guarded
def endpoints(
    ctx: typer.Context,
    as_json: JsonFlag = False,
    window: Annotated[
        float | None,
        typer.Option(
            "--window",
            metavar="SECONDS",
            help="Seconds to collect discovery answers (default: 0.5).",
            min=0.01,
        ),
    ] = None,
    url: UrlOption = None,
) -> None:
    """List the endpoints online now: name, host, role, user, plugins, uptime, pid."""
    infos = run_async(_discover(settings_for(ctx, url=url), window))
    if as_json:
        print_json([info.model_dump(mode="json") for info in infos])
    else:
        console.print(endpoints_table(infos))


def default_schemas_dir(start: Path | None = None) -> Path:
    """The repository's schemas/ when run inside an orbit_mq checkout, else ./schemas."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "orbit_mq" / "protocol.py").is_file() and (folder / "schemas").is_dir():
            return folder / "schemas"
    return here / "schemas"


@app.command()
@guarded
def schemas(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            metavar="DIR",
            help="Directory to write into.",
            show_default="the checkout's schemas/, else ./schemas",
            file_okay=False,
        ),
    ] = None,
) -> None:
    """Write the JSON Schemas of the wire messages and plugin methods, one file each."""
    from orbit_mq.schemas import write_schemas

    for path in write_schemas(out or default_schemas_dir()):
        typer.echo(str(path))


def run() -> None:
    """The console script."""
    try:
        app(prog_name="orbit-mq")
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
