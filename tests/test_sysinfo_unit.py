"""Unit tests of the sysinfo plugin: real probes of this host, then failures faked one by one."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from orbit_mq.config import Settings
from orbit_mq.contracts.sysinfo import HostRoleReport, Metrics
from orbit_mq.protocol import HostRole
from orbit_mq.workers.plugin import PluginContext
from orbit_mq.workers.plugins.sysinfo import SysInfo, sample

SMI = "/opt/fake/bin/nvidia-smi"
JOB_VARS = ("SLURM_JOB_ID", "PBS_JOBID", "LSB_JOBID", "FLUX_JOB_ID", "COBALT_JOBID")


async def no_events(plugin: str, topic: str, data: dict[str, Any]) -> None:
    return None


@pytest.fixture
async def plugin() -> SysInfo:
    plugin = SysInfo(PluginContext(endpoint="t", settings=Settings(), publish_event=no_events))
    await plugin.start()
    return plugin


def metrics(plugin: SysInfo) -> Metrics:
    """What the plugin's `metrics` answers, taken on this thread."""
    return sample()


def part(mountpoint: str, fstype: str = "ext4", device: str = "/dev/sda1") -> SimpleNamespace:
    return SimpleNamespace(device=device, mountpoint=mountpoint, fstype=fstype, opts="rw")


def fake_smi(monkeypatch: pytest.MonkeyPatch, run: Callable[..., Any]) -> list[list[str]]:
    """Pretend nvidia-smi is installed and answers with `run`; returns the commands run."""
    calls: list[list[str]] = []

    def record(command: list[str], **kwargs: Any) -> Any:
        calls.append(command)
        assert kwargs["timeout"] == 5.0
        return run(command, **kwargs)

    monkeypatch.setattr("shutil.which", lambda name: SMI if name == "nvidia-smi" else None)
    monkeypatch.setattr(subprocess, "run", record)
    return calls


def completed(stdout: str, returncode: int = 0) -> Callable[..., Any]:
    return lambda command, **_: subprocess.CompletedProcess(command, returncode, stdout, "oops")


def raising(exc: BaseException) -> Callable[..., Any]:
    def run(command: list[str], **_: Any) -> Any:
        raise exc

    return run


def test_plugin_declares_its_methods() -> None:
    specs = SysInfo.rpc_methods
    assert {"metrics", "homedir", "host_role", "health", "describe"} <= specs.keys()
    assert getattr(specs["metrics"].func, "__wrapped__", None)  # psutil blocks: in a thread
    assert specs["homedir"].is_async and specs["host_role"].is_async
    for name in ("metrics", "homedir", "host_role"):
        assert specs[name].doc
        assert specs[name].params_schema()["properties"] == {}
        assert specs[name].result_schema()
    assert SysInfo.info().version == "1.0.0"


def test_metrics_of_this_host(plugin: SysInfo) -> None:
    result = metrics(plugin)
    assert result.hostname and result.platform
    assert result.uptime_seconds > 0
    assert result.cpu.logical > 0
    assert result.cpu.physical is None or result.cpu.physical > 0
    assert result.cpu.percent_per_cpu and all(0 <= p <= 100 for p in result.cpu.percent_per_cpu)
    assert result.memory.total > 0 and 0 <= result.memory.percent <= 100
    assert any(disk.fstype for disk in result.disks)
    assert len({disk.mountpoint for disk in result.disks}) == len(result.disks)
    assert all(iface.name for iface in result.interfaces)


def test_metrics_json_round_trip(plugin: SysInfo) -> None:
    adapter = SysInfo.rpc_methods["metrics"].result
    result = metrics(plugin)
    assert adapter.validate_json(adapter.dump_json(result)) == result


