"""What the benchmarks share: an endpoint in its own process, waiting for it, percentiles."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import orbit_mq


@contextmanager
def endpoint_process(url: str, name: str, plugins: str) -> Iterator[subprocess.Popen[bytes]]:
    """`orbit-mq endpoint start` in its own process, stopped with SIGTERM afterwards."""
    command = [sys.executable, "-P", "-m", "orbit_mq.cli", "endpoint", "start"]
    command += ["--name", name, "--plugins", plugins, "--log-level", "warning"]
    process = subprocess.Popen(command, env={**os.environ, "ORBIT_MQ_URL": url})
    try:
        yield process
    finally:
        process.terminate()
        process.wait(timeout=60)


async def wait_online(fabric: orbit_mq.Fabric, name: str, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not any(info.endpoint == name for info in await fabric.endpoints(window=0.2)):
            pass


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
