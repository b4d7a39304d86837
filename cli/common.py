"""What every command shares: global options, settings, logging, the event loop, error handling."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer
from pydantic import ValidationError

from orbit_mq.client import Fabric
from orbit_mq.config import Settings, load_settings
from orbit_mq.contract import Contract
from orbit_mq.errors import ConfigError, OrbitError
from orbit_mq.protocol import check_name
from orbit_mq.shorten import Bounded

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
C = TypeVar("C", bound=Contract)

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass
class GlobalOptions:
    """Options given before the command (`orbit-mq --url … call …`)."""

    url: str | None = None
    timeout: float | None = None
    insecure: bool | None = None  # None: not given, so ORBIT_MQ_INSECURE or the file decide


def valid_endpoint(value: str) -> str:
    try:
        return check_name("endpoint", value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def optional_endpoint(value: str | None) -> str | None:
    return None if value is None else valid_endpoint(value)


def valid_plugin(value: str) -> str:
    try:
        return check_name("plugin", value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


UrlOption = Annotated[
    str | None,
    typer.Option(
        "--url",
        metavar="URL",
        help="Broker URL, amqp[s]://user:pass@host:port/vhost (default: $ORBIT_MQ_URL, "
        "config file, local broker).",
        show_default=False,
    ),
]
InsecureFlag = Annotated[
    bool,
    typer.Option(
        "--insecure",
        help="Allow a plain amqp:// URL to another host: the password goes over the network "
        "in clear (default: refused; use amqps://). Also ORBIT_MQ_INSECURE=1.",
    ),
]
TimeoutOption = Annotated[
    float | None,
    typer.Option("--timeout", metavar="SECONDS", help="Call timeout in seconds (default: 30)."),
]
EndpointArg = Annotated[
    str,
    typer.Argument(
        metavar="ENDPOINT", help="Endpoint name.", callback=valid_endpoint, show_default=False
    ),
]
PluginArg = Annotated[
    str,
    typer.Argument(
        metavar="PLUGIN",
        help="Plugin name, e.g. sysinfo.",
        callback=valid_plugin,
        show_default=False,
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def settings_for(ctx: typer.Context, **flags: Any) -> Settings:
    """Settings from the flags given to the command, then the global ones, env, file, defaults."""
    given = ctx.find_object(GlobalOptions) or GlobalOptions()
    merged: dict[str, Any] = {
        "url": given.url,
        "timeout": given.timeout,
        "insecure": given.insecure,
    }
    merged.update({key: value for key, value in flags.items() if value is not None})
    return load_settings(**merged)


def setup_logging(level: LogLevel = LogLevel.WARNING, quiet_libraries: bool = True) -> None:
    """Log to stderr: through rich on a terminal, as plain lines into pipes and files."""
    handler: logging.Handler
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        handler = RichHandler(console=Console(stderr=True), show_path=False)
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    handler.addFilter(Bounded())  # values from requests never make a line longer than 1 KiB
    logging.basicConfig(level=level.upper(), format=fmt, handlers=[handler], force=True)
    # The AMQP libraries log connection failures the error line already reports.
    quiet = level in (LogLevel.WARNING, LogLevel.ERROR) and quiet_libraries
    for library in ("aiormq", "aio_pika"):
        logging.getLogger(library).setLevel(logging.CRITICAL if quiet else logging.NOTSET)


async def on_plugin(
    settings: Settings, endpoint: str, contract: type[C], action: Callable[[C], Awaitable[T]]
) -> T:
    """Connect, run `action` with a session-less proxy of `contract` on `endpoint` (a command
    acts as the user, not as a session of its own), disconnect."""
    async with Fabric(settings) as fabric:
        return await action(await fabric.endpoint(endpoint).plugin(contract, session=False))


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on a fresh event loop (uvloop's where installed)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is not installed on Windows
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def describe(error: BaseException) -> str:
    """One line saying what went wrong, without the exception's class or a traceback."""
    if isinstance(error, ValidationError):
        problems = "; ".join(
            f"{'.'.join(map(str, item['loc'])) or 'value'}: {item['msg']}"
            for item in error.errors(include_url=False)
        )
        text = f"invalid {error.title.lower()}: {problems}"
    elif isinstance(error, OSError) and error.strerror:
        where = f": {error.filename}" if error.filename else ""
        text = f"{error.strerror}{where}"
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _silence_stdout() -> None:
    """After the reader of stdout went away, keep the interpreter from complaining at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def guarded(command: Callable[P, R]) -> Callable[P, R]:
    """Turn every expected failure of `command` into one `error: …` line and an exit code."""

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            _silence_stdout()
            raise typer.Exit(EXIT_BROKEN_PIPE) from None
        except (ConfigError, ValidationError) as exc:
            fail(describe(exc), EXIT_USAGE)
        except (OrbitError, OSError) as exc:
            fail(describe(exc), EXIT_ERROR)

    return wrapper


def split_csv(values: list[str] | None) -> list[str]:
    """`["a,b", "c"]` → `["a", "b", "c"]`: options that take lists accept both forms."""
    return [item.strip() for value in values or [] for item in value.split(",") if item.strip()]
