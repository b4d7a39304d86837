"""Soak: the broker-restart scenario of tests/test_reliability.py, many times over.

Each run starts an endpoint process, opens a durable SDK subscription and a plain pika
subscriber, submits short jobs 16 at a time and restarts the local broker several times
part-way (tests/restart_scenario.py). It prints one JSON line per run and a JSON summary:
jobs lost (accepted and never run, or without a terminal event), run twice, delivered twice
or out of order by the SDK, duplicates on the wire (all with the documented key, or counted
as bad keys), broker downtime and recovery time (broker back → a call answered again).

    sudo .venv/bin/python bench/soak_restarts.py --runs 50            # ≈ 35 s a run
    sudo .venv/bin/python bench/soak_restarts.py --runs 5 --full all  # whole-node restarts

Needs root, rabbitmqctl and the broker on this host (ORBIT_MQ_URL, default 127.0.0.1:5672).
Exit status 1 if any run lost, repeated or reordered anything.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from broker_control import ensure_running, restartable
from restart_scenario import Report, run_scenario

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"


def _full_restarts(choice: str, restarts: int) -> frozenset[int]:
    if choice == "all":
        return frozenset(range(restarts))
    if choice == "none":
        return frozenset()
    return frozenset({restarts // 2})  # "one": the middle restart stops the whole node


def _spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "min": round(ordered[0], 2),
        "median": round(statistics.median(ordered), 2),
        "p95": round(ordered[int(0.95 * (len(ordered) - 1))], 2),
        "max": round(ordered[-1], 2),
    }


def summarise(reports: list[Report], seconds: float) -> dict[str, Any]:
    flawed = [index for index, report in enumerate(reports) if report.problems()]
    return {
        "runs": len(reports),
        "jobs_per_run": reports[0].jobs if reports else 0,
        "restarts_per_run": reports[0].restarts if reports else 0,
        "seconds": round(seconds, 1),
        "runs_with_problems": flawed,
        "jobs_lost": sum(report.lost for report in reports),
        "jobs_run_twice": sum(len(report.ran_twice) for report in reports),
        "jobs_delivered_twice": sum(len(report.delivered_twice) for report in reports),
        "jobs_out_of_order": sum(len(report.not_in_order) for report in reports),
        "wire_events": sum(report.wire_events for report in reports),
        "wire_duplicates": sum(report.wire_duplicates for report in reports),
        "wire_duplicates_per_run": _spread([float(r.wire_duplicates) for r in reports]),
        "wire_bad_keys": sum(len(report.wire_bad_keys) for report in reports),
        "broker_away_s": _spread([away for report in reports for away in report.broker_away]),
        "recovery_s": _spread([value for report in reports for value in report.recovery]),
    }


async def soak(url: str, runs: int, jobs: int, restarts: int, full: str) -> int:
    reports: list[Report] = []
    started = time.monotonic()
    for number in range(runs):
        with tempfile.TemporaryDirectory(prefix="orbit-soak-") as workdir:
            try:
                report = await run_scenario(
                    url, Path(workdir), jobs, restarts, _full_restarts(full, restarts)
                )
            finally:
                await ensure_running()
        reports.append(report)
        line = {"run": number + 1, **report.summary()}
        line.pop("timeline", None)
        line.pop("started", None)
        print(json.dumps(line), flush=True)
    summary = summarise(reports, time.monotonic() - started)
    print(json.dumps({"summary": summary}, indent=2), flush=True)
    return 1 if summary["runs_with_problems"] else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--restarts", type=int, default=5)
    parser.add_argument(
        "--full",
        choices=("one", "all", "none"),
        default="one",
        help="which restarts stop the whole node (rabbitmqctl stop; rabbitmq-server "
        "-detached) rather than its app (stop_app; start_app)",
    )
    args = parser.parse_args()
    url = os.environ.get("ORBIT_MQ_URL", DEFAULT_URL)
    if not restartable(url):
        print("soak_restarts: needs root, rabbitmqctl and the broker on this host", file=sys.stderr)
        return 2
    return asyncio.run(soak(url, args.runs, args.jobs, args.restarts, args.full))


if __name__ == "__main__":
    sys.exit(main())
