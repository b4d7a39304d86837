"""Failover on a 3-node cluster of the tests' own (tests/broker_cluster.py: on the cluster
ports 127.0.0.1:5711-5713 when they are free, else on free ones; booted for this module and
stopped after it), quorum queues. Part of `make test` (CI); skipped without root and
/usr/lib/rabbitmq/bin, except with ORBIT_MQ_REQUIRE_CLUSTER set (CI), where that fails.

(a) The node an endpoint (psij and echo) and a client are both connected to is killed (SIGKILL)
in the middle of a 200-job run and a stream of RPC calls, then booted again; three rounds,
each on the node the two moved to. Every job runs once and reaches exactly one terminal event
(a durable subscription watches job_status), every call is answered once (echo.bump counts
its runs: the replies are 1..N, each once), and the failover time (node killed → first call
answered after it) is printed.
(b) A node frozen with SIGSTOP, the one both are on: both leave it within FREEZE_BOUND s.

Nothing sleeps to synchronise: the tests wait on events (reconnections, replies, job events)
with deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from broker_cluster import NET_TICKTIME, BrokerCluster, cluster_ports
from broker_node import usable
from echo_plugin import Echo
from restart_scenario import SdkCollector

import orbit_mq
from orbit_mq.contracts.psij import TERMINAL
from orbit_mq.retry import MAX_PAUSE
from orbit_mq.subscribe import durable_queue_name
from orbit_mq.waiting import wait_within
from orbit_mq.workers.endpoint import Endpoint
from orbit_mq.workers.plugins.psij import PsiJ

pytestmark = pytest.mark.timeout(240)

JOBS = 200
ROUNDS = 3  # kills in test (a)
CONCURRENCY = 16  # job submissions in flight
STREAMS = 4  # RPC call loops running side by side
HEARTBEAT = 2  # s, AMQP heartbeat asked for in the URL: aiormq gives up after (2 + 1) * 3 s
RECONNECT_INTERVAL = 1.0  # s, the default
FAILOVER_LIMIT = 30.0  # s for calls to be answered again after a kill
# A hung node: the client and endpoint see no frames for (HEARTBEAT + 1) * 3 s, checked every
# HEARTBEAT / 2 s; the other nodes give up on it within NET_TICKTIME * 1.25 s (until then a
# channel on them may still wait on it); then one reconnection interval and the SDK's longest
# pause between two tries of a call.
FREEZE_BOUND = (HEARTBEAT + 1) * 3 + HEARTBEAT / 2 + NET_TICKTIME * 1.25
FREEZE_BOUND += RECONNECT_INTERVAL + MAX_PAUSE
SETTLE_LIMIT = 120.0  # s for every job's terminal event once all are submitted


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerCluster]:
    reason = usable()
    if reason:
        if os.environ.get("ORBIT_MQ_REQUIRE_CLUSTER"):  # CI (.ci/run): it must run
            pytest.fail(f"a cluster of the tests' own {reason}")
        pytest.skip(f"a cluster of the tests' own {reason}")
    ports = cluster_ports(3)  # None where `make cluster` runs: then ports of its own
    made = BrokerCluster(tmp_path_factory.mktemp("cluster"), size=3, ports=ports)
    started = time.monotonic()
    made.start()
    print(f"cluster of 3 started in {time.monotonic() - started:.1f} s")
    try:
        yield made
    finally:
        made.stop()


@pytest.fixture
def cluster_settings(cluster: BrokerCluster, tmp_path: Path) -> orbit_mq.Settings:
    return orbit_mq.Settings(
        url=f"{cluster.url}?heartbeat={HEARTBEAT}",
        home=tmp_path / "home",
        queue_type="quorum",
        heartbeat_interval=0.5,
        timeout=60,
        discovery_window=0.3,
        reconnect_interval=RECONNECT_INTERVAL,
    )


class Moves:
    """When a connection came back after a drop, and on which node (its URL's port)."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.times: list[tuple[float, int]] = []
        self.changed = asyncio.Event()
        connection.reconnect_callbacks.add(self._moved)

    def _moved(self, *_: Any) -> None:
        self.times.append((time.monotonic(), self.port))
        self.changed.set()

    @property
    def port(self) -> int:
        port = self.connection.url.port
        assert port is not None
        return port

    async def since(self, moment: float, timeout: float) -> float:
        """Seconds from `moment` to the first reconnection after it."""
        async with asyncio.timeout(timeout):
            while not any(when > moment for when, _ in self.times):
                self.changed.clear()
                await self.changed.wait()
        return next(when for when, _ in self.times if when > moment) - moment


@dataclass
class Stream:
    """Calls of echo.bump, one after the other in each of STREAMS loops, until stopped."""

    fabric: orbit_mq.Fabric
    endpoint: str
    replies: list[int] = field(default_factory=list)
    answered: list[float] = field(default_factory=list)  # monotonic time of each reply
    errors: list[str] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        await asyncio.gather(*(self._loop() for _ in range(STREAMS)))

    async def _loop(self) -> None:
        for _ in range(100_000):  # bounded; ends when stopped
            if self.stopping.is_set():
                return
            try:  # bump runs once per message_id: the SDK sends it again after a drop
                reply = await self.fabric.call(self.endpoint, "echo", "bump", retry=True)
            except orbit_mq.OrbitError as exc:  # a failure of the test: this loop ends
                self.errors.append(f"{type(exc).__name__}: {exc}")
                return
            self.replies.append(reply)
            self.answered.append(time.monotonic())
            self.changed.set()

    async def answered_after(self, moment: float, timeout: float) -> float:
        """Seconds from `moment` to the first reply after it."""
        async with asyncio.timeout(timeout):
            while not self.answered or self.answered[-1] <= moment:
                self.changed.clear()
                await self.changed.wait()
        return next(when for when in self.answered if when > moment) - moment


@dataclass
class Pair:
    endpoint: Endpoint
    fabric: orbit_mq.Fabric
    endpoint_moves: Moves
    client_moves: Moves

    def node(self, cluster: BrokerCluster) -> int:
        """The node both are connected to."""
        ports = self.endpoint_moves.port, self.client_moves.port
        assert ports[0] == ports[1], f"endpoint and client on different nodes: {ports}"
        return cluster.index_of(ports[0])


@pytest.fixture
async def pair(
    cluster: BrokerCluster, cluster_settings: orbit_mq.Settings, name: str
) -> AsyncIterator[Pair]:
    """An endpoint (psij, echo) and a client, both on the first node that answers."""
    await asyncio.to_thread(cluster.revive)  # what an earlier test left down
    endpoint = Endpoint(name, [PsiJ, Echo], cluster_settings)
    await endpoint.start()
    try:
        async with orbit_mq.Fabric(cluster_settings) as fabric:
            yield Pair(endpoint, fabric, Moves(endpoint.connection), Moves(fabric.connection))
    finally:
        await endpoint.stop(grace=5)


async def kill_round(cluster: BrokerCluster, pair: Pair, stream: Stream) -> dict[str, Any]:
    """Kill the node both are on; the seconds until a call is answered and both moved."""
    victim = pair.node(cluster)
    # Not while the node booted last round still catches up: two down would stall the queues.
    await asyncio.to_thread(cluster.wait_spare, victim)
    killed = time.monotonic()
    await asyncio.to_thread(cluster.kill, victim)
    try:
        failover = await stream.answered_after(killed, FAILOVER_LIMIT)
    except TimeoutError:  # say what the queues looked like
        other = (victim + 1) % len(cluster.nodes)
        queues = await asyncio.to_thread(
            cluster.nodes[other].ctl, "-q", "list_queues", "name", "consumers", "messages", "leader"
        )
        message = f"no call answered {FAILOVER_LIMIT} s after a kill:\n{queues}"
        raise AssertionError(message) from None
    endpoint_moved = await pair.endpoint_moves.since(killed, FAILOVER_LIMIT)
    client_moved = await pair.client_moves.since(killed, FAILOVER_LIMIT)
    assert victim not in (cluster.index_of(pair.endpoint_moves.port), pair.node(cluster))
    return {
        "node": victim,
        "failover_s": round(failover, 2),
        "endpoint_reconnected_s": round(endpoint_moved, 2),
        "client_reconnected_s": round(client_moved, 2),
    }


async def submit_jobs(
    psij: orbit_mq.PluginProxy, indices: range, runs: Path, job_ids: dict[int, str]
) -> list[str]:
    gate = asyncio.Semaphore(CONCURRENCY)
    errors: list[str] = []

    async def submit(index: int) -> None:
        spec = {"executable": "/bin/sh", "arguments": ["-c", f"echo {index} >> {runs}"]}
        async with gate:
            try:  # submit_job runs once per message_id: the SDK retries it after a drop
                job = await psij.submit_job(spec=spec)
            except orbit_mq.OrbitError as exc:
                errors.append(f"job {index}: {type(exc).__name__}: {exc}")
                return
            job_ids[index] = job.job_id

    await asyncio.gather(*(submit(index) for index in indices))
    return errors


async def run_rounds(
    cluster: BrokerCluster, pair: Pair, stream: Stream, runs: Path, job_ids: dict[int, str]
) -> tuple[list[dict[str, Any]], list[str]]:
    """ROUNDS slices of the jobs; each killed half-way through, the node booted again after."""
    psij = await pair.fabric.endpoint(pair.endpoint.name).plugin("psij")
    per_round = JOBS // ROUNDS
    rounds, errors = [], []
    for number in range(ROUNDS):
        first = number * per_round
        last = JOBS if number == ROUNDS - 1 else first + per_round
        middle = (first + last) // 2
        errors += await submit_jobs(psij, range(first, middle), runs, job_ids)
        killing = asyncio.create_task(kill_round(cluster, pair, stream))
        errors += await submit_jobs(psij, range(middle, last), runs, job_ids)
        figures = await killing
        started = time.monotonic()
        await asyncio.to_thread(cluster.restart, figures["node"])
        figures["node_back_s"] = round(time.monotonic() - started, 1)
        rounds.append(figures)
    return rounds, errors


def check_jobs(events: SdkCollector, job_ids: dict[int, str], runs: Path) -> dict[str, list[Any]]:
    """What went wrong with the jobs (empty lists when nothing did)."""
    ran = Counter(int(line) for line in runs.read_text().split())
    problems: dict[str, list[Any]] = {
        "not_submitted": sorted(set(range(JOBS)) - job_ids.keys()),
        "never_ran": [i for i in range(JOBS) if ran[i] == 0],
        "ran_twice": [i for i in range(JOBS) if ran[i] > 1],
        "not_one_terminal": [],
        "not_in_order": [],
    }
    for job_id in job_ids.values():
        steps = events.transitions.get(job_id, [])
        if sum(state in TERMINAL for _, state in steps) != 1 or steps[-1][1] not in TERMINAL:
            problems["not_one_terminal"].append(job_id)
        if [seq for seq, _ in steps] != list(range(1, len(steps) + 1)):
            problems["not_in_order"].append(job_id)
    return {key: value for key, value in problems.items() if value}


async def test_killed_node_loses_no_job_and_no_call(
    cluster: BrokerCluster, pair: Pair, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs.log"
    runs.touch()
    durable = f"cluster-{pair.endpoint.name}"
    job_ids: dict[int, str] = {}
    stream = Stream(pair.fabric, pair.endpoint.name)
    async with pair.fabric.subscribe(
        f"{pair.endpoint.name}.psij.job_status", durable=durable
    ) as subscription:
        events = SdkCollector(subscription)
        calls = asyncio.create_task(stream.run())
        try:
            await stream.answered_after(0, 30)  # calls flow before the first kill
            rounds, errors = await run_rounds(cluster, pair, stream, runs, job_ids)
        finally:
            stream.stopping.set()
            await wait_within(calls, 60)
        ids = list(job_ids.values())
        await events.until(lambda: events.ended(ids), SETTLE_LIMIT)
        events.close()
    with contextlib.suppress(orbit_mq.OrbitError):
        channel = await pair.fabric.connection.channel()
        await channel.queue_delete(durable_queue_name(pair.fabric.user, durable))
    bumps = pair.endpoint.plugins["echo"].bumps  # type: ignore[attr-defined]
    summary = {
        "jobs": len(job_ids),
        "calls": len(stream.replies),
        "lost_calls": len(stream.errors) + bumps - len(stream.replies),
        "duplicate_replies": len(stream.replies) - len(set(stream.replies)),
        "rounds": rounds,
    }
    with capsys.disabled():  # the figures go into the log of every run, not only a failed one
        print("\ncluster failover:", json.dumps(summary))
    assert not errors and not stream.errors, (errors, stream.errors)
    assert not check_jobs(events, job_ids, runs)
    # each bump ran once and was answered once: the replies are exactly 1..N
    assert sorted(stream.replies) == list(range(1, len(stream.replies) + 1))
    assert bumps == len(stream.replies)


async def test_frozen_node_is_left_within_the_bound(
    cluster: BrokerCluster, pair: Pair, capsys: pytest.CaptureFixture[str]
) -> None:
    stream = Stream(pair.fabric, pair.endpoint.name)
    calls = asyncio.create_task(stream.run())
    victim = pair.node(cluster)
    try:
        await stream.answered_after(0, 30)
        await asyncio.to_thread(cluster.wait_spare, victim)
        frozen = time.monotonic()
        await asyncio.to_thread(cluster.freeze, victim)
        try:
            endpoint_left = await pair.endpoint_moves.since(frozen, FREEZE_BOUND)
            client_left = await pair.client_moves.since(frozen, FREEZE_BOUND)
            # the first call answered once the client is off the frozen node
            left = frozen + client_left
            answered = client_left + await stream.answered_after(left, FREEZE_BOUND)
        finally:
            await asyncio.to_thread(cluster.thaw, victim)
        assert victim not in (cluster.index_of(pair.endpoint_moves.port), pair.node(cluster))
    finally:
        stream.stopping.set()
        await wait_within(calls, 60)
    figures = {
        "bound_s": FREEZE_BOUND,
        "endpoint_s": round(endpoint_left, 2),
        "client_s": round(client_left, 2),
        "first_call_s": round(answered, 2),
    }
    with capsys.disabled():
        print("\nfrozen node left:", json.dumps(figures))
    await asyncio.to_thread(cluster.heal, victim)
    assert not stream.errors
    assert sorted(stream.replies) == list(range(1, len(stream.replies) + 1))
