"""What the benchmarks share: an endpoint in its own process, waiting for it, percentiles,
CPU time per process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

import orbit_mq


@contextmanager
def endpoint_process(url: str, name: str, plugins: str) -> Iterator[subprocess.Popen[bytes]]:
    """`orbit-mq endpoint start` in its own process, stopped with SIGTERM afterwards; its
    home (journal, job directories) is a temporary directory (`bench_home_parent`), removed
    afterwards, so runs neither leave their jobs behind nor start with the last run's."""
    command = [sys.executable, "-P", "-m", "orbit_mq.cli", "endpoint", "start"]
    command += ["--name", name, "--plugins", plugins, "--log-level", "warning"]
    with tempfile.TemporaryDirectory(prefix="orbit-mq-bench-", dir=bench_home_parent()) as home:
        env = {**os.environ, "ORBIT_MQ_URL": url, "ORBIT_MQ_HOME": home}
        process = subprocess.Popen(command, env=env)
        try:
            yield process
        finally:
            process.terminate()
            process.wait(timeout=60)


def file_creation_us(directory: Path, count: int = 200) -> float:
    """CPU µs to create and remove a small file in `directory`: what a job's directory costs
    depends on it (seen here from 15 µs to 1.5 ms, by place and time, on one ext4 disk)."""
    began = time.process_time()
    with tempfile.TemporaryDirectory(prefix="orbit-mq-probe-", dir=directory) as scratch:
        for i in range(count):
            path = os.path.join(scratch, str(i))
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
            os.unlink(path)
    return round((time.process_time() - began) * 1e6 / count, 1)


def bench_home_parent() -> Path:
    """Where the endpoints' temporary homes go: beside the configured home, on its file
    system (creating a file costs ten times more in this machine's /tmp at times)."""
    beside = orbit_mq.Settings().home.expanduser().absolute().parent
    beside.mkdir(parents=True, exist_ok=True)
    return beside


async def wait_online(fabric: orbit_mq.Fabric, name: str, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not any(info.endpoint == name for info in await fabric.endpoints(window=0.2)):
            pass


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def broker_processes(port: int = 5672) -> list[psutil.Process]:
    """The local RabbitMQ node's Erlang VM listening on `port` (none when the broker runs
    elsewhere): other nodes on the host (a test cluster) come and go during a run."""
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if process.info["name"] != "beam.smp" or "-s rabbit boot" not in command:
            continue
        try:
            listening = {
                c.laddr.port for c in process.net_connections("tcp") if c.status == "LISTEN"
            }
        except psutil.Error:
            continue
        if port in listening:
            found.append(process)
    return found


class CpuMeter:
    """CPU seconds (user + system) that named processes used between `start` and `stop`; a
    process's reaped children (the jobs an endpoint ran) are counted apart as `<name> jobs`.

    Two figures catch what the named processes miss: `orphans`, the processes init reaped
    meanwhile (a job's helpers whose parent exited first: PSI/J's launcher leaves its log
    subshell so), and `machine`, every core's busy time (the kernel's work for the loopback
    traffic and the file system included), which also counts whatever else runs on the host."""

    def __init__(self, **processes: list[psutil.Process]) -> None:
        self.processes = processes
        self._start: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        figures: dict[str, float] = {}
        for name, group in self.processes.items():
            times = [process.cpu_times() for process in group]
            figures[name] = sum(t.user + t.system for t in times)
            children = sum(t.children_user + t.children_system for t in times)
            if children:
                figures[f"{name} jobs"] = children
        with contextlib.suppress(psutil.Error):  # init's children: readable on most hosts
            init = psutil.Process(1).cpu_times()
            figures["orphans"] = init.children_user + init.children_system
        return figures

    @staticmethod
    def _machine() -> float:
        times = psutil.cpu_times()._asdict()  # guest time is already in user time
        busy = ("user", "nice", "system", "irq", "softirq", "steal")
        return sum(times.get(field, 0.0) for field in busy)

    def start(self) -> None:
        self._start = self._read()
        self._start_machine = self._machine()

    def per_job_ms(self, jobs: int) -> dict[str, float]:
        """Milliseconds of CPU per job since `start`: per process, their total (orphans
        included) and the machine's."""
        used = {k: v - self._start.get(k, 0.0) for k, v in self._read().items()}
        figures = {k: round(1000 * v / max(jobs, 1), 2) for k, v in used.items()}
        figures["total"] = round(1000 * sum(used.values()) / max(jobs, 1), 2)
        machine = self._machine() - self._start_machine
        figures["machine"] = round(1000 * machine / max(jobs, 1), 2)
        return figures
