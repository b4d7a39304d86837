"""The guarantees under broker restarts: a 300-job run with the broker restarted 5 times.

Every job runs exactly once (its own line in a shared file, its stdout), the durable SDK
subscription delivers each job's transitions once, gapless and in order, ending in one
terminal event, and a plain pika subscriber sees repeats only as exact copies carrying the
documented dedupe key (`message_id` = `{job_id}:{seq}`). bench/soak_restarts.py repeats this.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from broker_control import ensure_running, restartable
from restart_scenario import run_scenario

pytestmark = [pytest.mark.broker_restart, pytest.mark.timeout(600)]


async def test_jobs_survive_five_broker_restarts(broker_url: str, tmp_path: Path) -> None:
    if not restartable(broker_url):
        pytest.skip("needs root, rabbitmqctl and a broker on this host")
    try:
        report = await run_scenario(broker_url, tmp_path, jobs=300, restarts=5)
    finally:
        await ensure_running()
    print(json.dumps(report.summary()))
    log = (tmp_path / "endpoint.log").read_text(errors="replace")[-4000:]
    assert not report.problems(), f"{report.problems()}\n--- endpoint log (tail) ---\n{log}"
    assert len(report.recovery) == 5
    assert report.wire_events >= 300 * 4  # NEW, QUEUED, ACTIVE, COMPLETED of every job
