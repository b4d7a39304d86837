"""`orbit-mq watch`: events or presence messages as JSON lines."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import typer

from orbit_mq.cli.common import EXIT_ERROR, UrlOption, guarded, run_async, settings_for
from orbit_mq.client import MINE, Fabric, Mine
from orbit_mq.config import Settings
from orbit_mq.errors import ConfigError
from orbit_mq.protocol import EVENTS_EXCHANGE, TOPOLOGY_EXCHANGE, EndpointInfo, Event
from orbit_mq.subscribe import Subscription

Watched = Subscription[Event] | Subscription[EndpointInfo]


async def _print_lines(subscription: Watched, count: int | None) -> None:
    seen = 0
    async for message in subscription:
        sys.stdout.write(message.model_dump_json() + "\n")
        sys.stdout.flush()
        seen += 1
        if count is not None and seen >= count:
            return


async def watch_messages(
    settings: Settings,
    patterns: list[str],
    *,
    presence: bool,
    durable: str | None,
    count: int | None,
    timeout: float | None,
    owner: str | Mine | None = MINE,
    audit: bool = False,
) -> bool:
    """Print messages until `count` arrived (True) or `timeout` elapsed (False)."""
    async with Fabric(settings) as fabric:
        if presence:
            subscription: Watched = fabric.presence(*patterns)
        elif audit:
            subscription = fabric.audit_events(*patterns, durable=durable)
        else:
            subscription = fabric.subscribe(*patterns, durable=durable, owner=owner)
        await subscription.start()
        exchange = TOPOLOGY_EXCHANGE if presence else EVENTS_EXCHANGE
        typer.echo(f"watching {exchange} {' '.join(subscription.patterns)}", err=True)
        try:
            async with asyncio.timeout(timeout) as scope:
                await _print_lines(subscription, count)
        except TimeoutError:
            if not scope.expired():
                raise
            return False
        return True


@guarded
def watch(
    ctx: typer.Context,
    patterns: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="PATTERN",
            help="Routing-key patterns: {endpoint}.{plugin}.{topic} for events (about your own "
            "work, unless --user or --all-users), {endpoint}.{status} with --presence, "
            "{endpoint} with --audit; * is one word, # any number.",
            show_default="#",
        ),
    ] = None,
    count: Annotated[
        int | None,
        typer.Option("--count", "-c", metavar="N", help="Stop after this many messages.", min=1),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            metavar="SECONDS",
            help="Stop after this many seconds; exit 1 if --count messages had not arrived.",
            min=0,
        ),
    ] = None,
    presence: Annotated[
        bool,
        typer.Option("--presence", help="Watch presence (orbit.topology), not events."),
    ] = False,
    durable: Annotated[
        str | None,
        typer.Option(
            "--durable",
            metavar="NAME",
            help="Use your durable queue NAME (orbit.sub.{you}.NAME), which keeps events while "
            "nobody watches.",
        ),
    ] = None,
    user: Annotated[
        str | None,
        typer.Option(
            "--user",
            metavar="USER",
            help="Events about USER's work (needs a broker user granted all events).",
        ),
    ] = None,
    all_users: Annotated[
        bool,
        typer.Option(
            "--all-users", help="Events about everyone's work (needs all events granted)."
        ),
    ] = False,
    audit: Annotated[
        bool,
        typer.Option(
            "--audit",
            help="The endpoints' audit events: refusals, admin overrides, remote stops (needs "
            "all events granted).",
        ),
    ] = False,
    url: UrlOption = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="JSON lines: what watch always prints (the flag is accepted, as on every "
            "other command).",
        ),
    ] = False,
) -> None:
    """Print events as JSON lines on stdout, one per message, as they arrive.

    A line "watching …" goes to stderr once the subscription is bound.
    """
    if presence and durable:
        raise ConfigError("--durable applies to events, not to --presence")
    if user and all_users:
        raise ConfigError("give --user USER or --all-users, not both")
    settings = settings_for(ctx, url=url)
    owner: str | Mine | None = None if all_users else (user or MINE)
    complete = run_async(
        watch_messages(
            settings,
            patterns or (["*"] if audit else ["#"]),
            presence=presence,
            durable=durable,
            count=count,
            timeout=timeout,
            owner=owner,
            audit=audit,
        )
    )
    if not complete and count is not None:
        raise typer.Exit(EXIT_ERROR)