async def test_homedir(plugin: SysInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", "/home/alice")
    assert await plugin.homedir() == "/home/alice"


async def test_host_role_inside_a_job(plugin: SysInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in JOB_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PBS_JOBID", "42.pbs01")
    report = await plugin.host_role()
    assert report == HostRoleReport(
        role=HostRole.COMPUTE, scheduler="pbs", psij_executor="pbs", job_id="42.pbs01"
    )
    adapter = SysInfo.rpc_methods["host_role"].result
    assert adapter.dump_python(report, mode="json")["role"] == "compute"


async def test_host_role_standalone(plugin: SysInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in JOB_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("shutil.which", lambda name: None)
    report = await plugin.host_role()
    assert (report.role, report.scheduler, report.job_id) == (HostRole.STANDALONE, "none", None)


def test_disks_vanished_unreadable_and_shared(
    plugin: SysInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = [part("/"), part("/gone"), part("/locked"), part("/snap/x", "squashfs", "/dev/loop0")]
    remote = [part("/"), part("/proc", "proc", "proc"), part("/home", "nfs4", "nas:/home")]
    monkeypatch.setattr(psutil, "disk_partitions", lambda all=False: remote if all else local)
    real_usage = psutil.disk_usage

    def usage(path: str) -> Any:
        if path == "/gone":
            raise FileNotFoundError(2, "No such file or directory", path)
        if path == "/locked":
            raise PermissionError(13, "Permission denied", path)
        return real_usage("/")

    monkeypatch.setattr(psutil, "disk_usage", usage)
    disks = {disk.mountpoint: disk for disk in metrics(plugin).disks}
    assert sorted(disks) == ["/", "/home", "/locked"]
    assert disks["/"].total and not disks["/"].shared
    locked = disks["/locked"]
    assert (locked.total, locked.used, locked.free, locked.percent) == (None, None, None, None)
    assert disks["/home"].shared and disks["/home"].device == "nas:/home"


def test_disks_listing_fails(plugin: SysInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "disk_partitions", raising(OSError("no /proc/mounts")))
    assert metrics(plugin).disks == []


def test_gpus_parsed_from_nvidia_smi(plugin: SysInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    csv = (
        "0, NVIDIA A100-SXM4-40GB, 40960, 1024, 37, 45\n"
        "1, Tesla K80, [N/A], 3, [Not Supported], 30\n"
    )
    calls = fake_smi(monkeypatch, completed(csv))
    gpus = metrics(plugin).gpus
    assert calls[0][0] == SMI and "--format=csv,noheader,nounits" in calls[0]
    assert [gpu.model_dump() for gpu in gpus] == [
        {
            "index": 0,
            "name": "NVIDIA A100-SXM4-40GB",
            "memory_total_mib": 40960,
            "memory_used_mib": 1024,
            "utilization_percent": 37.0,
            "temperature_c": 45.0,
        },
        {
            "index": 1,
            "name": "Tesla K80",
            "memory_total_mib": None,
            "memory_used_mib": 3,
            "utilization_percent": None,
            "temperature_c": 30.0,
        },
    ]


@pytest.mark.parametrize(
    ("run", "warns"),
    [
        (completed("NVIDIA-SMI has failed because it couldn't communicate with the driver"), True),
        (completed("a, b, c, d, e, f\n1, 2\n"), True),
        (completed(""), False),
        (completed("0, GPU, 1, 2, 3, 4\n", returncode=9), True),
        (raising(subprocess.TimeoutExpired(SMI, 5.0)), True),
        (raising(FileNotFoundError(2, "No such file", SMI)), True),
        (raising(PermissionError(13, "Permission denied", SMI)), True),
    ],
    ids=["message", "garbage", "empty", "exit-code", "timeout", "missing", "not-executable"],
)
def test_gpus_empty_when_nvidia_smi_fails(
    plugin: SysInfo,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    run: Callable[..., Any],
    warns: bool,
) -> None:
    fake_smi(monkeypatch, run)
    with caplog.at_level(logging.WARNING, logger="orbit_mq.plugin.sysinfo"):
        assert metrics(plugin).gpus == []
    assert any("nvidia-smi" in r.getMessage() for r in caplog.records) == warns


def test_no_nvidia_smi_runs_nothing(plugin: SysInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_smi(monkeypatch, completed("0, GPU, 1, 2, 3, 4\n"))
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert metrics(plugin).gpus == [] and calls == []


def test_unsupported_probes_give_none(plugin: SysInfo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(psutil, "getloadavg", raising(OSError("unsupported")))
    monkeypatch.delattr(psutil, "cpu_freq")
    monkeypatch.setattr(psutil, "swap_memory", raising(RuntimeError("no /proc/swaps")))
    monkeypatch.setattr(psutil, "net_io_counters", raising(OSError("no counters")))
    result = metrics(plugin)
    assert (result.cpu.load_1m, result.cpu.load_5m, result.cpu.load_15m) == (None, None, None)
    assert result.cpu.frequency_mhz is None and result.swap is None
    assert all(iface.bytes_sent is None for iface in result.interfaces)
    adapter = SysInfo.rpc_methods["metrics"].result
    assert adapter.validate_json(adapter.dump_json(result)) == result
