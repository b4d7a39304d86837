"""`orbit-mq endpoint …`: run an endpoint on this host."""

from __future__ import annotations

from typing import Annotated

import typer

from orbit_mq.cli.common import (
    LogLevel,
    UrlOption,
    guarded,
    run_async,
    settings_for,
    setup_logging,
    split_csv,
    valid_endpoint,
)

endpoint_app = typer.Typer(help="Run an endpoint on this host.", no_args_is_help=True)

DEFAULT_PLUGINS = ["sysinfo"]


@endpoint_app.command("start")
@guarded
def start(
    ctx: typer.Context,
    name: Annotated[
        str,
        typer.Option(
            "--name",
            "-n",
            metavar="NAME",
            help="Endpoint name, unique on the broker.",
            callback=valid_endpoint,
        ),
    ],
    plugins: Annotated[
        list[str] | None,
        typer.Option(
            "--plugins",
            "-p",
            metavar="NAMES",
            help="Plugins to serve, comma-separated or repeated.",
            show_default="sysinfo",
        ),
    ] = None,
    url: UrlOption = None,
    allow: Annotated[
        list[str] | None,
        typer.Option(
            "--allow",
            metavar="USER",
            help="A broker user whose calls are served (repeatable; default: only the "
            "endpoint's own user).",
            show_default=False,
        ),
    ] = None,
    heartbeat: Annotated[
        float | None,
        typer.Option(
            "--heartbeat",
            metavar="SECONDS",
            help="Seconds between presence heartbeats (default: 5).",
        ),
    ] = None,
    log_level: Annotated[
        LogLevel, typer.Option("--log-level", help="Log level (logs go to stderr).")
    ] = LogLevel.INFO,
) -> None:
    """Serve plugins on this host until SIGTERM or Ctrl-C, then stop gracefully.

    In-flight calls are finished first and an `offline` presence message is published.
    """
    from orbit_mq.workers.endpoint import Endpoint
    from orbit_mq.workers.registry import load_plugins

    classes = load_plugins(split_csv(plugins) or DEFAULT_PLUGINS)
    settings = settings_for(
        ctx, url=url, heartbeat_interval=heartbeat, allowed_users=split_csv(allow) or None
    )
    setup_logging(log_level, quiet_libraries=False)
    endpoint = Endpoint(name, classes, settings)
    run_async(endpoint.run())
