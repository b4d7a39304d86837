"""`orbit-mq call`: one remote call from the shell."""

from __future__ import annotations

import json
from typing import Annotated, Any, NoReturn

import typer

from orbit_mq.cli.common import (
    EndpointArg,
    PluginArg,
    TimeoutOption,
    UrlOption,
    guarded,
    run_async,
    settings_for,
)
from orbit_mq.cli.output import print_json
from orbit_mq.client import Fabric
from orbit_mq.config import Settings
from orbit_mq.errors import ConfigError


def _no_constants(name: str) -> NoReturn:
    raise ValueError(name)


def parse_value(text: str) -> Any:
    """A JSON value when `text` is one (`3`, `true`, `"x"`, `[1]`), else the text itself."""
    try:
        return json.loads(text, parse_constant=_no_constants)
    except ValueError:  # also rejects NaN and Infinity, which are no JSON
        return text


def parse_params(pairs: list[str], json_args: str | None) -> dict[str, Any]:
    """The call's parameters: `--json-args` first, then each `key=value` over it."""
    params: dict[str, Any] = {}
    if json_args is not None:
        try:
            base = json.loads(json_args, parse_constant=_no_constants)
        except ValueError as exc:
            raise ConfigError(f"--json-args is not valid JSON: {exc}") from None
        if not isinstance(base, dict):
            raise ConfigError("--json-args must be a JSON object, e.g. '{\"count\": 3}'")
        params.update(base)
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"parameter {pair!r} is not key=value, e.g. count=3 or name=x")
        params[key] = parse_value(text)
    return params


async def remote_call(
    settings: Settings,
    target: tuple[str, str, str],
    params: dict[str, Any],
    *,
    wait: bool,
    session: bool,
) -> Any:
    """Make the call; with `session`, inside a session registered for it and closed after."""
    endpoint, plugin, method = target
    async with Fabric(settings) as fabric:
        if not session or wait:  # a session would itself have to wait in the queue first
            return await fabric.call(endpoint, plugin, method, params, wait=wait)
        proxy = await fabric.endpoint(endpoint).plugin(plugin, session=True, wait=wait)
        return await proxy.call(method, params)


@guarded
def call(
    ctx: typer.Context,
    endpoint: EndpointArg,
    plugin: PluginArg,
    method: Annotated[
        str, typer.Argument(metavar="METHOD", help="Method name, e.g. metrics.", show_default=False)
    ],
    params: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="KEY=VALUE",
            help="Parameters as key=value; values are JSON when they parse (count=3, "
            'flag=true, name="x"), else strings.',
            show_default=False,
        ),
    ] = None,
    json_args: Annotated[
        str | None,
        typer.Option(
            "--json-args",
            metavar="JSON",
            help="Parameters as a JSON object; key=value pairs override it.",
        ),
    ] = None,
    timeout: TimeoutOption = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait", help="Queue the call if the endpoint is offline, until the timeout."
        ),
    ] = False,
    no_session: Annotated[
        bool,
        typer.Option(
            "--no-session", help="Call without registering a session (one round trip less)."
        ),
    ] = False,
    url: UrlOption = None,
) -> None:
    """Call PLUGIN.METHOD on ENDPOINT and print the result as JSON.

    Example: orbit-mq call hpc1 sysinfo metrics
    """
    arguments = parse_params(params or [], json_args)
    settings = settings_for(ctx, url=url, timeout=timeout)
    result = run_async(
        remote_call(
            settings, (endpoint, plugin, method), arguments, wait=wait, session=not no_session
        )
    )
    print_json(result)
