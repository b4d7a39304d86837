"""A fleet of lightweight endpoints in one process, for bench/scale.py.

    .venv/bin/python bench/scale_fleet.py --url URL --prefix scale-1 --first 0 --count 250 \\
        --home DIR

Starts `count` real endpoints (workers/endpoint.py, no plugins besides the built-in `control`:
each its own AMQP connection, request and discovery queues and presence heartbeats at the
default interval), at most `--parallel` connecting at a time. Writes one JSON line on stdout
once all are online (`started`, `failed`, `seconds`, `rss_mb`, `fds`), then serves until its
stdin closes or SIGTERM, stops them all and writes a last line (`stopped`, `seconds`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import sys
import time
from pathlib import Path

import psutil
import uvloop

from orbit_mq.config import Settings
from orbit_mq.workers.endpoint import Endpoint

STOP_GRACE = 5.0  # s an endpoint gets to stop (it has no calls in flight)


def raise_fd_limit() -> None:
    """Soft open-file limit up to the hard one: each endpoint holds about 4 descriptors."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def say(record: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def usage() -> dict[str, float]:
    me = psutil.Process()
    return {"rss_mb": round(me.memory_info().rss / 2**20, 1), "fds": me.num_fds()}


async def start_all(endpoints: list[Endpoint], parallel: int) -> list[str]:
    """Start every endpoint; the errors of those that did not (each stopped itself again)."""
    gate = asyncio.Semaphore(parallel)

    async def start(endpoint: Endpoint) -> None:
        async with gate:
            await endpoint.start()

    outcomes = await asyncio.gather(*(start(e) for e in endpoints), return_exceptions=True)
    return [f"{type(o).__name__}: {o}" for o in outcomes if isinstance(o, BaseException)]


async def until_told_to_stop() -> None:
    """Stdin's end (the bench closed the pipe) or SIGTERM / SIGINT."""
    loop = asyncio.get_running_loop()
    told = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, told.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    eof = asyncio.ensure_future(reader.read())
    signalled = asyncio.ensure_future(told.wait())
    await asyncio.wait({eof, signalled}, return_when=asyncio.FIRST_COMPLETED)
    eof.cancel()
    signalled.cancel()


async def run(args: argparse.Namespace) -> None:
    settings = Settings(url=args.url, home=Path(args.home))
    names = [f"{args.prefix}-{i:05d}" for i in range(args.first, args.first + args.count)]
    endpoints = [Endpoint(name, [], settings) for name in names]
    began = time.perf_counter()
    try:
        failed = await start_all(endpoints, args.parallel)
        seconds = round(time.perf_counter() - began, 3)
        started = len(endpoints) - len(failed)
        say({"started": started, "failed": failed[:3], "seconds": seconds} | usage())
        await until_told_to_stop()
    finally:
        stopping = time.perf_counter()
        await asyncio.gather(*(e.stop(grace=STOP_GRACE) for e in endpoints))
        say({"stopped": len(endpoints), "seconds": round(time.perf_counter() - stopping, 3)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--prefix", required=True, help="endpoint names are PREFIX-00000 …")
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--home", required=True, help="the endpoints' state (journals)")
    parser.add_argument("--parallel", type=int, default=25, help="connecting at a time")
    args = parser.parse_args()
    raise_fd_limit()
    uvloop.run(run(args))


if __name__ == "__main__":
    main()
