"""Soak: kill -9 the tasks endpoint again and again while tasks run, and count what is lost
or announced twice.

    .venv/bin/python bench/soak_tasks.py [--url URL] [--runs 20] [--tasks 500]

Each run starts an endpoint process serving `tasks`, submits `--tasks` short function tasks
(every other one with retries=1), kills the endpoint with SIGKILL once some have ended, starts
it again and waits for every task. It counts, from a subscription to the endpoint's
`task_status_batch` events: tasks that never ended (lost), terminal transitions announced
more than once for one task (duplicates, after the SDK's dedupe by message_id), and the
endings that say the endpoint stopped under the task. One JSON line per run, then a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from typing import Any

import uvloop
from support import wait_online

import orbit_mq
from orbit_mq.contracts.tasks import Tasks, TaskSpec, TaskState
from orbit_mq.tasks import as_completed, submit

STOPPED = "the endpoint stopped while the task ran"


def start_endpoint(url: str, name: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-P", "-m", "orbit_mq.cli", "endpoint", "start"]
    command += ["--name", name, "--plugins", "tasks", "--log-level", "warning"]
    return subprocess.Popen(command, env={**os.environ, "ORBIT_MQ_URL": url})


async def one_run(fabric: orbit_mq.Fabric, url: str, name: str, count: int) -> dict[str, Any]:
    process = start_endpoint(url, name)
    try:
        await wait_online(fabric, name)
        tasks = await fabric.endpoint(name).plugin(Tasks)
        specs = [TaskSpec(function="time:sleep", args=[0.01], retries=i % 2) for i in range(count)]
        ends: Counter[str] = Counter()
        arrived = asyncio.Condition()
        async with fabric.subscribe(f"{name}.tasks.task_status_batch") as events:

            async def collect() -> None:
                async for event in events:
                    for item in event.data["tasks"]:
                        if TaskState(item["state"]).final:
                            ends[item["uid"]] += 1
                    async with arrived:
                        arrived.notify_all()

            counting = asyncio.create_task(collect())
            uids = await submit(tasks, specs)
            async with asyncio.timeout(60), arrived:
                await arrived.wait_for(lambda: len(ends) >= count // 10)
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
            killed_at = time.monotonic()
            process = start_endpoint(url, name)
            statuses = [s async for s in as_completed(tasks, uids, timeout=300)]
            recovered = time.monotonic() - killed_at
            async with asyncio.timeout(30), arrived:
                await arrived.wait_for(lambda: set(uids) <= ends.keys())
            counting.cancel()
        wanted = set(uids)
        return {
            "tasks": count,
            "lost": len(wanted - {s.uid for s in statuses}),
            "duplicates": sum(n - 1 for uid, n in ends.items() if uid in wanted and n > 1),
            "failed_stopped": sum(s.error == STOPPED for s in statuses),
            "ran_again": sum(s.attempt > 1 and s.state is TaskState.DONE for s in statuses),
            "other_failures": sum(
                s.state is not TaskState.DONE and s.error != STOPPED for s in statuses
            ),
            "all_ended_s": round(recovered, 2),
        }
    finally:
        process.terminate()
        process.wait(timeout=30)


async def main(args: argparse.Namespace) -> None:
    settings = orbit_mq.Settings(url=args.url, timeout=60)
    runs = []
    async with orbit_mq.Fabric(settings) as fabric:
        for run in range(args.runs):
            name = f"soak-tasks-{os.getpid()}-{run}"
            result = {"run": run + 1, **await one_run(fabric, args.url, name, args.tasks)}
            print(json.dumps(result), flush=True)
            runs.append(result)
    keys = ("tasks", "lost", "duplicates", "failed_stopped", "ran_again", "other_failures")
    summary: dict[str, Any] = {key: sum(run[key] for run in runs) for key in keys}
    summary["runs"] = len(runs)
    print(json.dumps({"summary": summary}), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("ORBIT_MQ_URL", orbit_mq.Settings().url))
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--tasks", type=int, default=500)
    uvloop.run(main(parser.parse_args()))
