"""Jobs through broker restarts, as a user would run them: an endpoint process, a durable SDK
subscription and a plain pika subscriber open, short jobs submitted 16 at a time, and the
broker restarted several times part-way, the client carrying on.

`run_scenario` returns a `Report` of what happened: used by tests/test_reliability.py (one run
in `make test`) and bench/soak_restarts.py (many runs, figures in docs/reliability.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import pika
from broker_control import restart

import orbit_mq
from orbit_mq.contracts.psij import TERMINAL
from orbit_mq.protocol import EVENTS_EXCHANGE, owned_pattern, request_queue, subscription_queue
from orbit_mq.tls import login_user

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"
CONCURRENCY = 16
RECOVERY_LIMIT = 120.0  # s for events to flow again after the broker is back
SETTLE_LIMIT = 180.0  # s for every job's terminal event after the last submission


@dataclass
class Report:
    jobs: int
    restarts: int
    seconds: float = 0.0
    broker_away: list[float] = field(default_factory=list)  # s per restart
    recovery: list[float] = field(default_factory=list)  # s from broker back to events again
    submit_errors: list[str] = field(default_factory=list)
    never_ran: list[int] = field(default_factory=list)
    ran_twice: list[int] = field(default_factory=list)
    bad_stdout: list[str] = field(default_factory=list)
    no_terminal: list[str] = field(default_factory=list)  # jobs without a terminal event (SDK)
    not_in_order: list[str] = field(default_factory=list)  # seq not 1, 2, 3, … (SDK)
    delivered_twice: list[str] = field(default_factory=list)  # an event the SDK gave twice
    not_completed: list[str] = field(default_factory=list)
    wire_events: int = 0  # messages the pika subscriber received
    wire_duplicates: int = 0  # … of which repeats of a message_id
    wire_bad_keys: list[str] = field(default_factory=list)  # no or wrong dedupe key
    wire_unequal_copies: list[str] = field(default_factory=list)
    wire_missing: list[str] = field(default_factory=list)  # keys the SDK saw, pika did not
    wire_invalid: list[str] = field(default_factory=list)  # not per schemas/events/
    timeline: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic, repr=False)

    @property
    def lost(self) -> int:
        return len(self.never_ran) + len(self.no_terminal) + len(self.submit_errors)

    def problems(self) -> dict[str, Any]:
        fields = asdict(self)
        keep = ("jobs", "restarts", "seconds", "broker_away", "recovery", "wire_events")
        keep += ("wire_duplicates", "timeline", "started")
        return {key: value for key, value in fields.items() if value and key not in keep}

    def summary(self) -> dict[str, Any]:
        return {**asdict(self), "lost": self.lost}


class PikaRecorder:
    """A plain pika consumer of a durable queue, reconnecting on its own (pika does not): what
    a foreign subscriber sees on the wire."""

    def __init__(self, url: str, pattern: str) -> None:
        self.url, self.pattern = url, pattern
        self.queue = f"orbit.test.pika.{uuid.uuid4().hex[:12]}"
        self.messages: list[tuple[str | None, bytes]] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._declare()
        self._thread = threading.Thread(target=self._run, name="pika-recorder", daemon=True)
        self._thread.start()

    def _declare(self) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            channel = connection.channel()
            channel.queue_declare(self.queue, durable=True)
            channel.queue_bind(self.queue, EVENTS_EXCHANGE, self.pattern)
        finally:
            connection.close()

    def _run(self) -> None:
        deadline = time.monotonic() + 3600
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                self._consume()
            except Exception:  # the broker is restarting: connect again shortly
                self.stop.wait(0.5)

    def _consume(self) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=500)

            def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
                with self._lock:
                    self.messages.append((properties.message_id, body))
                ch.basic_ack(method.delivery_tag)

            channel.basic_consume(self.queue, on_message)
            while not self.stop.is_set():
                connection.process_data_events(time_limit=0.2)
        finally:
            with contextlib.suppress(Exception):
                connection.close()

    def snapshot(self) -> list[tuple[str | None, bytes]]:
        with self._lock:
            return list(self.messages)

    def close(self) -> None:
        self.stop.set()
        self._thread.join(timeout=10)
        with contextlib.suppress(Exception):
            connection = pika.BlockingConnection(pika.URLParameters(self.url))
            connection.channel().queue_delete(self.queue)
            connection.close()


class SdkCollector:
    """A durable SDK subscription, read in the background: every job's transitions."""

    def __init__(self, subscription: orbit_mq.Subscription[orbit_mq.Event]) -> None:
        self.transitions: dict[str, list[tuple[int, str]]] = defaultdict(list)
        self.changed = asyncio.Event()
        self._task = asyncio.create_task(self._collect(subscription))

    async def _collect(self, subscription: orbit_mq.Subscription[orbit_mq.Event]) -> None:
        async for event in subscription:
            data = event.data
            self.transitions[data["job_id"]].append((data["seq"], data["state"]))
            self.changed.set()

    def ended(self, job_ids: list[str]) -> bool:
        return all(
            any(state in TERMINAL for _, state in self.transitions.get(job_id, ()))
            for job_id in job_ids
        )

    async def until(self, condition: Any, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                self.changed.clear()
                await self.changed.wait()

    def close(self) -> None:
        self._task.cancel()


def _endpoint_process(url: str, home: Path, name: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "ORBIT_MQ_URL": url,
        "ORBIT_MQ_HOME": str(home),
        "ORBIT_MQ_HEARTBEAT_INTERVAL": "1",
        "ORBIT_MQ_CONFIG": str(home / "no-config.toml"),
    }
    command = [sys.executable, "-P", "-m", "orbit_mq.cli", "endpoint", "start"]
    with log.open("ab") as out:
        return subprocess.Popen(
            [*command, "--name", name, "--plugins", "psij", "--log-level", "info"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def _wait_online(
    fabric: orbit_mq.Fabric, name: str, process: subprocess.Popen[bytes], log: Path
) -> None:
    async with asyncio.timeout(30):
        while not any(info.endpoint == name for info in await fabric.endpoints(window=0.3)):
            if process.poll() is not None:
                output = await asyncio.to_thread(log.read_text)
                raise RuntimeError(f"the endpoint exited: {output[-2000:]}")


async def run_scenario(
    url: str,
    workdir: Path,
    jobs: int = 300,
    restarts: int = 5,
    full_restarts: frozenset[int] = frozenset({2}),
) -> Report:
    """Submit `jobs` short jobs while the broker is restarted `restarts` times (the ones
    numbered in `full_restarts`, from 0, restart the whole node; the others its app)."""
    name = f"r{uuid.uuid4().hex[:10]}"
    home = workdir / "home"
    runs_log = workdir / "runs.log"
    report = Report(jobs=jobs, restarts=restarts)
    started = report.started
    endpoint = _endpoint_process(url, home, name, workdir / "endpoint.log")
    pika_recorder = PikaRecorder(
        url, owned_pattern(f"{name}.psij.job_status", login_user(orbit_mq.Settings(url=url)))
    )
    durable = f"restart-{name}"
    fabric = orbit_mq.Fabric(orbit_mq.Settings(url=url, timeout=120))
    try:
        await fabric.open()
        await _wait_online(fabric, name, endpoint, workdir / "endpoint.log")
        async with fabric.subscribe(f"{name}.psij.job_status", durable=durable) as events:
            collector = SdkCollector(events)
            psij = await fabric.endpoint(name).plugin("psij")
            job_ids = await _submit_while_restarting(
                psij, collector, runs_log, report, full_restarts
            )
            await collector.until(lambda: collector.ended(list(job_ids.values())), SETTLE_LIMIT)
            await _until_wire_complete(pika_recorder, collector, timeout=60)
            collector.close()
        _check(report, job_ids, collector, pika_recorder, runs_log, home / "endpoints" / name)
    finally:
        pika_recorder.close()
        with contextlib.suppress(Exception):
            channel = await fabric.connection.channel()
            await channel.queue_delete(subscription_queue(fabric.user, durable))
        await fabric.close()
        endpoint.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(endpoint.wait, 30)
        if endpoint.poll() is None:
            endpoint.kill()
        await _delete_queue(url, request_queue(name, "psij"))
    report.seconds = round(time.monotonic() - started, 1)
    return report


async def _delete_queue(url: str, queue: str) -> None:
    with contextlib.suppress(Exception):
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(queue)


async def _submit_while_restarting(
    psij: orbit_mq.PluginProxy,
    collector: SdkCollector,
    runs_log: Path,
    report: Report,
    full_restarts: frozenset[int],
) -> dict[int, str]:
    job_ids: dict[int, str] = {}
    accepted = asyncio.Condition()
    gate = asyncio.Semaphore(CONCURRENCY)

    async def submit(index: int) -> None:
        command = f"echo {index} >> {runs_log}; echo {index}"
        spec = {"executable": "/bin/sh", "arguments": ["-c", command]}
        async with gate:
            try:
                job = await psij.submit_job(spec=spec)
                job_ids[index] = job.job_id
            except orbit_mq.OrbitError as exc:
                when = time.monotonic() - report.started
                report.submit_errors.append(
                    f"job {index} at {when:.1f} s: {type(exc).__name__}: {exc}"
                )
        async with accepted:
            accepted.notify_all()

    async def restarter() -> None:
        for number in range(report.restarts):
            threshold = report.jobs * (number + 1) // (report.restarts + 1)
            async with accepted:
                await accepted.wait_for(
                    lambda: len(job_ids) + len(report.submit_errors) >= threshold  # noqa: B023
                )
            report.timeline.append(f"restart {number} at {time.monotonic() - report.started:.1f} s")
            away = await restart(full=number in full_restarts)
            report.broker_away.append(round(away, 2))
            report.timeline.append(f"broker back at {time.monotonic() - report.started:.1f} s")
            report.recovery.append(await _until_answered(psij))

    restarting = asyncio.create_task(restarter())
    await asyncio.gather(*(submit(index) for index in range(report.jobs)))
    await restarting
    return job_ids


async def _until_answered(psij: orbit_mq.PluginProxy) -> float:
    """Seconds until a call through the fabric is answered again (client and endpoint both
    reconnected and consuming), from now: the recovery time after a restart."""
    back = time.monotonic()
    deadline = back + RECOVERY_LIMIT
    while True:
        try:
            await psij.call("health", timeout=max(deadline - time.monotonic(), 1))
            return round(time.monotonic() - back, 2)
        except orbit_mq.TransientError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)  # polling until the endpoint consumes again


async def _until_wire_complete(
    recorder: PikaRecorder, collector: SdkCollector, timeout: float
) -> None:
    """Until the pika subscriber has received every event the SDK delivered."""
    expected = {f"{job}:{seq}" for job, steps in collector.transitions.items() for seq, _ in steps}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if expected <= {key for key, _ in recorder.snapshot()}:
            return
        await asyncio.sleep(0.2)  # the recorder is a thread: poll its list


def _check(
    report: Report,
    job_ids: dict[int, str],
    collector: SdkCollector,
    recorder: PikaRecorder,
    runs_log: Path,
    endpoint_dir: Path,
) -> None:
    runs = Counter(int(line) for line in runs_log.read_text().split() if line.strip())
    report.never_ran = [i for i in range(report.jobs) if runs[i] == 0]
    report.ran_twice = [i for i in range(report.jobs) if runs[i] > 1]
    for index, job_id in job_ids.items():
        stdout = endpoint_dir / "jobs" / job_id / "stdout"
        if not stdout.exists() or stdout.read_text() != f"{index}\n":
            report.bad_stdout.append(job_id)
        steps = collector.transitions.get(job_id, [])
        seqs = [seq for seq, _ in steps]
        terminal = [state for _, state in steps if state in TERMINAL]
        if len(terminal) != 1 or steps[-1][1] not in TERMINAL:
            report.no_terminal.append(job_id)
        elif terminal[0] != "COMPLETED":
            report.not_completed.append(job_id)
        if len(set(seqs)) != len(seqs):
            report.delivered_twice.append(job_id)
        if seqs != list(range(1, len(seqs) + 1)):
            report.not_in_order.append(job_id)
    _check_wire(report, collector, recorder)


def _check_wire(report: Report, collector: SdkCollector, recorder: PikaRecorder) -> None:
    copies: dict[str, set[bytes]] = defaultdict(set)
    messages = recorder.snapshot()
    report.wire_events = len(messages)
    for message_id, body in messages:
        data = json.loads(body)
        key = f"{data['data']['job_id']}:{data['data']['seq']}"
        if message_id != key or data.get("id") != key:
            report.wire_bad_keys.append(f"{message_id} / {data.get('id')} for {key}")
        copies[key].add(body)
    report.wire_duplicates = len(messages) - len(copies)
    report.wire_unequal_copies = sorted(key for key, bodies in copies.items() if len(bodies) > 1)
    seen = {f"{job}:{seq}" for job, steps in collector.transitions.items() for seq, _ in steps}
    report.wire_missing = sorted(seen - copies.keys())
    validator = _event_validator()
    for key, bodies in copies.items():
        for body in bodies:
            errors = [error.message for error in validator.iter_errors(json.loads(body))]
            if errors:
                report.wire_invalid.append(f"{key}: {errors[0]}")


def _event_validator() -> Any:
    """A foreign subscriber's check: the published schema of job_status events."""
    import jsonschema

    schema = json.loads((SCHEMAS / "events" / "psij.job_status.json").read_text())
    return jsonschema.Draft202012Validator(schema)
