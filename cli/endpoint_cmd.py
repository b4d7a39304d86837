"""`orbit-mq endpoint …`: run an endpoint on this host."""

from __future__ import annotations

import asyncio
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from orbit_mq.cli.common import (
    EndpointArg,
    LogLevel,
    TimeoutOption,
    UrlOption,
    guarded,
    run_async,
    settings_for,
    setup_logging,
    split_csv,
    valid_endpoint,
)
from orbit_mq.cli.output import console
from orbit_mq.client import Fabric
from orbit_mq.config import Settings
from orbit_mq.contracts.control import Control, StopAccepted
from orbit_mq.errors import CallTimeout

endpoint_app = typer.Typer(help="Run an endpoint on this host.", no_args_is_help=True)


class TunnelChoice(StrEnum):
    NONE = "none"
    FORWARD = "forward"
    REVERSE = "reverse"


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
            help="Plugins to serve, comma-separated or repeated (default: every installed "
            "plugin that works on this host; queue_info only where a batch system is found).",
            show_default=False,
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
    pool: Annotated[
        str | None,
        typer.Option(
            "--pool",
            metavar="POOL",
            help="Also serve as a member of endpoint pool POOL: calls to POOL go to any live "
            "member, and a job stays with the member that ran it (docs/scaling.md).",
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
    tunnel: Annotated[
        TunnelChoice,
        typer.Option(
            "--tunnel",
            help="Reach the broker through SSH: forward (log in to --tunnel-via and forward "
            "a local port) or reverse (use the port a parent endpoint forwards to this host, "
            "read from --rendezvous). See docs/tunnels.md.",
        ),
    ] = TunnelChoice.NONE,
    tunnel_via: Annotated[
        str | None,
        typer.Option(
            "--tunnel-via",
            metavar="HOST[:PORT]",
            help="SSH host to tunnel through (forward; default: $ORBIT_MQ_TUNNEL_VIA, else the "
            "batch job's submit host).",
            show_default=False,
        ),
    ] = None,
    tunnel_target: Annotated[
        str | None,
        typer.Option(
            "--tunnel-target",
            metavar="HOST:PORT",
            help="The broker as the SSH host sees it (forward; default: the URL's host and port).",
            show_default=False,
        ),
    ] = None,
    rendezvous: Annotated[
        Path | None,
        typer.Option(
            "--rendezvous",
            metavar="FILE",
            help="Rendezvous file shared with the parent endpoint (reverse: where the port is "
            "read; forward: where it is written). Default: $ORBIT_MQ_HOME/tunnels/NAME.json.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve plugins on this host until SIGTERM or Ctrl-C, then stop gracefully.

    In-flight calls are finished first and an `offline` presence message is published.
    """
    from orbit_mq.workers.registry import available_plugins, load_plugins
    from orbit_mq.workers.tunnels.child import TunnelOptions, serve

    names = split_csv(plugins)
    classes = load_plugins(names) if names else available_plugins()
    settings = settings_for(
        ctx,
        url=url,
        heartbeat_interval=heartbeat,
        allowed_users=split_csv(allow) or None,
        pool=pool,
    )
    setup_logging(log_level, quiet_libraries=False)
    options = TunnelOptions(tunnel.value, tunnel_via, tunnel_target, rendezvous)
    run_async(serve(name, classes, settings, options))


@endpoint_app.command("stop")
@guarded
def stop(
    ctx: typer.Context,
    endpoint: EndpointArg,
    drain: Annotated[
        bool,
        typer.Option("--drain", help="First wait until its running jobs and tasks have ended."),
    ] = False,
    drain_timeout: Annotated[
        float | None,
        typer.Option(
            "--drain-timeout",
            metavar="SECONDS",
            min=0.001,
            help="Stop draining after this long; what still runs is re-attached next start.",
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait",
            help="Wait until it has published offline (with --drain: "
            "however long the drain takes, or --drain-timeout).",
        ),
    ] = True,
    timeout: TimeoutOption = None,
    url: UrlOption = None,
) -> None:
    """Stop ENDPOINT remotely (its admins only: its own broker user and ORBIT_MQ_ADMIN_USERS).

    It stops taking requests (later ones wait in the broker for its next start), finishes the
    calls in flight, publishes offline and exits 0. Jobs and tasks keep running and are
    re-attached by the next start, unless --drain waits for them to end first.
    """
    settings = settings_for(ctx, url=url, timeout=timeout)
    run_async(_stop(settings, endpoint, drain, drain_timeout, wait))


async def _stop(
    settings: Settings, endpoint: str, drain: bool, drain_timeout: float | None, wait: bool
) -> None:
    async with Fabric(settings) as fabric, fabric.presence(f"{endpoint}.offline") as offline:
        control = await fabric.endpoint(endpoint).plugin(Control, session=False)
        accepted = await control.shutdown(drain=drain, drain_timeout=drain_timeout)
        console.print(_stopping_line(accepted), soft_wrap=True)
        if not wait:
            return
        limit = None if drain and drain_timeout is None else settings.timeout + (drain_timeout or 0)
        with console.status(f"waiting for {endpoint} to stop"):
            try:
                async with asyncio.timeout(limit):
                    await anext(aiter(offline))
            except TimeoutError:
                raise CallTimeout(
                    f"endpoint {endpoint!r} accepted the stop but did not publish offline "
                    f"within {limit:g} s; `orbit-mq endpoints` shows whether it still runs"
                ) from None
        console.print(f"endpoint {endpoint} stopped", soft_wrap=True)


def _stopping_line(accepted: StopAccepted) -> str:
    running = ", ".join(f"{plugin} {count}" for plugin, count in accepted.running.items())
    work = f"; running: {running}" if running else ""
    how = "draining" if accepted.drain else "stopping"
    return f"endpoint {accepted.endpoint} is {how} ({accepted.in_flight} calls in flight{work})"
