"""A real sshd on 127.0.0.1 for the tunnel tests (the login and compute node alike).

    from sshd_support import SshServer, sshd

    def test_x(sshd: SshServer) -> None: ...

The session fixture runs scripts/ensure-sshd.sh (root only; it installs OpenSSH if needed and
reuses a running server). Without root the tests skip locally and fail in CI (`CI=true`).
`ORBIT_MQ_SSHD_DIR` and `ORBIT_MQ_SSHD_PORT` choose the server's directory and port.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from orbit_mq.workers.tunnels import TunnelSettings

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "ensure-sshd.sh"
SETUP_TIMEOUT = 300  # s: a first run installs openssh-server


@dataclass(frozen=True)
class SshServer:
    host: str
    port: int
    user: str
    key_file: Path
    known_hosts: Path
    directory: Path

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def settings(self, **overrides: Any) -> TunnelSettings:
        """Tunnel settings that log in here (short retries for tests)."""
        values: dict[str, Any] = {
            "user": self.user,
            "key_file": self.key_file,
            "known_hosts": self.known_hosts,
            "retry_window": 10.0,
            "connect_timeout": 5.0,
        }
        return TunnelSettings(**{**values, **overrides})

    def env(self) -> dict[str, str]:
        """The same as ORBIT_MQ_TUNNEL_* variables, for endpoint processes."""
        return {
            "ORBIT_MQ_TUNNEL_USER": self.user,
            "ORBIT_MQ_TUNNEL_KEY_FILE": str(self.key_file),
            "ORBIT_MQ_TUNNEL_KNOWN_HOSTS": str(self.known_hosts),
            "ORBIT_MQ_TUNNEL_RETRY_WINDOW": "10",
        }

    def sessions(self, client_ports: set[int]) -> list[int]:
        """The pids of the sshd processes serving connections from these local ports."""
        listener = int((self.directory / "sshd.pid").read_text().strip())
        return sorted(
            {
                conn.pid
                for conn in psutil.net_connections("tcp")
                if conn.pid
                and conn.pid != listener
                and conn.laddr
                and conn.laddr.port == self.port
                and conn.raddr
                and conn.raddr.port in client_ports
            }
        )

    def kill_sessions(self, client_ports: set[int]) -> list[int]:
        """Kill the sshd processes of these SSH connections: the sessions drop as if the
        network had failed. Returns the pids killed (none found: an empty list)."""
        pids = self.sessions(client_ports)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                os.kill(pid, signal.SIGKILL)
        return pids


def ssh_client_ports(pid: int, port: int) -> set[int]:
    """The local ports of process `pid`'s TCP connections to `port`."""
    return {
        conn.laddr.port
        for conn in psutil.Process(pid).net_connections("tcp")
        if conn.raddr and conn.raddr.port == port and conn.status == psutil.CONN_ESTABLISHED
    }


def _start() -> tuple[SshServer | None, str]:
    directory = Path(os.environ.get("ORBIT_MQ_SSHD_DIR", "/tmp/orbit-mq-sshd"))
    port = int(os.environ.get("ORBIT_MQ_SSHD_PORT", "2222"))
    if os.geteuid() != 0:
        return None, (
            "the tunnel tests need a loopback sshd, which only root can start: run them as "
            f"root (scripts/ensure-sshd.sh sets it up on 127.0.0.1:{port})"
        )
    try:
        done = subprocess.run(
            ["bash", str(SCRIPT)],
            capture_output=True,
            text=True,
            timeout=SETUP_TIMEOUT,
            env={
                **os.environ,
                "ORBIT_MQ_SSHD_DIR": str(directory),
                "ORBIT_MQ_SSHD_PORT": str(port),
            },
        )
    except subprocess.TimeoutExpired:
        return None, f"{SCRIPT} did not finish within {SETUP_TIMEOUT} s"
    if done.returncode != 0 or "ready:" not in done.stdout:
        return None, f"{SCRIPT} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}"
    server = SshServer(
        host="127.0.0.1",
        port=port,
        user="root",
        key_file=directory / "id_ed25519",
        known_hosts=directory / "known_hosts",
        directory=directory,
    )
    return server, ""


@pytest.fixture(scope="session")
def sshd() -> SshServer:
    """The loopback sshd (started by scripts/ensure-sshd.sh when needed)."""
    server, problem = _start()
    if server is None:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    return server
