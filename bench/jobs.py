"""Jobs benchmark: many quick jobs on the local executor, end to end through the broker.

    .venv/bin/python bench/jobs.py [--url URL] [--jobs 200] [--batch 50] [--baseline]

The endpoint runs in its own process with the psij plugin; the client subscribes to the job
events, submits `--jobs` runs of /bin/true (one `submit_job` call each, all in flight at
once; then again with `submit_jobs` batches) and counts until every job's COMPLETED event has
arrived. With `--baseline`, PSI/J's local executor alone runs the same jobs first, in this
process (submitted from 4 threads, as the endpoint does, waiting on its callbacks), and every
mode's figure is also given as a ratio to it. Prints one JSON object; see docs/performance.md.
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
from collections import defaultdict
from typing import Any
from urllib.parse import urlparse

import psutil
import uvloop
from support import (
    CpuMeter,
    bench_home_parent,
    broker_processes,
    endpoint_process,
    file_creation_us,
    percentile,
    wait_online,
)

import orbit_mq
from orbit_mq.workers.plugins.psij import launcher as local_launcher

TARGETS = {"jobs_per_s": 170, "lost_events": 0, "duplicate_events": 0}
SPEC = {"executable": "/bin/true"}


async def submit_one_by_one(psij: orbit_mq.PluginProxy, count: int) -> dict[str, float]:
    started: dict[str, float] = {}

    async def one() -> None:
        began = time.perf_counter()
        job = await psij.submit_job(spec=SPEC)
        started[job.job_id] = began

    await asyncio.gather(*(one() for _ in range(count)))
    return started


async def submit_batches(psij: orbit_mq.PluginProxy, count: int, batch: int) -> dict[str, float]:
    started: dict[str, float] = {}

    async def one(size: int) -> None:
        began = time.perf_counter()
        for job in await psij.submit_jobs(specs=[SPEC] * size):
            started[job.job_id] = began

    sizes = [min(batch, count - i) for i in range(0, count, batch)]
    await asyncio.gather(*(one(size) for size in sizes))
    return started


async def run_mode(
    fabric: orbit_mq.Fabric,
    name: str,
    count: int,
    batch: int | None,
    timeout: float,
    meter: CpuMeter,
) -> dict[str, Any]:
    # every call is in flight at once: the last ones wait their turn at the endpoint
    psij = await fabric.endpoint(name).plugin("psij", session=False, timeout=timeout)
    seqs: dict[str, list[int]] = defaultdict(list)
    finished: dict[str, float] = {}
    async with fabric.subscribe(f"{name}.psij.job_status") as events:
        meter.start()
        began = time.perf_counter()
        if batch:
            started = await submit_batches(psij, count, batch)
        else:
            started = await submit_one_by_one(psij, count)
        try:
            async with asyncio.timeout(timeout):
                async for event in events:
                    job_id, seq = event.data["job_id"], event.data["seq"]
                    seqs[job_id].append(seq)
                    if event.data["state"] in ("COMPLETED", "FAILED", "CANCELED"):
                        finished.setdefault(job_id, time.perf_counter())
                        if len(finished) == count and set(finished) >= set(started):
                            break
        except TimeoutError:
            pass
        elapsed = time.perf_counter() - began
    latencies = [(finished[j] - started[j]) * 1000 for j in started if j in finished]
    duplicates = sum(len(s) - len(set(s)) for s in seqs.values())
    gaps = sum(1 for s in seqs.values() if sorted(set(s)) != list(range(1, max(s) + 1)))
    return {
        "mode": f"submit_jobs x{batch}" if batch else "submit_job",
        "jobs": count,
        "seconds": round(elapsed, 3),
        "jobs_per_s": round(len(finished) / elapsed, 1),
        "submit_to_completed_p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "submit_to_completed_p99_ms": round(percentile(latencies, 0.99), 1) if latencies else None,
        "lost_events": count - len(finished),
        "duplicate_events": duplicates,
        "jobs_with_gaps": gaps,
        "cpu_ms_per_job": meter.per_job_ms(count),
    }


def psij_alone(count: int, timeout: float, launcher: str | None = None) -> dict[str, Any]:
    """PSI/J's local executor by itself: `count` runs of /bin/true, first submit to last end,
    under `launcher` (None: PSI/J's default)."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Event, Lock

    import psij

    executor = psij.JobExecutor.get_instance("local")
    done, lock, ended = Event(), Lock(), [0]

    def changed(_: psij.Job, status: psij.JobStatus) -> None:
        if status.final:
            with lock:
                ended[0] += 1
                if ended[0] == count:
                    done.set()

    def submit(_: int) -> None:
        job = psij.Job(psij.JobSpec(executable=SPEC["executable"], launcher=launcher))
        job.set_job_status_callback(changed)
        executor.submit(job)

    meter = CpuMeter(psij=[psutil.Process()])
    meter.start()
    began = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(submit, range(count)))
    done.wait(timeout)
    elapsed = time.perf_counter() - began
    return {
        "jobs": count,
        "launcher": launcher or "single",
        "seconds": round(elapsed, 3),
        "jobs_per_s": round(ended[0] / elapsed, 1),
        "cpu_ms_per_job": meter.per_job_ms(count),
    }


async def run(args: argparse.Namespace, name: str, endpoint: psutil.Process) -> dict[str, Any]:
    broker = broker_processes(urlparse(args.url).port or 5672)
    meter = CpuMeter(endpoint=[endpoint], broker=broker, client=[psutil.Process()])
    async with orbit_mq.connect(args.url) as fabric:
        await wait_online(fabric, name)
        modes = [
            await run_mode(fabric, name, args.jobs, None, args.timeout, meter),
            await run_mode(fabric, name, args.jobs, args.batch, args.timeout, meter),
        ]
    return {
        "benchmark": "jobs",
        "executor": "local",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "file_creation_us": file_creation_us(bench_home_parent()),
        "results": modes,
        "targets": TARGETS,
        "met": {
            mode["mode"]: mode["jobs_per_s"] >= TARGETS["jobs_per_s"]
            and mode["lost_events"] == 0
            and mode["duplicate_events"] == 0
            for mode in modes
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("ORBIT_MQ_URL", orbit_mq.Settings().url))
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--batch", type=int, default=50, help="jobs per submit_jobs call")
    parser.add_argument("--timeout", type=float, default=120.0, help="per mode, s")
    parser.add_argument(
        "--baseline", action="store_true", help="PSI/J alone first, and the ratios to it"
    )
    args = parser.parse_args()
    name = f"bench-jobs-{os.getpid()}"
    baselines = {}
    if args.baseline:
        baselines["psij_alone"] = psij_alone(args.jobs, args.timeout)
        same = psij_alone(args.jobs, args.timeout, local_launcher.register())
        baselines["psij_alone_same_launcher"] = same
    with endpoint_process(args.url, name, "psij") as process:
        result = uvloop.run(run(args, name, psutil.Process(process.pid)))
    for key, baseline in baselines.items():
        result[key] = baseline
        result[f"ratio_to_{key}"] = {
            mode["mode"]: round(mode["jobs_per_s"] / baseline["jobs_per_s"], 2)
            for mode in result["results"]
        }
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
