"""The `sysinfo` contract: what a host is and how busy it is — CPU, memory, disks, network and
GPUs."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from orbit_mq.contract import Contract
from orbit_mq.protocol import HostRole
from orbit_mq.rpc import rpc


class CpuInfo(BaseModel):
    logical: int = Field(description="Logical CPUs (hardware threads).")
    physical: int | None = Field(description="Physical cores; null where unknown.")
    load_1m: float | None = Field(description="Load average over 1 minute; null if unsupported.")
    load_5m: float | None = Field(description="Load average over 5 minutes; null if unsupported.")
    load_15m: float | None = Field(description="Load average over 15 minutes; null if unsupported.")
    percent: float | None = Field(description="Total CPU use since the previous sample, %.")
    percent_per_cpu: list[float] = Field(description="Use of each logical CPU, %, as `percent`.")
    frequency_mhz: float | None = Field(description="Current clock speed, MHz; null if unknown.")


class MemoryInfo(BaseModel):
    total: int = Field(description="Physical memory, bytes.")
    available: int = Field(description="Memory available to new processes without swapping, bytes.")
    used: int = Field(description="Memory in use, bytes.")
    percent: float = Field(description="Share of memory in use, %.")


class SwapInfo(BaseModel):
    total: int = Field(description="Swap space, bytes.")
    used: int = Field(description="Swap in use, bytes.")
    free: int = Field(description="Free swap, bytes.")
    percent: float = Field(description="Share of swap in use, %.")


class DiskInfo(BaseModel):
    device: str = Field(description="Device or remote source, e.g. /dev/sda1 or server:/export.")
    mountpoint: str = Field(description="Where the filesystem is mounted.")
    fstype: str = Field(description="Filesystem type, e.g. ext4, xfs, nfs4, lustre.")
    shared: bool = Field(description="True for network and parallel filesystems.")
    total: int | None = Field(description="Size, bytes; null if the mount could not be read.")
    used: int | None = Field(description="Used space, bytes; null if the mount could not be read.")
    free: int | None = Field(description="Free space, bytes; null if the mount could not be read.")
    percent: float | None = Field(description="Share used, %; null if the mount could not be read.")


class InterfaceInfo(BaseModel):
    name: str = Field(description="Interface name, e.g. eth0 or ib0.")
    addresses: list[str] = Field(description="IPv4, IPv6 and MAC addresses of the interface.")
    is_up: bool = Field(description="Whether the interface is up.")
    speed_mbps: int | None = Field(description="Link speed, Mbit/s; null if unknown.")
    bytes_sent: int | None = Field(description="Bytes sent since boot; null if unknown.")
    bytes_recv: int | None = Field(description="Bytes received since boot; null if unknown.")


class GpuInfo(BaseModel):
    index: int = Field(description="GPU index as nvidia-smi numbers it.")
    name: str = Field(description="Product name.")
    memory_total_mib: int | None = Field(description="Memory, MiB; null if not reported.")
    memory_used_mib: int | None = Field(description="Memory in use, MiB; null if not reported.")
    utilization_percent: float | None = Field(description="Utilisation, %; null if not reported.")
    temperature_c: float | None = Field(description="Temperature, °C; null if not reported.")


class Metrics(BaseModel):
    hostname: str = Field(description="The host's name.")
    platform: str = Field(description="Operating system, e.g. Linux-5.14-x86_64-with-glibc2.34.")
    time: datetime = Field(description="When the sample was taken (UTC).")
    boot_time: datetime = Field(description="When the host booted (UTC).")
    uptime_seconds: float = Field(description="Seconds since boot.")
    cpu: CpuInfo = Field(description="Processor counts, load and use.")
    memory: MemoryInfo = Field(description="Physical memory.")
    swap: SwapInfo | None = Field(description="Swap space; null if it could not be read.")
    disks: list[DiskInfo] = Field(description="Mounted local, network and parallel filesystems.")
    interfaces: list[InterfaceInfo] = Field(description="Network interfaces.")
    gpus: list[GpuInfo] = Field(description="NVIDIA GPUs; empty without a working nvidia-smi.")


class HostRoleReport(BaseModel):
    role: HostRole = Field(description="login, compute (inside a batch job) or standalone.")
    scheduler: str = Field(description="Batch scheduler found, e.g. slurm or pbs; 'none' if none.")
    psij_executor: str = Field(description="PSI/J executor name to submit jobs with.")
    job_id: str | None = Field(description="The batch job this endpoint runs in, on compute nodes.")


class SysInfo(Contract):
    name = "sysinfo"
    version = "1.0.0"

    @rpc
    async def metrics(self) -> Metrics:
        """A snapshot of the host: CPU, memory, swap, filesystems, network interfaces and GPUs.

        CPU percentages cover the time since the previous `metrics` call (or the plugin's
        start). Figures the platform cannot provide are null; a filesystem that cannot be
        read is listed with null usage, and GPUs are listed only where `nvidia-smi` works.
        """
        raise NotImplementedError

    @rpc
    async def homedir(self) -> str:
        """The home directory of the user the endpoint runs as."""
        raise NotImplementedError

    @rpc
    async def host_role(self) -> HostRoleReport:
        """Whether the endpoint runs on a login node, inside a batch job or on a standalone host,
        with the batch scheduler and PSI/J executor to use and the current job id."""
        raise NotImplementedError
