"""`sysinfo` on the endpoint: psutil and nvidia-smi behind the contract
(orbit_mq/contracts/sysinfo.py)."""

from __future__ import annotations

import math
import os
import platform
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

import psutil

from orbit_mq.contracts import sysinfo as contract
from orbit_mq.contracts.sysinfo import (
    CpuInfo,
    DiskInfo,
    GpuInfo,
    HostRoleReport,
    InterfaceInfo,
    MemoryInfo,
    Metrics,
    SwapInfo,
)
from orbit_mq.rpc import in_thread
from orbit_mq.workers.hostinfo import detect_host_role
from orbit_mq.workers.logs import bounded_logger
from orbit_mq.workers.plugin import Plugin

T = TypeVar("T")

log = bounded_logger("orbit_mq.plugin.sysinfo")

# Network and parallel filesystems: the same files are visible from other nodes.
SHARED_FSTYPES = frozenset(
    {
        "nfs", "nfs4", "lustre", "gpfs", "beegfs", "fhgfs", "ceph", "cephfs", "fuse.ceph",
        "dvs", "panfs", "cifs", "smb3", "smbfs", "glusterfs", "fuse.glusterfs", "sshfs",
        "fuse.sshfs", "afs", "wekafs", "orangefs", "pvfs2", "cvfs",
    }
)  # fmt: skip
# Read-only images (snaps, Apptainer/Singularity containers) mounted from loop devices.
SKIPPED_FSTYPES = frozenset({"squashfs"})

NVIDIA_SMI_FIELDS = "index,name,memory.total,memory.used,utilization.gpu,temperature.gpu"
NVIDIA_SMI_TIMEOUT = 5.0


def _try(what: str, probe: Callable[[], T]) -> T | None:
    """`probe()`, or None where psutil lacks or fails it on this platform."""
    try:
        return probe()
    except Exception as exc:  # one unsupported probe must not fail the whole report
        log.debug("%s unavailable: %s: %s", what, type(exc).__name__, exc)
        return None


def _prime_cpu_percent() -> None:
    # cpu_percent(interval=None) measures against the previous call; the first returns zeros.
    _try("cpu percent", lambda: psutil.cpu_percent(interval=None))
    _try("per-cpu percent", lambda: psutil.cpu_percent(interval=None, percpu=True))


def _cpu() -> CpuInfo:
    load = _try("load average", lambda: psutil.getloadavg())
    freq = _try("cpu frequency", lambda: psutil.cpu_freq())
    return CpuInfo(
        logical=_try("logical cpus", lambda: psutil.cpu_count(logical=True)) or os.cpu_count() or 1,
        physical=_try("physical cores", lambda: psutil.cpu_count(logical=False)),
        load_1m=load[0] if load else None,
        load_5m=load[1] if load else None,
        load_15m=load[2] if load else None,
        percent=_try("cpu percent", lambda: psutil.cpu_percent(interval=None)),
        percent_per_cpu=_try("per-cpu percent", lambda: psutil.cpu_percent(percpu=True)) or [],
        frequency_mhz=(freq.current or None) if freq else None,
    )


def _memory() -> MemoryInfo:
    mem = psutil.virtual_memory()
    return MemoryInfo(total=mem.total, available=mem.available, used=mem.used, percent=mem.percent)


def _swap() -> SwapInfo | None:
    swap = _try("swap", lambda: psutil.swap_memory())
    if swap is None:
        return None
    return SwapInfo(total=swap.total, used=swap.used, free=swap.free, percent=swap.percent)


def _disks() -> list[DiskInfo]:
    local = _try("partitions", lambda: psutil.disk_partitions(all=False)) or []
    # all=False drops "nodev" filesystems, and on Linux those include nfs, lustre and gpfs.
    every = _try("all partitions", lambda: psutil.disk_partitions(all=True)) or []
    shared = [part for part in every if part.fstype in SHARED_FSTYPES]
    disks: list[DiskInfo] = []
    seen: set[str] = set()
    for part in [*local, *shared]:
        if part.mountpoint in seen or part.fstype in SKIPPED_FSTYPES:
            continue
        seen.add(part.mountpoint)
        disk = _disk(part.device, part.mountpoint, part.fstype)
        if disk is not None:
            disks.append(disk)
    return disks


