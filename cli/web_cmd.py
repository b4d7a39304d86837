"""`orbit-mq web`: the HTTP API gateway (orbit_mq.web) on uvicorn."""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from typing import Annotated, Any

import typer

from orbit_mq.cli.common import UrlOption, guarded, run_async, settings_for
from orbit_mq.errors import ConfigError
from orbit_mq.webhooks import SUBSCRIPTION

DEFAULT_LISTEN = "127.0.0.1:8470"
GRACE = 5  # s requests get to finish at shutdown


def _file_option(flag: str, text: str) -> Any:
    return typer.Option(flag, help=text, exists=True, dir_okay=False, show_default=False)


def parse_listen(listen: str) -> tuple[str, int]:
    """`HOST:PORT` (an IPv6 host in brackets: `[::1]:8470`) as host and port."""
    host, colon, port = listen.rpartition(":")
    host = host.strip("[]")
    if not colon or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--listen {listen!r}: give HOST:PORT, e.g. {DEFAULT_LISTEN}")
    return host, int(port)


def _bound(host: str, port: int) -> socket.socket:
    """A listening socket, bound now so that the printed URL is the real one (port 0: any)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    return sock


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@guarded
def web(
    ctx: typer.Context,
    listen: Annotated[
        str, typer.Option("--listen", metavar="HOST:PORT", help="Where to serve HTTP.")
    ] = DEFAULT_LISTEN,
    ssl_certfile: Annotated[
        Path | None, _file_option("--ssl-certfile", "Serve HTTPS with this certificate (PEM).")
    ] = None,
    ssl_keyfile: Annotated[
        Path | None, _file_option("--ssl-keyfile", "The key of --ssl-certfile (PEM).")
    ] = None,
    idle: Annotated[
        float,
        typer.Option(
            "--idle", metavar="SECONDS", min=1, help="Close a user's broker connection after this."
        ),
    ] = 300.0,
    session_idle: Annotated[
        float | None,
        typer.Option(
            "--session-idle",
            metavar="SECONDS",
            min=1,
            help="End a login session unused this long (default: 30 minutes).",
        ),
    ] = None,
    session_lifetime: Annotated[
        float | None,
        typer.Option(
            "--session-lifetime",
            metavar="SECONDS",
            min=1,
            help="End a login session this long after the login, whatever its use "
            "(default: 12 hours).",
        ),
    ] = None,
    webhooks: Annotated[
        str | None,
        typer.Option(
            "--webhooks",
            metavar="NAME",
            help="The durable subscription (orbit.sub.{user}.NAME) the gateway delivers "
            "webhooks from; its broker user needs all events.",
        ),
    ] = SUBSCRIPTION,
    no_webhooks: Annotated[
        bool, typer.Option("--no-webhooks", help="Deliver no webhooks (keeps no queue).")
    ] = False,
    url: UrlOption = None,
) -> None:
    """Serve the HTTP API: endpoints, plugin calls, jobs and events (docs/explorer.md).

    Every request logs in as a user of the broker of --url: HTTP Basic, or the session cookie
    of the explorer's login form.
    """
    import uvicorn

    from orbit_mq.web import create_app
    from orbit_mq.web.sessions import SessionTerms

    if ssl_keyfile is not None and ssl_certfile is None:
        raise ConfigError("--ssl-keyfile needs --ssl-certfile")
    host, port = parse_listen(listen)
    terms = SessionTerms(  # unset: the defaults
        idle=session_idle or SessionTerms.idle,
        lifetime=session_lifetime or SessionTerms.lifetime,
    )
    app = create_app(
        settings_for(ctx, url=url),
        idle=idle,
        webhooks=None if no_webhooks else webhooks,
        sessions=terms,
    )
    sock = _bound(host, port)
    scheme = "https" if ssl_certfile else "http"
    where = f"[{host}]" if ":" in host else host
    base = f"{scheme}://{where}:{sock.getsockname()[1]}"
    typer.echo(f"orbit-mq web: {base}/ (the explorer; the API: {base}/api/v1/endpoints)")
    if scheme == "http" and not _loopback(host):
        typer.echo(
            "warning: plain HTTP on a network address: passwords go in clear; "
            "serve HTTPS (--ssl-certfile, --ssl-keyfile)",
            err=True,
        )
    config = uvicorn.Config(
        app,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        log_config=None,  # orbit-mq's logging (--log-level)
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=GRACE,  # open event streams would hold a shutdown for ever
    )
    try:
        run_async(uvicorn.Server(config).serve(sockets=[sock]))
    finally:
        sock.close()
