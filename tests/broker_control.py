"""Restarting the local RabbitMQ node, for the tests (and bench/soak_restarts.py) that show
what survives a broker restart. Needs root, rabbitmqctl and the broker on this host."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import time
from urllib.parse import urlsplit

BOOT_TIMEOUT = 120.0  # s for a node to answer AMQP again


def restartable(url: str) -> bool:
    local = urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1")
    return local and os.geteuid() == 0 and shutil.which("rabbitmqctl") is not None


def answers_amqp(port: int = 5672, host: str = "127.0.0.1", tries: int = 3) -> bool:
    """Whether an AMQP broker answers the protocol header (a busy one can take seconds)."""
    for _ in range(tries):
        try:
            with socket.create_connection((host, port), timeout=5) as sock:
                sock.sendall(b"AMQP\x00\x00\x09\x01")
                return sock.recv(1)[:1] == b"\x01"
        except ConnectionRefusedError:
            return False
        except OSError:
            continue  # timed out: busy, ask again
    return False


async def _run(*command: str, timeout: float = 120) -> None:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, err = await asyncio.wait_for(process.communicate(), timeout)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {err.decode().strip()}")


async def wait_reachable(port: int = 5672, timeout: float = BOOT_TIMEOUT) -> None:
    """Until the broker answers AMQP (polled every 0.2 s, at most `timeout` s)."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(answers_amqp, port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the broker did not answer on port {port} within {timeout} s")
        await asyncio.sleep(0.2)  # polling a port: there is no event to wait on


async def restart(full: bool = False) -> float:
    """Restart the local node: its app (`stop_app`, `start_app`, ≈ 5 s), or with `full` the
    whole node (`rabbitmqctl stop`, `rabbitmq-server -detached`, ≈ 14 s), as an operator
    would. Both close every connection with CONNECTION_FORCED. Returns when the broker answers
    again, with the seconds it was away."""
    started = time.monotonic()
    if full:
        await _run("rabbitmqctl", "-q", "stop")
        await _run("rabbitmq-server", "-detached")
        await wait_reachable()
        await _run("rabbitmqctl", "-q", "await_startup", "--timeout", str(int(BOOT_TIMEOUT)))
    else:
        await _run("rabbitmqctl", "-q", "stop_app")
        await _run("rabbitmqctl", "-q", "start_app")
        await wait_reachable()
    return time.monotonic() - started


async def ensure_running() -> None:
    """Bring the local broker back if a test left it down (its app or the whole node)."""
    if await asyncio.to_thread(answers_amqp):
        return
    try:
        await _run("rabbitmqctl", "-q", "start_app", timeout=60)
    except (RuntimeError, TimeoutError):
        await _run("rabbitmq-server", "-detached")
    await wait_reachable()
