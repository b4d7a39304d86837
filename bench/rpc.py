"""RPC benchmark: latency of sequential calls and throughput with many calls in flight.

    .venv/bin/python bench/rpc.py [--url URL] [--calls 3000] [--concurrency 32] [--seconds 5]

The endpoint runs in its own process (`orbit-mq endpoint start … --plugins sysinfo`), the
client calls `sysinfo.homedir` through the SDK. Prints one JSON object (see
docs/performance.md for the figures and targets).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import uvloop
from support import endpoint_process, percentile, wait_online

import orbit_mq

TARGETS = {"p50_ms": 0.9, "calls_per_s": 3500, "endpoint_idle_rss_mb": 80}


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def sequential(proxy: orbit_mq.PluginProxy, calls: int) -> dict[str, float]:
    latencies = []
    for _ in range(calls):
        start = time.perf_counter()
        await proxy.homedir()
        latencies.append((time.perf_counter() - start) * 1000)
    return {
        "calls": calls,
        "p50_ms": round(statistics.median(latencies), 4),
        "p99_ms": round(percentile(latencies, 0.99), 4),
        "mean_ms": round(statistics.fmean(latencies), 4),
    }


async def concurrent(proxy: orbit_mq.PluginProxy, workers: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        while time.perf_counter() < stop_at:
            start = time.perf_counter()
            await proxy.homedir()
            latencies.append((time.perf_counter() - start) * 1000)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    elapsed = time.perf_counter() - began
    return {
        "in_flight": workers,
        "calls": len(latencies),
        "seconds": round(elapsed, 3),
        "calls_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(statistics.median(latencies), 4),
        "p99_ms": round(percentile(latencies, 0.99), 4),
    }


async def run(args: argparse.Namespace, name: str, endpoint_pid: int) -> dict[str, Any]:
    async with orbit_mq.connect(args.url, coalesce=not args.no_coalesce) as fabric:
        await wait_online(fabric, name)
        idle_rss = rss_mb(endpoint_pid)
        proxy = await fabric.endpoint(name).plugin("sysinfo", session=False)
        for _ in range(args.warmup):
            await proxy.homedir()
        seq = await sequential(proxy, args.calls)
        conc = await concurrent(proxy, args.concurrency, args.seconds)
        loaded_rss = rss_mb(endpoint_pid)
    return {
        "benchmark": "rpc",
        "method": "sysinfo.homedir",
        "python": platform.python_version(),
        "event_loop": type(asyncio.get_running_loop()).__module__,
        "cpus": os.cpu_count(),
        "coalesce": not args.no_coalesce,
        "sequential": seq,
        "concurrent": conc,
        "endpoint_rss_mb": {"idle": round(idle_rss, 1), "after_load": round(loaded_rss, 1)},
        "targets": TARGETS,
        "met": {
            "p50_ms": seq["p50_ms"] <= TARGETS["p50_ms"],
            "calls_per_s": conc["calls_per_s"] >= TARGETS["calls_per_s"],
            "endpoint_idle_rss_mb": idle_rss <= TARGETS["endpoint_idle_rss_mb"],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("ORBIT_MQ_URL", orbit_mq.Settings().url))
    parser.add_argument("--calls", type=int, default=3000, help="sequential calls")
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=32, help="calls in flight")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of the load phase")
    parser.add_argument("--no-coalesce", action="store_true", help="one message per call")
    args = parser.parse_args()
    name = f"bench-{os.getpid()}"
    with endpoint_process(args.url, name, "sysinfo") as endpoint:
        result = uvloop.run(run(args, name, endpoint.pid))
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
