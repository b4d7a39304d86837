"""Tasks benchmark: the tasks plugin end to end through the broker, with baselines measured in
the same run.

    .venv/bin/python bench/tasks.py [--url URL] [--only NAME ...] [--memory 100000]

The endpoint runs in its own process serving `tasks` (2 worker processes on this machine).
Each case submits its tasks with the SDK (`orbit_mq.tasks.submit`, pipelined batches) while
a subscription counts every terminal transition of every task (lost = never ended, duplicate
= announced twice), and times from the first submission to the last ending:

- functions_2000 / functions_10000: a no-op Python function by import path;
- pickled_10000: a cloudpickled function, 10,000 in one submission;
- executables_1000: /bin/true, against launching /bin/true from the standard asyncio loop in
  a fresh process (64 at a time), the ceiling of any process-per-task design here;
- round_trip: one function task at a time, submitted and its ending learnt from its event
  (as TaskExecutor does), p50 and p95; and submitted, then `wait_tasks` (two calls); against
  a call that does next to nothing (`backends`), in the same run;
- memory: `--memory N` no-op tasks, the endpoint's peak RSS sampled every 0.2 s.

Prints one JSON object (cases, targets, whether each is met); see docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import psutil
import uvloop
from support import endpoint_process, percentile, wait_online

import orbit_mq
from orbit_mq.contracts.tasks import Tasks, TaskSpec, TaskState, TaskStatus
from orbit_mq.contracts.tasks.values import pickled
from orbit_mq.tasks import TaskWatcher, submit, with_uid

TARGETS = {
    "functions_2000_per_s": 5000,
    "functions_10000_per_s": 5000,
    "pickled_10000_ok": True,
    "executables_ratio": 0.8,  # of asyncio launching /bin/true (≈ 1,100/s here): ≥ 880/s
    "round_trip_p50_ms": 5.0,
    "memory_peak_mb": 300,
    "lost": 0,
    "duplicates": 0,
}
NOOP = TaskSpec(function="operator:not_", args=[0])


def _noop(x: int) -> int:
    return x


async def run_case(
    fabric: orbit_mq.Fabric, tasks: Tasks, name: str, specs: Iterable[TaskSpec], count: int
) -> dict[str, Any]:
    """Submit the tasks and wait for all: the SDK's way for many tasks (a TaskWatcher, started
    before the first batch, learns each ending from the events), while another subscription
    counts every terminal transition announced."""
    ends: Counter[str] = Counter()
    counted = asyncio.Condition()
    done = Counter[TaskState]()
    all_ended = asyncio.Event()

    async def on_status(status: TaskStatus) -> None:
        done[status.state] += 1
        if sum(done.values()) == count:
            all_ended.set()

    async with fabric.subscribe(f"{name}.tasks.task_status_batch") as events:
        counting = asyncio.create_task(_count(events, ends, counted))
        watcher = TaskWatcher(tasks, on_status)
        await watcher.start()
        began = time.perf_counter()
        uids = await submit(tasks, specs, watcher=watcher)
        submitted = time.perf_counter() - began
        await asyncio.wait_for(all_ended.wait(), 3600)
        seconds = time.perf_counter() - began
        await watcher.close()
        wanted = set(uids)
        with contextlib.suppress(TimeoutError):  # the counter catches up with the watcher
            async with asyncio.timeout(30), counted:
                await counted.wait_for(lambda: wanted <= ends.keys())
        counting.cancel()
    return {
        "tasks": len(uids),
        "seconds": round(seconds, 3),
        "per_s": round(len(uids) / seconds),
        "submit_seconds": round(submitted, 3),
        "done": done[TaskState.DONE],
        "lost": len(wanted - set(ends)),
        "duplicates": sum(n - 1 for uid, n in ends.items() if uid in wanted and n > 1),
    }


async def _count(
    events: orbit_mq.Subscription[orbit_mq.Event], ends: Counter[str], counted: asyncio.Condition
) -> None:
    async for event in events:
        for item in event.data["tasks"]:
            if TaskState(item["state"]).final:
                ends[item["uid"]] += 1
        async with counted:
            counted.notify_all()


BASELINE = """
import asyncio, sys, time

async def main(count, concurrency=64):
    gate = asyncio.Semaphore(concurrency)

    async def one():
        async with gate:
            process = await asyncio.create_subprocess_exec(
                "/bin/true", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            await process.communicate()

    began = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(count)))
    print(count / (time.perf_counter() - began))

asyncio.set_child_watcher(asyncio.PidfdChildWatcher())
asyncio.run(main(int(sys.argv[1])))
"""


async def asyncio_true(count: int) -> float:
    """/bin/true launched from the standard asyncio loop (its fastest child watcher) in a fresh
    process, 64 at a time: processes per second, the ceiling of process-per-task here."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-W", "ignore", "-c", BASELINE, str(count), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    return float(out)