def _disk(device: str, mountpoint: str, fstype: str) -> DiskInfo | None:
    where = DiskInfo(
        device=device,
        mountpoint=mountpoint,
        fstype=fstype,
        shared=fstype in SHARED_FSTYPES,
        total=None,
        used=None,
        free=None,
        percent=None,
    )
    try:
        usage = psutil.disk_usage(mountpoint)
    except FileNotFoundError:  # unmounted since disk_partitions() listed it
        return None
    except OSError as exc:  # permission denied, stale NFS handle...: still worth listing
        log.warning("cannot read usage of %s: %s", mountpoint, exc)
        return where
    figures = {"total": usage.total, "used": usage.used, "free": usage.free}
    return where.model_copy(update={**figures, "percent": usage.percent})


def _interfaces() -> list[InterfaceInfo]:
    addrs = _try("interface addresses", lambda: psutil.net_if_addrs()) or {}
    stats = _try("interface stats", lambda: psutil.net_if_stats()) or {}
    counters = _try("interface counters", lambda: psutil.net_io_counters(pernic=True)) or {}
    interfaces = []
    for name in sorted(addrs.keys() | stats.keys()):
        stat, io = stats.get(name), counters.get(name)
        interfaces.append(
            InterfaceInfo(
                name=name,
                addresses=[addr.address for addr in addrs.get(name, [])],
                is_up=stat.isup if stat else False,
                speed_mbps=(stat.speed or None) if stat else None,  # psutil reports 0 when unknown
                bytes_sent=io.bytes_sent if io else None,
                bytes_recv=io.bytes_recv if io else None,
            )
        )
    return interfaces


def _gpus() -> list[GpuInfo]:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    command = [smi, f"--query-gpu={NVIDIA_SMI_FIELDS}", "--format=csv,noheader,nounits"]
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT, check=False
        )
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.warning("nvidia-smi failed: %s: %s", type(exc).__name__, exc)
        return []
    if proc.returncode != 0:
        log.warning("nvidia-smi exited with %s: %s", proc.returncode, str(proc.stderr)[:200])
        return []
    lines = [line for line in str(proc.stdout).splitlines() if line.strip()]
    return [gpu for gpu in map(_parse_gpu, lines) if gpu is not None]


def _parse_gpu(line: str) -> GpuInfo | None:
    parts = [part.strip() for part in line.split(",")]
    if len(parts) < 6 or not parts[0].isdigit():
        log.warning("unexpected nvidia-smi output: %r", line[:200])
        return None
    total, used, utilization, temperature = (_number(part) for part in parts[-4:])
    return GpuInfo(
        index=int(parts[0]),
        name=",".join(parts[1:-4]),  # a name containing commas spans several fields
        memory_total_mib=None if total is None else int(total),
        memory_used_mib=None if used is None else int(used),
        utilization_percent=utilization,
        temperature_c=temperature,
    )


def _number(text: str) -> float | None:
    """A figure from nvidia-smi, or None for "[N/A]", "[Not Supported]" and the like."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


class SysInfo(Plugin, contract.SysInfo):
    async def start(self) -> None:
        await super().start()
        _prime_cpu_percent()

    @in_thread
    def metrics(self) -> Metrics:
        return sample()

    async def homedir(self) -> str:
        # $HOME, or one passwd lookup without it: no filesystem access to move off the loop.
        return os.path.expanduser("~")  # noqa: ASYNC240

    async def host_role(self) -> HostRoleReport:
        info = detect_host_role()
        return HostRoleReport(
            role=info.role,
            scheduler=info.scheduler,
            psij_executor=info.psij_executor,
            job_id=info.job_id,
        )


def sample() -> Metrics:
    """A snapshot of this host (blocking: psutil, nvidia-smi)."""
    boot = psutil.boot_time()
    now = time.time()
    return Metrics(
        hostname=socket.gethostname(),
        platform=platform.platform(),
        time=datetime.fromtimestamp(now, UTC),
        boot_time=datetime.fromtimestamp(boot, UTC),
        uptime_seconds=max(0.0, now - boot),
        cpu=_cpu(),
        memory=_memory(),
        swap=_swap(),
        disks=_disks(),
        interfaces=_interfaces(),
        gpus=_gpus(),
    )
