"""SSH tunnels against a real sshd on 127.0.0.1 (login and compute node alike), the real broker
and PSI/J's local executor.

The endpoints under test get a broker URL whose host does not resolve
(`broker.orbit.invalid`): a direct connection provably fails, so whatever they serve went
through the tunnel. Drops are real: the sshd process of a session is killed.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import StartEndpoint, Watcher, cli_env, orbit_cli, stop_process, wait_online
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sshd_support import SshServer, ssh_client_ports, sshd

import orbit_mq
from orbit_mq.broker import connect
from orbit_mq.config import Settings
from orbit_mq.contracts.psij import Job
from orbit_mq.errors import BrokerUnavailable
from orbit_mq.protocol import PresenceStatus
from orbit_mq.workers.endpoint import Endpoint
from orbit_mq.workers.plugins.psij import PsiJ
from orbit_mq.workers.plugins.psij.tunneled import EndpointNameMissing, TunnelConflict, Tunnels
from orbit_mq.workers.tunnels import (
    ForwardTunnel,
    HostKeyRejected,
    TunnelError,
    TunnelSettings,
    TunnelState,
    rendezvous,
)
from orbit_mq.workers.tunnels.settings import Address, broker_address

__all__ = ["sshd"]  # the session fixture, used by name

pytestmark = pytest.mark.single_node  # a tunnel carries one broker address

UNREACHABLE = "amqp://guest:guest@broker.orbit.invalid:5672/"
# The URL names the broker as the SSH host would: plain AMQP on that leg, which must be asked for.
INSECURE = {"ORBIT_MQ_INSECURE": "1"}


def free_port() -> int:
    """A loopback port nothing listens on (bound and released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def child_env(settings: Settings) -> dict[str, str]:
    """What a child endpoint started as a job needs to differ from the parent."""
    return {
        "ORBIT_MQ_HOME": str(settings.home / "children"),
        "ORBIT_MQ_CONFIG": str(settings.home / "no-config.toml"),
        "ORBIT_MQ_HEARTBEAT_INTERVAL": "0.5",
        **INSECURE,
    }


async def process_ended(pid: int, timeout: float) -> None:
    """Wait until process `pid` exits, without reaping it (its parent, psij, does that)."""
    try:
        descriptor = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    ended = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(descriptor, ended.set)
    try:
        async with asyncio.timeout(timeout):
            await ended.wait()
    finally:
        loop.remove_reader(descriptor)
        os.close(descriptor)


async def assert_unreachable_directly(settings: Settings) -> None:
    with pytest.raises(BrokerUnavailable):
        await connect(
            settings.model_copy(update={"url": UNREACHABLE, "insecure": True}), "direct attempt"
        )


async def until_online_again(fabric: orbit_mq.Fabric, endpoint: str, drop: Any) -> None:
    """Run `drop()`, then wait for the endpoint's next `online` presence (sent on reconnect)."""
    async with fabric.presence(f"{endpoint}.online") as presence:
        drop()
        async with asyncio.timeout(60):
            async for info in presence:
                if info.status == PresenceStatus.ONLINE:
                    return


# -- the tunnel itself ------------------------------------------------------------------------


async def test_forward_tunnel_carries_amqp(sshd: SshServer, settings: Settings) -> None:
    await assert_unreachable_directly(settings)
    tunnel = ForwardTunnel(
        Address(sshd.host, sshd.port), broker_address(settings.url), sshd.settings()
    )
    await asyncio.to_thread(tunnel.open)
    try:
        assert tunnel.state is TunnelState.ACTIVE and tunnel.port
        port = tunnel.port
        through = settings.model_copy(update={"url": UNREACHABLE, "insecure": True})
        connection = await connect(through, "through the tunnel", lambda: ("127.0.0.1", port))
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(exclusive=True)
            assert queue.name
    finally:
        await asyncio.to_thread(tunnel.close)
    assert tunnel.state is TunnelState.CLOSED
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


async def test_an_unknown_host_key_is_refused(sshd: SshServer, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    tunnel = ForwardTunnel(
        Address(sshd.host, sshd.port),
        Address("127.0.0.1", 5672),
        sshd.settings(known_hosts=known_hosts, retry_window=60),
    )
    started = time.monotonic()
    with pytest.raises(HostKeyRejected, match=r"is not in .*known_hosts.*ssh-keyscan") as refused:
        await asyncio.to_thread(tunnel.open)
    assert time.monotonic() - started < 30  # refused at once, not retried for the window
    assert f"[127.0.0.1]:{sshd.port}" in str(refused.value)
    assert tunnel.state is TunnelState.FAILED
    assert known_hosts.read_text() == ""  # nothing was added behind our back


async def test_a_changed_host_key_is_refused(sshd: SshServer, tmp_path: Path) -> None:
    other = Ed25519PrivateKey.generate().public_key()
    line = other.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {line}\n")
    tunnel = ForwardTunnel(
        Address(sshd.host, sshd.port),
        Address("127.0.0.1", 5672),
        sshd.settings(known_hosts=known_hosts),
    )
    with pytest.raises(HostKeyRejected, match="differs"):
        await asyncio.to_thread(tunnel.open)


async def test_logins_are_retried_for_the_retry_window_only(sshd: SshServer) -> None:
    tunnel = ForwardTunnel(
        Address("127.0.0.1", free_port()),
        Address("127.0.0.1", 5672),
        sshd.settings(retry_window=1.5),
    )
    started = time.monotonic()
    with pytest.raises(TunnelError, match=r"tried for 1.5 s, [2-9] attempts.*refused"):
        await asyncio.to_thread(tunnel.open)
    assert 1.5 <= time.monotonic() - started < 15


def test_the_cli_says_why_a_tunnel_cannot_open(
    sshd: SshServer, settings: Settings, name: str, tmp_path: Path
) -> None:
    (tmp_path / "known_hosts").write_text("")
    env = {
        **cli_env(settings),
        **INSECURE,
        **sshd.env(),
        "ORBIT_MQ_TUNNEL_KNOWN_HOSTS": str(tmp_path / "known_hosts"),
    }
    command = orbit_cli("endpoint", "start", "-n", name, "--url", UNREACHABLE,
                        "--tunnel", "forward", "--tunnel-via", sshd.address)  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the SSH host key of") and "known_hosts" in last


# -- an endpoint process in forward mode ----------------------------------------------------------


StartProcess = Callable[[list[str], dict[str, str]], subprocess.Popen[bytes]]


@pytest.fixture
def start_process(tmp_path: Path) -> Iterator[StartProcess]:
    """Start processes with their output in tmp_path/process-N.log; stopped after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with (tmp_path / f"process-{len(started)}.log").open("wb") as log:
            started.append(subprocess.Popen(command, env=env, stdout=log, stderr=log))
        return started[-1]

    yield start
    for process in started:
        stop_process(process)


async def test_forward_endpoint_serves_only_through_the_tunnel_and_survives_a_drop(
    start_process: StartProcess,  # first: its endpoint outlives the client's teardown
    sshd: SshServer,
    settings: Settings,
    fabric: orbit_mq.Fabric,
    name: str,
    tmp_path: Path,
) -> None:
    await assert_unreachable_directly(settings)
    meeting = tmp_path / "rendezvous.json"
    command = orbit_cli(
        "endpoint", "start", "-n", name, "--plugins", "sysinfo", "--url", UNREACHABLE,
        "--tunnel", "forward", "--tunnel-via", sshd.address,
        "--tunnel-target", str(broker_address(settings.url)), "--rendezvous", str(meeting),
    )  # fmt: skip
    env = {**cli_env(settings), **INSECURE, **sshd.env()}
    process = start_process(command, env)
    try:
        await wait_online(fabric, name, timeout=60)
    except TimeoutError:
        pytest.fail(f"endpoint not online; its log:\n{(tmp_path / 'process-0.log').read_text()}")
    sysinfo = await fabric.endpoint(name).plugin("sysinfo")
    assert await sysinfo.homedir()
    info = rendezvous.read(meeting)
    assert info is not None and info.mode == "forward" and info.port and info.pid == process.pid

    before = ssh_client_ports(process.pid, sshd.port)
    assert len(before) == 1
    killed: list[int] = []
    await until_online_again(fabric, name, lambda: killed.extend(sshd.kill_sessions(before)))
    assert killed  # the session really was cut
    after = ssh_client_ports(process.pid, sshd.port)
    assert after and not after & before  # a new SSH session carries the new AMQP connection
    assert await sysinfo.homedir()
    await sysinfo.close()
    process.terminate()
    assert await asyncio.to_thread(process.wait, 20) == 0  # a clean stop
    assert not meeting.exists()  # it named a port that is gone


# -- submit_tunneled ---------------------------------------------------------------------------


@dataclass
class Parent:
    psij: Any  # the SDK proxy of its psij plugin
    endpoint: Endpoint

    @property
    def tunnels(self) -> Tunnels:
        plugin = self.endpoint.plugins["psij"]
        assert isinstance(plugin, PsiJ)
        return plugin.tunnels


StartParent = Callable[[TunnelSettings | None], Awaitable[Parent]]


@pytest.fixture
async def start_parent(
    start_endpoint: StartEndpoint,  # before fabric: the endpoint outlives the client's teardown
    fabric: orbit_mq.Fabric,
    name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[StartParent]:
    """Start the login-side endpoint with psij and these tunnel settings; the jobs it still
    runs at the end are cancelled."""
    started: list[Parent] = []

    async def start(config: TunnelSettings | None) -> Parent:
        monkeypatch.setattr(PsiJ, "tunnel_settings", config)
        endpoint = await start_endpoint(plugins=[PsiJ])
        started.append(Parent(await fabric.endpoint(name).plugin("psij"), endpoint))
        return started[-1]

    yield start
    for parent in started:
        for job in (await parent.psij.list_jobs()).jobs:
            if not job.state.final:
                await parent.psij.cancel_job(job_id=job.job_id)


def child_spec(child: str, settings: Settings) -> dict[str, Any]:
    arguments = ["-n", child, "--plugins", "sysinfo", "--url", UNREACHABLE]
    return {"arguments": arguments, "environment": child_env(settings)}


async def child_online(fabric: orbit_mq.Fabric, psij: Any, child: str, job: Job) -> None:
    try:
        await wait_online(fabric, child, timeout=60)
    except TimeoutError:
        status = await psij.get_job_status(job_id=job.job_id)
        pytest.fail(f"child not online: {status.state} {status.message}\n{status.stderr}")


async def test_reverse_tunnel_end_to_end(
    start_parent: StartParent,
    sshd: SshServer,
    settings: Settings,
    fabric: orbit_mq.Fabric,
    name: str,
    watcher: Watcher,
) -> None:
    # the "compute node" is the test sshd; the broker as the parent sees it is its own URL
    parent = await start_parent(sshd.settings(node=sshd.address))
    psij = parent.psij
    child = f"{name}-kid"
    job = await psij.submit_tunneled(
        spec=child_spec(child, settings), executor="local", tunnel="reverse"
    )
    await child_online(fabric, psij, child, job)
    kid = await fabric.endpoint(child).plugin("sysinfo")
    assert await kid.homedir()
    status = await psij.tunnel_status(name=child)
    assert (status.status, status.mode, status.job_id) == ("active", "reverse", job.job_id)
    assert status.port and status.node == sshd.address and status.reconnects == 0

    tunnels = parent.tunnels
    tunnel = tunnels.watchers[child].tunnel
    session = {tunnel.transport.sock.getsockname()[1]}
    killed: list[int] = []
    await until_online_again(fabric, child, lambda: killed.extend(sshd.kill_sessions(session)))
    assert killed
    again = await psij.tunnel_status(name=child)
    assert (again.status, again.reconnects, again.port) == ("active", 1, status.port)
    assert await kid.homedir()
    await kid.close()  # its session: the child goes now

    await psij.cancel_job(job_id=job.job_id)
    await watcher.until_ended(job.job_id, timeout=30)
    assert watcher.states(job.job_id)[-1] == "CANCELED"
    assert (await psij.tunnel_status(name=child)).status == "done"
    task = tunnels.watchers[child].task
    await asyncio.wait_for(asyncio.shield(task), 15)  # torn down
    assert tunnel.state is TunnelState.CLOSED
    with pytest.raises(OSError):  # nothing listens on the compute node any more
        socket.create_connection(("127.0.0.1", status.port), timeout=5).close()


async def test_a_reverse_tunnel_is_opened_again_after_a_parent_restart(
    start_parent: StartParent,
    sshd: SshServer,
    settings: Settings,
    fabric: orbit_mq.Fabric,
    name: str,
    watcher: Watcher,
) -> None:
    config = sshd.settings(node=sshd.address)
    parent = await start_parent(config)
    child = f"{name}-kid"
    job = await parent.psij.submit_tunneled(
        spec=child_spec(child, settings), executor="local", tunnel="reverse"
    )
    await child_online(fabric, parent.psij, child, job)

    # the parent goes (its tunnel with it) and comes back: it follows the child again
    async with fabric.presence(f"{child}.online") as presence:
        await parent.endpoint.stop()
        again = await start_parent(config)
        async with asyncio.timeout(60):
            async for info in presence:
                if info.status == PresenceStatus.ONLINE:
                    break

    status = await again.psij.tunnel_status(name=child)
    assert (status.status, status.mode, status.job_id) == ("active", "reverse", job.job_id)
    kid = await fabric.endpoint(child).plugin("sysinfo")
    assert await kid.homedir()
    await kid.close()
    # The child is stopped, not cancelled: psij 0.9.11's reaper, shared by every endpoint in
    # this process, fails on each round once a re-attached job it was told to kill is gone.
    assert job.native_id is not None
    for process in psutil.Process(int(job.native_id)).children(recursive=True):
        if "orbit_mq.cli" in process.cmdline():  # the child endpoint: it stops cleanly
            process.terminate()
    await watcher.until_ended(job.job_id, timeout=30)
    ended = await again.psij.tunnel_status(name=child)  # "failed" when its job ended FAILED
    assert ended.status in ("done", "failed") and ended.job_id == job.job_id


@pytest.mark.parametrize("problem", ["no sshd there", "unknown host key"])
async def test_a_reverse_tunnel_that_cannot_open_fails_the_job(
    start_parent: StartParent,
    sshd: SshServer,
    settings: Settings,
    name: str,
    watcher: Watcher,
    tmp_path: Path,
    problem: str,
) -> None:
    if problem == "no sshd there":
        config = sshd.settings(node=f"127.0.0.1:{free_port()}", retry_window=1)
        expected = "cannot log in"
    else:
        (tmp_path / "empty").write_text("")
        config = sshd.settings(node=sshd.address, known_hosts=tmp_path / "empty")
        expected = "is not in"
    psij = (await start_parent(config)).psij
    child = f"{name}-kid"
    job = await psij.submit_tunneled(
        spec=child_spec(child, settings), executor="local", tunnel="reverse"
    )
    await watcher.until_ended(job.job_id, timeout=60)
    last = watcher.status[job.job_id][-1]
    assert last["state"] == "FAILED" and last["message"].startswith("tunnel failed: ")
    assert expected in last["message"]
    status = await psij.tunnel_status(name=child)
    assert status.status == "failed" and expected in (status.message or "")
    await process_ended(int(job.native_id), timeout=20)  # the job was cancelled


async def test_forward_submit_tunneled(
    start_parent: StartParent,
    sshd: SshServer,
    settings: Settings,
    fabric: orbit_mq.Fabric,
    name: str,
    watcher: Watcher,
) -> None:
    # the child logs in to this "login node" with the SSH identity the parent was given
    psij = (await start_parent(sshd.settings(via=sshd.address))).psij
    child = f"{name}-kid"
    job = await psij.submit_tunneled(
        spec=child_spec(child, settings), executor="local", tunnel="forward"
    )
    await child_online(fabric, psij, child, job)
    kid = await fabric.endpoint(child).plugin("sysinfo")
    assert await kid.homedir()
    await kid.close()  # its session: the child goes now
    status = await psij.tunnel_status(name=child)
    assert (status.status, status.mode) == ("active", "forward") and status.port
    await psij.cancel_job(job_id=job.job_id)
    await watcher.until_ended(job.job_id, timeout=30)
    assert (await psij.tunnel_status(name=child)).status == "done"


async def test_submit_tunneled_needs_a_name_and_refuses_a_second_watcher(
    start_parent: StartParent, name: str, watcher: Watcher
) -> None:
    psij = (await start_parent(None)).psij
    child = f"{name}-kid"
    with pytest.raises(EndpointNameMissing, match="-n/--name"):
        await psij.submit_tunneled(spec={"arguments": ["--plugins", "sysinfo"]})
    with pytest.raises(orbit_mq.InvalidArguments, match="tunnel"):
        await psij.submit_tunneled(spec={"arguments": ["-n", child]}, tunnel="sideways")
    waiting = {"executable": "/bin/sh", "arguments": ["-c", "sleep 60", "-n", child]}
    job = await psij.submit_tunneled(spec=waiting)
    with pytest.raises(TunnelConflict, match=child):
        await psij.submit_tunneled(spec=waiting, tunnel="reverse")
    status = await psij.tunnel_status(name=child)
    assert (status.status, status.job_id) == ("no_tunnel", job.job_id)
    assert (await psij.tunnel_status(name=f"{name}-nobody")).status == "no_tunnel"
    await psij.cancel_job(job_id=job.job_id)
    await watcher.until_ended(job.job_id)
    again = await psij.submit_tunneled(spec=waiting)  # the name is free once the job ended
    assert again.job_id != job.job_id
    await psij.cancel_job(job_id=again.job_id)
