"""`orbit-mq sysinfo`: what an endpoint's host is and how busy it is."""

from __future__ import annotations

import asyncio
from typing import Any

import typer
from pydantic import BaseModel
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from orbit_mq.cli.common import (
    EndpointArg,
    JsonFlag,
    TimeoutOption,
    UrlOption,
    guarded,
    run_async,
    settings_for,
)
from orbit_mq.cli.output import console, human_bytes, human_duration, percent, print_json
from orbit_mq.client import Fabric
from orbit_mq.config import Settings
from orbit_mq.contracts.sysinfo import HostRoleReport, Metrics, SysInfo


class HostReport(BaseModel):
    """The answers of sysinfo.homedir, sysinfo.host_role and sysinfo.metrics."""

    homedir: str
    host_role: HostRoleReport
    metrics: Metrics

    def as_json(self) -> dict[str, Any]:
        dumped: dict[str, Any] = self.model_dump(mode="json")
        return dumped


async def fetch_report(fabric: Fabric, endpoint: str) -> HostReport:
    """Ask the endpoint's sysinfo plugin the three questions at once (no session needed)."""
    sysinfo = await fabric.endpoint(endpoint).plugin(SysInfo, session=False)
    homedir, role, metrics = await asyncio.gather(
        sysinfo.homedir(), sysinfo.host_role(), sysinfo.metrics()
    )
    return HostReport(homedir=homedir, host_role=role, metrics=metrics)


async def _report(settings: Settings, endpoint: str) -> HostReport:
    async with Fabric(settings) as fabric:
        return await fetch_report(fabric, endpoint)


def _overview(report: HostReport) -> Table:
    m, role = report.metrics, report.host_role
    cpu, mem = m.cpu, m.memory
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    job = f", job {role.job_id}" if role.job_id else ""
    loads = (cpu.load_1m, cpu.load_5m, cpu.load_15m)
    rows = [
        ("host", f"{m.hostname} ({m.platform}), up {human_duration(m.uptime_seconds)}"),
        ("role", f"{role.role.value} (scheduler {role.scheduler}, psij {role.psij_executor}{job})"),
        ("home", report.homedir),
        ("cpu", f"{cpu.logical} logical / {cpu.physical or '?'} physical, {percent(cpu.percent)}"),
        ("load", " ".join("?" if value is None else f"{value:.2f}" for value in loads)),
        (
            "memory",
            f"{human_bytes(mem.used)} / {human_bytes(mem.total)} used ({percent(mem.percent)}), "
            f"{human_bytes(mem.available)} available",
        ),
    ]
    if m.swap is not None and m.swap.total:
        swap = f"{human_bytes(m.swap.used)} / {human_bytes(m.swap.total)} used"
        rows.append(("swap", swap))
    for label, value in rows:
        grid.add_row(label, value)
    return grid


def _disks(metrics: Metrics) -> Table:
    table = Table(title="disks", title_justify="left")
    for column in ("mount", "type", "size", "used", "free", "use"):
        table.add_column(column, justify="left" if column in ("mount", "type") else "right")
    for disk in metrics.disks:
        kind = f"{disk.fstype} (shared)" if disk.shared else disk.fstype
        sizes = (human_bytes(disk.total), human_bytes(disk.used), human_bytes(disk.free))
        table.add_row(disk.mountpoint, kind, *sizes, percent(disk.percent))
    return table


def _network(metrics: Metrics) -> Text:
    up = [nic for nic in metrics.interfaces if nic.is_up]
    parts = [f"{nic.name}" + (f" {nic.speed_mbps} Mbit/s" if nic.speed_mbps else "") for nic in up]
    return Text(f"network: {len(up)} up: {', '.join(parts) or 'none'}")


def _gpus(metrics: Metrics) -> RenderableType:
    if not metrics.gpus:
        return Text("gpus: none")
    table = Table(title="gpus", title_justify="left")
    for column in ("#", "name", "memory", "util", "temp"):
        table.add_column(column)
    for gpu in metrics.gpus:
        used, total = gpu.memory_used_mib, gpu.memory_total_mib
        memory = f"{used if used is not None else '?'} / {total if total is not None else '?'} MiB"
        temp = "?" if gpu.temperature_c is None else f"{gpu.temperature_c:.0f} °C"
        table.add_row(str(gpu.index), gpu.name, memory, percent(gpu.utilization_percent), temp)
    return table


def render_report(report: HostReport) -> Group:
    """A compact summary: overview lines, disks table, network line, GPUs."""
    m = report.metrics
    return Group(_overview(report), _disks(m), _network(m), _gpus(m))


@guarded
def sysinfo(
    ctx: typer.Context,
    endpoint: EndpointArg,
    as_json: JsonFlag = False,
    timeout: TimeoutOption = None,
    url: UrlOption = None,
) -> None:
    """Show ENDPOINT's host: CPU, load, memory, disks, network and GPUs (via sysinfo)."""
    settings = settings_for(ctx, url=url, timeout=timeout)
    report = run_async(_report(settings, endpoint))
    if as_json:
        print_json(report.as_json())
    else:
        console.print(render_report(report))
