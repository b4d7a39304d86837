"""Tunnels: one supervised SSH session each, carrying TCP connections to the broker.

* `ForwardTunnel` (runs where the broker cannot be reached): listens on 127.0.0.1:<port>; each
  connection becomes a `direct-tcpip` channel to the broker as the SSH host sees it.
* `ReverseTunnel` (runs where the broker can be reached): asks the SSH host to listen on its
  127.0.0.1:<port>; each connection there comes back as a channel and is connected to the
  broker as seen from here.

paramiko blocks, so everything here runs in threads: `open()` and `close()` block (call them
through `asyncio.to_thread`); a supervisor thread per tunnel notices a dropped session and logs
in again (a reverse tunnel asks for the same remote port first). `on_change` is called, from
those threads, after every state change.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import paramiko

from orbit_mq.contracts.psij.errors import TunnelError
from orbit_mq.workers.logs import bounded_logger
from orbit_mq.workers.tunnels.settings import Address, TunnelSettings
from orbit_mq.workers.tunnels.ssh import close_quietly, connect_with_retry, describe, pump

log = bounded_logger("orbit_mq.tunnels")

CHECK_INTERVAL = 0.2  # s between checks that the SSH session is still up
JOIN_TIMEOUT = 5.0  # s to wait for a tunnel's threads when it closes
LOOPBACK = "127.0.0.1"


class TunnelState(StrEnum):
    CONNECTING = "connecting"
    ACTIVE = "active"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    CLOSED = "closed"


class Tunnel:
    """An SSH session to `ssh` that is kept up until `close()`; subclasses forward through it."""

    kind = "tunnel"

    def __init__(
        self,
        ssh: Address,
        target: Address,
        settings: TunnelSettings,
        on_change: Callable[[Tunnel], None] | None = None,
    ) -> None:
        self.ssh, self.target, self.settings = ssh, target, settings
        self.on_change = on_change
        self.state = TunnelState.CONNECTING
        self.port: int | None = None  # the forwarded port (local or remote)
        self.reason: str | None = None  # why it failed
        self.reconnects = 0
        self._client: paramiko.SSHClient | None = None
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._links: set[tuple[paramiko.Channel, socket.socket]] = set()

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} via {self.ssh} to {self.target} {self.state} port={self.port}>"
        )

    @property
    def transport(self) -> paramiko.Transport | None:
        client = self._client
        return client.get_transport() if client is not None else None

    # -- lifecycle (blocking) --------------------------------------------------------------

    def open(self) -> None:
        """Log in (retrying within the retry window), forward, then supervise; raises
        TunnelError."""
        try:
            self._connect()
            self._started()
        except TunnelError as exc:
            self._set(TunnelState.FAILED, str(exc))
            self.close()
            raise
        self._spawn(self._supervise, "supervisor")
        self._set(TunnelState.ACTIVE)

    def close(self) -> None:
        """Stop forwarding and log out (idempotent)."""
        self._closed.set()
        self._stopped()
        with self._lock:
            client, self._client = self._client, None
            links = list(self._links)
        for channel, sock in links:
            close_quietly(channel, sock)
        if client is not None:
            client.close()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(JOIN_TIMEOUT)
        if self.state is not TunnelState.FAILED:
            self._set(TunnelState.CLOSED)

    # -- what subclasses add ---------------------------------------------------------------

    def _attach(self, transport: paramiko.Transport) -> None:
        """Set up forwarding on a fresh session (raise TunnelError if it cannot be)."""

    def _started(self) -> None:
        """After the first login (e.g. start listening)."""

    def _stopped(self) -> None:
        """When closing (e.g. stop listening)."""

    # -- internals -------------------------------------------------------------------------

    def _set(self, state: TunnelState, reason: str | None = None) -> None:
        if state is self.state and reason is None:
            return
        self.state, self.reason = state, reason if state is TunnelState.FAILED else None
        warn = state in (TunnelState.FAILED, TunnelState.RECONNECTING)
        port = f" (port {self.port})" if self.port else ""
        detail = f": {reason}" if reason else ""
        log.log(logging.WARNING if warn else logging.INFO, "%s tunnel via %s to %s: %s%s%s",
                self.kind, self.ssh, self.target, state, port, detail)  # fmt: skip
        if self.on_change is not None:
            try:
                self.on_change(self)
            except Exception:  # a listener's failure must not stop the tunnel
                log.exception("tunnel state listener failed")

    def _connect(self) -> None:
        client = connect_with_retry(self.ssh, self.settings, self._closed)
        transport = client.get_transport()
        assert transport is not None
        try:
            self._attach(transport)
        except BaseException:
            client.close()
            raise
        with self._lock:
            if self._closed.is_set():
                client.close()
                raise TunnelError(f"the tunnel through {self.ssh} was closed while connecting")
            self._client = client

    def _alive(self) -> bool:
        transport = self.transport
        return transport is not None and transport.is_active()

    def _supervise(self) -> None:
        while not self._closed.wait(CHECK_INTERVAL):
            if self._alive():
                continue
            if self.reconnects >= self.settings.max_reconnects:
                self._fail(f"the SSH session to {self.ssh} dropped {self.reconnects + 1} times")
                return
            self._set(TunnelState.RECONNECTING)
            with self._lock:
                client, self._client = self._client, None
            if client is not None:
                client.close()
            try:
                self._connect()
            except TunnelError as exc:
                if not self._closed.is_set():
                    self._fail(str(exc))
                return
            self.reconnects += 1
            self._set(TunnelState.ACTIVE)

    def _fail(self, reason: str) -> None:
        self._set(TunnelState.FAILED, reason)
        self.close()

    def _spawn(self, target: Callable[..., None], role: str, *args: Any) -> None:
        thread = threading.Thread(
            target=target, args=args, name=f"tunnel-{self.ssh.host}-{role}", daemon=True
        )
        thread.start()
        if role in ("supervisor", "listener"):  # the per-connection pumps end with their sockets
            self._threads.append(thread)

    def _carry(self, channel: paramiko.Channel, sock: socket.socket) -> None:
        link = (channel, sock)
        with self._lock:
            self._links.add(link)
        try:
            pump(channel, sock, self._closed)
        finally:
            with self._lock:
                self._links.discard(link)


class ForwardTunnel(Tunnel):
    """127.0.0.1:<port> here → SSH host → `target` (as the SSH host sees it)."""

    kind = "forward"

    def __init__(self, *args: Any, local_port: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._local_port = local_port
        self._listener: socket.socket | None = None

    def _started(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((LOOPBACK, self._local_port))
            listener.listen(64)
            listener.settimeout(CHECK_INTERVAL)  # accept() wakes up to notice close()
        except OSError as exc:
            listener.close()
            raise TunnelError(f"cannot listen on {LOOPBACK}:{self._local_port}: {exc}") from exc
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._spawn(self._accept, "listener")

    def _stopped(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            listener = self._listener
            if listener is None:
                return
            try:
                sock, peer = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            self._spawn(self._forward, "conn", sock, peer)

    def _forward(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        transport = self.transport
        if transport is None or not transport.is_active():
            log.info("forward tunnel via %s is down: refusing a connection", self.ssh)
            sock.close()  # the client retries once the tunnel is back
            return
        try:
            channel = transport.open_channel(
                "direct-tcpip",
                (self.target.host, self.target.port),
                peer,
                timeout=self.settings.connect_timeout,
            )
        except (OSError, EOFError, paramiko.SSHException) as exc:
            log.warning("%s cannot reach %s: %s", self.ssh, self.target, describe(exc))
            sock.close()
            return
        self._carry(channel, sock)


class ReverseTunnel(Tunnel):
    """127.0.0.1:<port> on the SSH host → here → `target` (as seen from here)."""

    kind = "reverse"

    def __init__(self, *args: Any, remote_port: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.port = remote_port or None

    def _attach(self, transport: paramiko.Transport) -> None:
        wanted = self.port or 0
        try:
            port = transport.request_port_forward(LOOPBACK, wanted, handler=self._on_channel)
        except paramiko.SSHException as exc:
            if not wanted:
                raise TunnelError(f"{self.ssh} refused to forward a port: {exc}") from exc
            # The old port is taken (or not yet freed): any port will do, the rendezvous
            # file tells the child which.
            log.info("%s refused port %d again (%s); asking for any port", self.ssh, wanted, exc)
            try:
                port = transport.request_port_forward(LOOPBACK, 0, handler=self._on_channel)
            except paramiko.SSHException as again:
                raise TunnelError(f"{self.ssh} refused to forward a port: {again}") from again
        self.port = port

    def _stopped(self) -> None:
        transport, port = self.transport, self.port
        if transport is not None and transport.is_active() and port:
            try:
                transport.cancel_port_forward(LOOPBACK, port)
            except (OSError, EOFError, paramiko.SSHException) as exc:
                log.debug("cancelling the remote forward: %s", describe(exc))

    def _on_channel(self, channel: paramiko.Channel, origin: Any, server: Any) -> None:
        # Called on paramiko's transport thread, which must not block.
        self._spawn(self._reverse, "conn", channel)

    def _reverse(self, channel: paramiko.Channel) -> None:
        try:
            sock = socket.create_connection(
                (self.target.host, self.target.port), self.settings.connect_timeout
            )
        except OSError as exc:
            log.warning("reverse tunnel: cannot reach %s: %s", self.target, describe(exc))
            with contextlib.suppress(OSError, EOFError, paramiko.SSHException):
                channel.close()
            return
        sock.settimeout(None)
        self._carry(channel, sock)
