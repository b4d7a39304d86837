"""Scale benchmark: many endpoints on one RabbitMQ node, what they cost it and how discovery fares.

    .venv/bin/python bench/scale.py [--counts 100,500,1000] [--url URL] [--per-process 250]
                                    [--sample 15] [--long-window 5]

For each count N it starts N lightweight endpoints (bench/scale_fleet.py: real Endpoint objects
without plugins, each its own AMQP connection, queues and presence heartbeats at the default
interval, `--per-process` of them per process), then measures the time to start them, the
node's memory, descriptors and CPU (`rabbitmqctl status`, the beam process), the heartbeat
traffic on orbit.topology over `--sample` s, and `Fabric.endpoints()` discovery: how many of N
it saw within the default window and within `--long-window`, and when the answers arrived.
By default it boots a RabbitMQ node of its own (tests/broker_node.py, root, open-file limit
`--nofile`), so the system broker's descriptor limit is not the bound; `--url` uses a broker
already running (its rabbitmqctl, when local). Prints one JSON object (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
import uvloop
from scale_broker import Broker, ExternalBroker, OwnBroker
from scale_figures import broker_status, extrapolate, received_octets
from scale_probe import discovery, heartbeat_traffic

import orbit_mq
from orbit_mq.lanes import spare_channel
from orbit_mq.protocol import request_queue

FLEET = Path(__file__).resolve().parent / "scale_fleet.py"
START_TIMEOUT = 300.0  # s for one fleet process to have all its endpoints online
STOP_TIMEOUT = 120.0
IDLE = {"broker_rss_mb": "beam_rss_mb", "broker_erlang_mb": "erlang_mb", "broker_fds": "fds_used"}


def progress(message: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Fleet:
    """The endpoint processes of one round, stopped (stdin closed) at the end."""

    def __init__(self, url: str, prefix: str, count: int, per_process: int, home: Path) -> None:
        self.url, self.prefix, self.count, self.home = url, prefix, count, home
        self.shares = [per_process] * (count // per_process)
        if count % per_process:
            self.shares.append(count % per_process)
        self.processes: list[asyncio.subprocess.Process] = []
        self.reports: list[dict[str, Any]] = []

    async def start(self) -> float:
        """Spawn every process and wait until each says its endpoints are online; wall s."""
        began = time.perf_counter()
        first = 0
        for index, share in enumerate(self.shares):
            command = [sys.executable, "-P", str(FLEET), "--url", self.url, "--prefix", self.prefix]
            command += ["--first", str(first), "--count", str(share)]
            command += ["--home", str(self.home / f"fleet-{index}")]
            self.processes.append(
                await asyncio.create_subprocess_exec(
                    *command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
                )
            )
            first += share
        async with asyncio.timeout(START_TIMEOUT):
            self.reports = [await self._line(p) for p in self.processes]
        return time.perf_counter() - began

    @staticmethod
    async def _line(process: asyncio.subprocess.Process) -> dict[str, Any]:
        assert process.stdout is not None
        line = await process.stdout.readline()
        if not line:
            raise RuntimeError(f"an endpoint process ended early (exit {await process.wait()})")
        report: dict[str, Any] = json.loads(line)
        return report

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    async def stop(self) -> float:
        """Close every process's stdin and wait for them to stop their endpoints; wall s."""
        began = time.perf_counter()
        for process in self.processes:
            if process.stdin is not None and not process.stdin.is_closing():
                process.stdin.close()
        try:
            async with asyncio.timeout(STOP_TIMEOUT):
                for process in self.processes:
                    await process.wait()
        except TimeoutError:
            progress("endpoint processes did not stop in time: killing them")
            for process in self.processes:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        return time.perf_counter() - began


def cpu_seconds(pids: Sequence[int | None]) -> float:
    total = 0.0
    for pid in filter(None, pids):
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def beam_rss_mb(pid: int | None) -> float | None:
    """The node's resident memory as the kernel counts it (the beam process's RSS)."""
    try:
        return round(psutil.Process(pid).memory_info().rss / 2**20, 1) if pid else None
    except psutil.NoSuchProcess:
        return None


async def delete_queues(fabric: orbit_mq.Fabric, prefix: str, count: int) -> None:
    """The rounds' durable `control` request queues (the discovery queues went with them)."""
    async with spare_channel(fabric.connection, "cleanup", 30) as amqp:
        for i in range(count):
            await amqp.queue_delete(request_queue(f"{prefix}-{i:05d}", "control"))


async def measure(
    args: argparse.Namespace, broker: Broker, fabric: orbit_mq.Fabric, count: int, home: Path
) -> dict[str, Any]:
    prefix = f"scale{count}x{os.getpid()}"
    fleet = Fleet(broker.url, prefix, count, args.per_process, home / prefix)
    progress(f"N={count}: starting {count} endpoints in {len(fleet.shares)} processes")
    try:
        started_s = await fleet.start()
        started = sum(r["started"] for r in fleet.reports)
        progress(f"N={count}: {started} online in {started_s:.1f} s; sampling {args.sample} s")
        result = await sampled(args, broker, fabric, fleet, count)
        result["start"] = start_figures(fleet, started_s, count)
        progress(f"N={count}: discovery")
        result["discovery"] = await discovery(fabric, prefix, count, args.long_window)
    finally:
        stop_s = await fleet.stop()
        progress(f"N={count}: stopped in {stop_s:.1f} s")
    await delete_queues(fabric, prefix, count)
    result["stop_seconds"] = round(stop_s, 2)
    return result