async def round_trip(tasks: Tasks, count: int = 200) -> dict[str, float]:
    """One task at a time: submitted, then its ending learnt from its event (as TaskExecutor
    and as_completed do), and submitted, then waited for with `wait_tasks` (two calls)."""
    by_event, by_call = [], []
    ended: dict[str, asyncio.Future[TaskStatus]] = {}

    async def on_status(status: TaskStatus) -> None:
        waiting = ended.pop(status.uid, None)
        if waiting is not None:
            waiting.set_result(status)

    watcher = TaskWatcher(tasks, on_status)
    await watcher.start()
    try:
        for _ in range(count):
            spec = with_uid(NOOP)
            assert spec.uid is not None
            waiting = ended[spec.uid] = asyncio.get_running_loop().create_future()
            watcher.watch([spec.uid])
            began = time.perf_counter()
            await tasks.submit_tasks(tasks=[spec])
            status = await asyncio.wait_for(waiting, 10)
            by_event.append((time.perf_counter() - began) * 1000)
            assert status.state is TaskState.DONE, status
    finally:
        await watcher.close()
    plain = []  # the baseline: a call that does next to nothing (backends), the same way
    for _ in range(count):
        began = time.perf_counter()
        await tasks.backends()
        plain.append((time.perf_counter() - began) * 1000)
    for _ in range(count):
        began = time.perf_counter()
        sent = await tasks.submit_tasks(tasks=[NOOP])
        (status,) = await tasks.wait_tasks(uids=sent.uids, timeout=10)
        by_call.append((time.perf_counter() - began) * 1000)
        assert status.state is TaskState.DONE, status
    return {
        "p50_ms": round(statistics.median(by_event), 2),
        "p95_ms": round(percentile(by_event, 0.95), 2),
        "wait_tasks_p50_ms": round(statistics.median(by_call), 2),
        "wait_tasks_p95_ms": round(percentile(by_call, 0.95), 2),
        "baseline_call_p50_ms": round(statistics.median(plain), 2),
        "calls_per_round_trip": round(statistics.median(by_event) / statistics.median(plain), 2),
    }


async def memory(
    fabric: orbit_mq.Fabric, tasks: Tasks, name: str, pid: int, count: int
) -> dict[str, Any]:
    process = psutil.Process(pid)
    peak = process.memory_info().rss
    sampling = True

    async def sample() -> None:
        nonlocal peak
        while sampling:
            peak = max(peak, process.memory_info().rss)
            await asyncio.sleep(0.2)  # a sampling interval

    sampler = asyncio.create_task(sample())
    case = await run_case(fabric, tasks, name, (NOOP for _ in range(count)), count)
    sampling = False
    await sampler
    client = psutil.Process(os.getpid()).memory_info().rss
    return {**case, "endpoint_peak_mb": round(peak / 2**20), "client_rss_mb": round(client / 2**20)}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    name = f"bench-tasks-{os.getpid()}"
    settings = orbit_mq.Settings(url=args.url, timeout=120)
    cases: dict[str, Any] = {}
    only = set(args.only or [])

    def wanted(case: str) -> bool:
        return not only or case in only

    with endpoint_process(args.url, name, "tasks") as process:
        async with orbit_mq.Fabric(settings) as fabric:
            await wait_online(fabric, name)
            tasks = await fabric.endpoint(name).plugin(Tasks)
            await run_case(fabric, tasks, name, [NOOP] * 200, 200)  # workers started, caches warm
            for count in (2000, 10_000):
                if wanted(f"functions_{count}"):
                    cases[f"functions_{count}"] = await run_case(
                        fabric, tasks, name, [NOOP] * count, count
                    )
            if wanted("pickled_10000"):
                spec = TaskSpec(pickled_function=pickled(_noop), args=[1])
                cases["pickled_10000"] = await run_case(
                    fabric, tasks, name, [spec] * 10_000, 10_000
                )
            if wanted("executables_1000"):
                baseline = await asyncio_true(1000)
                exe = TaskSpec(executable="/bin/true")
                case = await run_case(fabric, tasks, name, [exe] * 1000, 1000)
                case["baseline_asyncio_per_s"] = round(baseline)
                case["ratio"] = round(case["per_s"] / baseline, 2)
                cases["executables_1000"] = case
            if wanted("round_trip"):
                cases["round_trip"] = await round_trip(tasks)
            if args.memory:
                cases["memory"] = await memory(fabric, tasks, name, process.pid, args.memory)
            await tasks.cancel_all_tasks()
    return {"cases": cases, "met": met(cases), "targets": TARGETS, "machine": machine()}


def met(cases: dict[str, Any]) -> dict[str, bool]:
    checks: dict[str, bool] = {}
    for count in (2000, 10_000):
        if f"functions_{count}" in cases:
            checks[f"functions_{count}_per_s"] = cases[f"functions_{count}"]["per_s"] >= 5000
    if "pickled_10000" in cases:
        checks["pickled_10000_ok"] = cases["pickled_10000"]["done"] == 10_000
    if "executables_1000" in cases:
        checks["executables_ratio"] = cases["executables_1000"]["ratio"] >= 0.8
    if "round_trip" in cases:
        checks["round_trip_p50_ms"] = cases["round_trip"]["p50_ms"] <= 5.0
    if "memory" in cases:
        checks["memory_peak_mb"] = cases["memory"]["endpoint_peak_mb"] <= 300
    counted = [case for case in cases.values() if "lost" in case]
    checks["lost"] = all(case["lost"] == 0 for case in counted)
    checks["duplicates"] = all(case["duplicates"] == 0 for case in counted)
    return checks


def machine() -> dict[str, Any]:
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "host": platform.node()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("ORBIT_MQ_URL", orbit_mq.Settings().url))
    parser.add_argument("--only", nargs="*", help="run only these cases")
    parser.add_argument("--memory", type=int, default=0, metavar="N", help="the memory case")
    arguments = parser.parse_args()
    result = uvloop.run(main(arguments))
    json.dump(result, sys.stdout, indent=2)
    print()
