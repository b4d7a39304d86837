"""SSH logins with paramiko (blocking: call from worker threads) and byte pumping.

Host keys are checked against known_hosts. A server that is not listed is refused unless
`auto_add_host_keys` is set; a server whose key differs is always refused. Such refusals, and
refused logins, are final; network failures are retried within the settings' retry window.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from pathlib import Path
from typing import Any

import paramiko

from orbit_mq.contracts.psij.errors import HostKeyRejected, LoginRefused, TunnelError
from orbit_mq.workers.logs import bounded_logger
from orbit_mq.workers.tunnels.settings import Address, TunnelSettings

log = bounded_logger("orbit_mq.tunnels")

MAX_ATTEMPTS = 1000  # per retry window, whatever the window
FIRST_DELAY, MAX_DELAY = 0.5, 5.0  # s between login attempts (doubling)
PUMP_BYTES = 64 * 1024
PUMP_TICK = 1.0  # s: how often a quiet pump checks whether its tunnel was closed


def known_hosts_file(settings: TunnelSettings) -> Path:
    return (settings.known_hosts or Path("~/.ssh/known_hosts")).expanduser()


class _RefuseUnknown(paramiko.MissingHostKeyPolicy):
    """Refuse servers missing from known_hosts, saying how to add one."""

    def __init__(self, known_hosts: Path) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(
        self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey
    ) -> None:
        raise HostKeyRejected(
            f"the SSH host key of {hostname} ({key.get_name()} {key.fingerprint}) is not in "
            f"{self.known_hosts}; check that fingerprint with the server's administrator, then "
            f"add the key to that file (e.g. with ssh-keyscan), or set "
            "ORBIT_MQ_TUNNEL_AUTO_ADD_HOST_KEYS=true to trust servers on first use"
        )


def open_client(address: Address, settings: TunnelSettings) -> paramiko.SSHClient:
    """One login attempt; raises TunnelError when retrying cannot help, else the cause."""
    known_hosts = known_hosts_file(settings)
    if settings.known_hosts is not None and not known_hosts.is_file():
        raise HostKeyRejected(
            f"known_hosts file {known_hosts} does not exist; create it with the servers' host "
            "keys or point ORBIT_MQ_TUNNEL_KNOWN_HOSTS elsewhere"
        )
    key = settings.key_file.expanduser() if settings.key_file else None
    if key is not None and not key.is_file():
        raise LoginRefused(f"SSH key file {key} does not exist; set ORBIT_MQ_TUNNEL_KEY_FILE")
    client = paramiko.SSHClient()
    try:
        if known_hosts.is_file():
            client.load_host_keys(str(known_hosts))
        policy = paramiko.AutoAddPolicy() if settings.auto_add_host_keys else None
        client.set_missing_host_key_policy(policy or _RefuseUnknown(known_hosts))
        user = settings.login_user()
        try:
            client.connect(
                address.host,
                port=address.port,
                username=user,
                key_filename=str(key) if key else None,
                look_for_keys=key is None,
                allow_agent=key is None,
                timeout=settings.connect_timeout,
                banner_timeout=settings.connect_timeout,
                auth_timeout=settings.connect_timeout,
            )
        except paramiko.BadHostKeyException as exc:
            raise HostKeyRejected(
                f"the SSH host key of {address} differs from the one in {known_hosts} (a "
                "man-in-the-middle attack, or a reinstalled server): if the server's key was "
                "changed on purpose, replace its line in that file"
            ) from exc
        except (paramiko.AuthenticationException, paramiko.PasswordRequiredException) as exc:
            raise LoginRefused(
                f"SSH login as {user} to {address} refused ({exc}); check "
                "ORBIT_MQ_TUNNEL_USER and ORBIT_MQ_TUNNEL_KEY_FILE"
            ) from exc
        transport = client.get_transport()
        assert transport is not None
        if settings.keepalive:
            transport.set_keepalive(max(1, round(settings.keepalive)))
        return client
    except BaseException:
        client.close()
        raise


def describe(exc: BaseException) -> str:
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):
        causes = {getattr(e, "strerror", None) or str(e) for e in exc.errors.values()}
        return f"cannot connect: {', '.join(sorted(causes))}"
    return str(exc) or type(exc).__name__


def connect_with_retry(
    address: Address, settings: TunnelSettings, stop: threading.Event
) -> paramiko.SSHClient:
    """Log in to `address`, retrying network failures for `settings.retry_window` s; raises
    TunnelError. Setting `stop` ends the retrying."""
    deadline = time.monotonic() + settings.retry_window
    delay, last = FIRST_DELAY, "no attempt made"
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            return open_client(address, settings)
        except TunnelError:
            raise
        except (OSError, EOFError, paramiko.SSHException) as exc:
            last = describe(exc)
            log.info("SSH login to %s failed (attempt %d): %s", address, attempt, last)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        if stop.wait(min(delay, remaining)):
            raise TunnelError(f"the tunnel through {address} was closed while connecting")
        delay = min(delay * 2, MAX_DELAY)
    raise TunnelError(
        f"cannot log in to SSH server {address} (tried for {settings.retry_window:g} s, "
        f"{attempt} attempts): {last}; check that the host runs sshd on that port and is "
        "reachable from here (ORBIT_MQ_TUNNEL_RETRY_WINDOW sets how long to try)"
    )


def pump(channel: paramiko.Channel, sock: socket.socket, closed: threading.Event) -> None:
    """Copy bytes both ways until either side ends or `closed` is set; closes both."""
    try:
        ends: list[Any] = [channel, sock]
        while not closed.is_set():
            readable, _, _ = select.select(ends, [], [], PUMP_TICK)
            if channel in readable:
                data = channel.recv(PUMP_BYTES)
                if not data:
                    break
                sock.sendall(data)
            if sock in readable:
                data = sock.recv(PUMP_BYTES)
                if not data:
                    break
                channel.sendall(data)
    except (OSError, EOFError, paramiko.SSHException) as exc:
        log.debug("tunnel connection ended: %s", describe(exc))
    finally:
        close_quietly(channel, sock)


def close_quietly(channel: paramiko.Channel, sock: socket.socket) -> None:
    """Close both ends; closing a channel of a dead session raises, and means nothing."""
    with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
        channel.close()
    sock.close()
