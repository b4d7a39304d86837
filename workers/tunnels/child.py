"""Running an endpoint whose broker connection goes through an SSH tunnel.

* forward: the endpoint logs in to `via` (a login node), listens on 127.0.0.1:<port> and
  connects AMQP there; the tunnel carries it to the broker as `via` sees it (`target`). If
  the tunnel fails for good, the endpoint stops and the command exits with the reason.
* reverse: the endpoint announces its node in the rendezvous file and waits (bounded) for the
  parent to write the port of the remote forward it opened here; every (re)connection reads
  the port again, since the parent may have had to take another one.

In both modes TLS (`amqps://`) checks the broker's certificate against the URL's host name.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from orbit_mq.broker import Route
from orbit_mq.config import Settings
from orbit_mq.contracts.psij.errors import TunnelError
from orbit_mq.contracts.psij.models import TunnelMode
from orbit_mq.errors import ConfigError
from orbit_mq.workers.endpoint import Endpoint
from orbit_mq.workers.logs import bounded_logger
from orbit_mq.workers.plugin import Plugin
from orbit_mq.workers.tunnels import rendezvous
from orbit_mq.workers.tunnels.rendezvous import Rendezvous
from orbit_mq.workers.tunnels.settings import Address, TunnelSettings, broker_address, parse_address
from orbit_mq.workers.tunnels.tunnel import LOOPBACK, ForwardTunnel, Tunnel, TunnelState

log = bounded_logger("orbit_mq.tunnels")

RENDEZVOUS_POLL = 0.2  # s between reads of the rendezvous file while waiting for the port
# Where batch systems record the host a job was submitted from (the login node).
SUBMIT_HOST_VARIABLES = ("PBS_O_HOST", "SLURM_SUBMIT_HOST", "LSB_SUB_HOST")


@dataclass(frozen=True)
class TunnelOptions:
    mode: TunnelMode = "none"
    via: str | None = None
    target: str | None = None
    rendezvous: Path | None = None


def login_host(options: TunnelOptions, settings: TunnelSettings) -> Address:
    """The SSH host of a forward tunnel: --tunnel-via, the setting, or the submit host."""
    text = options.via or settings.via
    if text is None:
        text = next((os.environ[v] for v in SUBMIT_HOST_VARIABLES if os.environ.get(v)), None)
    if text is None:
        raise ConfigError(
            "--tunnel forward needs the login node to tunnel through: give --tunnel-via HOST[:PORT]"
        )
    return settings.ssh_address(text)


def broker_target(options: TunnelOptions, settings: TunnelSettings, url: str) -> Address:
    """The broker as the far end of the tunnel sees it."""
    text = options.target or settings.target
    return parse_address(text, None, "tunnel target") if text else broker_address(url)


async def serve(
    name: str,
    plugins: Sequence[type[Plugin]],
    settings: Settings,
    options: TunnelOptions,
    tunnel_settings: TunnelSettings | None = None,
) -> None:
    """Run the endpoint until SIGTERM/SIGINT, through the tunnel `options` asks for."""
    config = tunnel_settings or TunnelSettings()
    if options.mode == "forward":
        await _serve_forward(name, plugins, settings, options, config)
    elif options.mode == "reverse":
        await _serve_reverse(name, plugins, settings, options, config)
    else:
        await Endpoint(name, plugins, settings).run()


async def _serve_forward(
    name: str,
    plugins: Sequence[type[Plugin]],
    settings: Settings,
    options: TunnelOptions,
    config: TunnelSettings,
) -> None:
    loop = asyncio.get_running_loop()
    failed = asyncio.Event()

    def changed(tunnel: Tunnel) -> None:
        if tunnel.state is TunnelState.FAILED:
            with contextlib.suppress(RuntimeError):  # the loop is closed: we are exiting
                loop.call_soon_threadsafe(failed.set)

    tunnel = ForwardTunnel(
        login_host(options, config),
        broker_target(options, config, settings.url),
        config,
        on_change=changed,
    )
    await asyncio.to_thread(tunnel.open)
    try:
        port = tunnel.port
        assert port is not None
        if options.rendezvous is not None:
            info = Rendezvous(
                endpoint=name, mode="forward", port=port, node=socket.gethostname(), pid=os.getpid()
            )
            await asyncio.to_thread(rendezvous.write, options.rendezvous, info)
        endpoint = Endpoint(name, plugins, settings, route=lambda: (LOOPBACK, port))
        await _run_until(endpoint, failed)
        if failed.is_set():
            raise TunnelError(f"endpoint {name!r} stopped: {tunnel.reason}")
    finally:
        await asyncio.to_thread(tunnel.close)
        if options.rendezvous is not None:  # the port it names is gone
            await asyncio.to_thread(rendezvous.remove, options.rendezvous)


async def _serve_reverse(
    name: str,
    plugins: Sequence[type[Plugin]],
    settings: Settings,
    options: TunnelOptions,
    config: TunnelSettings,
) -> None:
    path = options.rendezvous or config.rendezvous_file(settings.home, name)
    hello = Rendezvous(endpoint=name, mode="reverse", node=socket.gethostname(), pid=os.getpid())
    await asyncio.to_thread(rendezvous.announce, path, hello)
    log.info("waiting up to %g s for the reverse tunnel's port in %s", config.rendezvous_wait, path)
    port = await wait_for_port(path, config.rendezvous_wait)
    log.info("reverse tunnel: connecting through %s:%d", LOOPBACK, port)
    await Endpoint(name, plugins, settings, route=reverse_route(path, port)).run()


async def wait_for_port(path: Path, timeout: float) -> int:
    """The port the parent writes into the rendezvous file (polled: it may be on a shared
    filesystem written from another host); raises TunnelError after `timeout` s."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                info = await asyncio.to_thread(rendezvous.read, path)
                if info is not None and info.port:
                    return info.port
                await asyncio.sleep(RENDEZVOUS_POLL)
    except TimeoutError:
        raise TunnelError(
            f"no reverse tunnel port appeared in {path} within {timeout:g} s: the parent endpoint "
            "could not open the tunnel (see its tunnel_status), or the file is not on a "
            "filesystem both hosts share (set ORBIT_MQ_TUNNEL_RENDEZVOUS_DIR)"
        ) from None


def reverse_route(path: Path, first: int) -> Route:
    """The loopback port the rendezvous file names now (the last one known if unreadable)."""
    last = first

    def route() -> tuple[str, int]:
        nonlocal last
        info = rendezvous.read(path)  # a tiny file; read on every reconnection
        if info is not None and info.port and info.port != last:
            log.info("reverse tunnel moved to port %d", info.port)
            last = info.port
        return LOOPBACK, last

    return route


async def _run_until(endpoint: Endpoint, failed: asyncio.Event) -> None:
    """Run the endpoint until it stops on a signal or `failed` is set."""
    running = asyncio.create_task(endpoint.run())
    failing = asyncio.create_task(failed.wait())
    await asyncio.wait({running, failing}, return_when=asyncio.FIRST_COMPLETED)
    failing.cancel()
    if not running.done():
        running.cancel()  # Endpoint.run stops the endpoint gracefully when cancelled
    with contextlib.suppress(asyncio.CancelledError):
        await running
