"""Which node a batch job runs on: a setting, the batch system, or the child's announcement in
its rendezvous file (the scheduler commands block: they run in threads)."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from orbit_mq.contracts.psij.errors import TunnelError
from orbit_mq.workers.logs import bounded_logger
from orbit_mq.workers.tunnels import rendezvous
from orbit_mq.workers.tunnels.settings import Address, TunnelSettings

log = bounded_logger("orbit_mq.tunnels")

COMMAND_TIMEOUT = 15.0  # s per scheduler command
NODE_POLL = 0.25  # s between reads of the rendezvous file while waiting for the child's node
NODE_WAIT_MIN = 10.0  # s: the least time given to a child to announce its node


def _run(*command: str) -> str | None:
    if shutil.which(command[0]) is None:
        return None
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.info("%s failed: %s", " ".join(command), exc)
        return None
    return done.stdout


def slurm_nodes(native_id: str) -> list[str]:
    listed = (_run("squeue", "-h", "-j", native_id, "-o", "%N") or "").strip()
    if not listed or listed == "(null)":
        return []
    if "[" not in listed and "," not in listed:
        return [listed]
    expanded = _run("scontrol", "show", "hostnames", listed) or ""
    return [line.strip() for line in expanded.splitlines() if line.strip()]


def pbs_nodes(native_id: str) -> list[str]:
    text = _run("qstat", "-f", native_id) or ""
    # exec_host = node1/0*2+node2/1 (continuation lines are indented)
    match = re.search(r"exec_host\s*=\s*(.+?)(?:\n\S|\n\s+\w+\s*=|\Z)", text, re.DOTALL)
    if match is None:
        return []
    value = "".join(match[1].split())
    hosts = [part.split("/")[0] for part in value.split("+") if part]
    return list(dict.fromkeys(hosts))


def job_nodes(executor: str, native_id: str) -> list[str]:
    """The job's nodes in order, or [] when the batch system does not say (or is unknown)."""
    if executor == "slurm":
        return slurm_nodes(native_id)
    if executor == "pbs":
        return pbs_nodes(native_id)
    return []


async def find_node(
    settings: TunnelSettings,
    executor: str,
    native_id: str | None,
    meeting: Path,
    ended: Callable[[], bool],
) -> Address | None:
    """The SSH address of the job's (first) node; None if the job ends (`ended()`) first."""
    if settings.node:
        return settings.ssh_address(settings.node)
    if native_id:
        nodes = await asyncio.to_thread(job_nodes, executor, native_id)
        if nodes:
            return settings.ssh_address(nodes[0])
    wait = max(settings.retry_window, NODE_WAIT_MIN)
    try:
        async with asyncio.timeout(wait):
            while not ended():  # polled: the child may write it from another host
                info = await asyncio.to_thread(rendezvous.read, meeting)
                if info is not None and info.node:
                    return settings.ssh_address(info.node)
                await asyncio.sleep(NODE_POLL)
    except TimeoutError:
        raise TunnelError(
            f"cannot tell which node {executor} job {native_id} runs on: the batch system does "
            f"not say and the child did not announce itself in {meeting} within {wait:g} s; set "
            "ORBIT_MQ_TUNNEL_NODE"
        ) from None
    return None