def start_figures(fleet: Fleet, wall: float, count: int) -> dict[str, Any]:
    reports = fleet.reports
    return {
        "processes": len(reports),
        "started": sum(r["started"] for r in reports),
        "failed": [f for r in reports for f in r["failed"]],
        "wall_s": round(wall, 2),
        "slowest_process_s": max(r["seconds"] for r in reports),
        "wall_ms_per_endpoint": round(1000 * wall / count, 2),
        "endpoint_rss_mb": round(sum(r["rss_mb"] for r in reports), 1),
        "endpoint_fds": sum(r["fds"] for r in reports),
        "rss_mb_per_endpoint": round(sum(r["rss_mb"] for r in reports) / count, 3),
        "fds_per_endpoint": round(sum(r["fds"] for r in reports) / count, 2),
    }


async def sampled(
    args: argparse.Namespace, broker: Broker, fabric: orbit_mq.Fabric, fleet: Fleet, count: int
) -> dict[str, Any]:
    """Heartbeat traffic, broker and endpoint CPU, broker bytes in, over one sampling period."""
    before_in = received_octets(broker.connections(), fleet.prefix)
    cpu_before = cpu_seconds([broker.pid()]), cpu_seconds(fleet.pids())
    traffic = await heartbeat_traffic(fabric, args.sample)
    seconds = traffic["seconds"]
    cpu_after = cpu_seconds([broker.pid()]), cpu_seconds(fleet.pids())
    after_in = received_octets(broker.connections(), fleet.prefix)
    traffic["broker_received_bytes_per_s"] = round((after_in - before_in) / seconds, 1)
    return {
        "endpoints": count,
        "broker": broker_status(broker.status()) | {"beam_rss_mb": beam_rss_mb(broker.pid())},
        "broker_cpu_percent": round(100 * (cpu_after[0] - cpu_before[0]) / seconds, 2),
        "endpoint_cpu_percent": round(100 * (cpu_after[1] - cpu_before[1]) / seconds, 2),
        "load_average_1m": round(os.getloadavg()[0], 2),  # the machine is shared or not
        "heartbeats": traffic,
    }


# The figures projected to more endpoints: where each is in a round's result.
PROJECTED = {
    "broker_rss_mb": ("broker", "beam_rss_mb"),
    "broker_erlang_mb": ("broker", "erlang_mb"),
    "broker_connections_mb": ("broker", "connections_mb"),
    "broker_fds": ("broker", "fds_used"),
    "connections": ("broker", "connections"),
    "queues": ("broker", "queues"),
    "erlang_processes": ("broker", "erlang_processes"),
    "heartbeat_msg_per_s": ("heartbeats", "msg_per_s"),
    "heartbeat_bytes_per_s": ("heartbeats", "bytes_per_s"),
    "broker_cpu_percent": ("broker_cpu_percent",),
    "endpoint_rss_mb": ("start", "endpoint_rss_mb"),
}


def pick(result: dict[str, Any], path: tuple[str, ...]) -> float:
    value: Any = result
    for key in path:
        value = value[key]
    return float(value)


def extrapolation(rounds: list[dict[str, Any]], baseline: dict[str, Any], at: int) -> Any:
    """Straight lines through the rounds (and N=0: the idle node) to `at` endpoints."""
    out = {}
    for name, path in PROJECTED.items():
        points = [(float(r["endpoints"]), pick(r, path)) for r in rounds]
        if name in IDLE and baseline.get(IDLE[name]) is not None:
            points.append((0.0, float(baseline[IDLE[name]])))
        out[name] = extrapolate(points, at)
    return {"endpoints": at, "linear_fit": out}


async def run(args: argparse.Namespace, broker: Broker, home: Path) -> dict[str, Any]:
    counts = [int(c) for c in args.counts.split(",")]
    async with orbit_mq.connect(broker.url) as fabric:
        baseline = broker_status(broker.status()) | {"beam_rss_mb": beam_rss_mb(broker.pid())}
        progress(f"idle node: {baseline['rss_mb']} MB, {baseline['fds_used']} fds")
        rounds = []
        for count in counts:
            rounds.append(await measure(args, broker, fabric, count, home))
            print(json.dumps(rounds[-1]), file=sys.stderr, flush=True)
    return {
        "benchmark": "scale",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "broker": broker.describe(),
        "heartbeat_interval_s": orbit_mq.Settings().heartbeat_interval,
        "discovery_window_s": orbit_mq.Settings().discovery_window,
        "idle_broker": baseline,
        "rounds": rounds,
        "extrapolated": extrapolation(rounds, baseline, args.extrapolate),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="100,500,1000", help="endpoint counts, one round each")
    parser.add_argument("--url", help="an existing broker (default: a node of its own)")
    parser.add_argument("--per-process", type=int, default=250, help="endpoints per process")
    parser.add_argument("--sample", type=float, default=15.0, help="heartbeat sampling, s")
    parser.add_argument("--long-window", type=float, default=5.0, help="the longer discovery")
    parser.add_argument("--nofile", type=int, default=65536, help="own node's open-file limit")
    parser.add_argument("--extrapolate", type=int, default=10_000, help="endpoints to project to")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop the node and fleets too
    with tempfile.TemporaryDirectory(prefix="orbit-scale-") as tmp:
        home = Path(tmp)
        broker: Broker = ExternalBroker(args.url) if args.url else OwnBroker(home, args.nofile)
        try:
            progress(f"broker: {broker.describe()}")
            result = uvloop.run(run(args, broker, home))
        except KeyboardInterrupt:
            progress("interrupted: the endpoints are stopped, the node stops")
            raise SystemExit(130) from None
        finally:
            broker.close()
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
