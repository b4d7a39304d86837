"""Staging benchmark: MB/s of a whole-file upload and download through the broker.

    .venv/bin/python bench/staging.py [--url URL] [--size-mb 200] [--chunk-mb 1] [--window 8]
                                      [--runs 3] [--save]

The endpoint runs in its own process (`orbit-mq endpoint start … --plugins staging`, its
roots confined to a scratch directory); the client puts a file of random bytes with
`orbit_mq.put_file`, gets it back with `orbit_mq.get_file`, and checks both SHA-256s. Times
include hashing (the client's before the upload, the endpoint's in get_begin) and the final
fsync + rename. Prints one JSON object; `--save` also writes it to
bench/results/staging-{size}mb-chunk{chunk}m-w{window}-{codec}.json (see docs/performance.md).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop
from support import endpoint_process, wait_online

import orbit_mq
from orbit_mq.contracts.staging import codec

TARGETS = {"put_mb_s": 100.0, "get_mb_s": 100.0}
MB = 1_000_000
MiB = 1024 * 1024


def memory_mb(pid: int, field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of a process, MB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024 / MB
    return float("nan")


def random_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as file:
        left = size
        while left:
            block = os.urandom(min(left, 8 * MiB))
            digest.update(block)
            file.write(block)
            left -= len(block)
    return digest.hexdigest()


async def one_run(
    staging: orbit_mq.PluginProxy, scratch: Path, source: Path, args: argparse.Namespace, n: int
) -> dict[str, float]:
    remote = scratch / f"remote-{n}.bin"
    back = scratch / f"back-{n}.bin"
    chunk = int(args.chunk_mb * MiB)
    began = time.perf_counter()
    put = await orbit_mq.put_file(
        staging, source, str(remote), chunk_size=chunk, window=args.window
    )
    put_seconds = time.perf_counter() - began
    began = time.perf_counter()
    get = await orbit_mq.get_file(staging, str(remote), back, chunk_size=chunk, window=args.window)
    get_seconds = time.perf_counter() - began
    assert put.sha256 == get.sha256, "checksums differ"
    remote.unlink()
    back.unlink()
    return {
        "put_mb_s": round(put.size / put_seconds / MB, 1),
        "get_mb_s": round(get.size / get_seconds / MB, 1),
        "put_s": round(put_seconds, 3),
        "get_s": round(get_seconds, 3),
    }


async def run(args: argparse.Namespace, name: str, pid: int, scratch: Path) -> dict[str, Any]:
    load = os.getloadavg()[0]
    size = int(args.size_mb * MB)
    source = scratch / "source.bin"
    digest = await asyncio.to_thread(random_file, source, size)
    async with orbit_mq.connect(args.url) as fabric:
        await wait_online(fabric, name)
        idle = memory_mb(pid, "VmRSS")
        staging = await fabric.endpoint(name).plugin("staging", session=False)
        runs = [await one_run(staging, scratch, source, args, n) for n in range(args.runs)]
    put_best = max(run["put_mb_s"] for run in runs)
    get_best = max(run["get_mb_s"] for run in runs)
    return {
        "benchmark": "staging",
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "size_bytes": size,
        "sha256": digest,
        "codec": codec.BACKEND,
        "load_average_before": load,
        "chunk_bytes": int(args.chunk_mb * MiB),
        "window": args.window,
        "runs": runs,
        "put_mb_s": {"best": put_best, "median": statistics.median(r["put_mb_s"] for r in runs)},
        "get_mb_s": {"best": get_best, "median": statistics.median(r["get_mb_s"] for r in runs)},
        "endpoint_rss_mb": {"idle": round(idle, 1), "peak": round(memory_mb(pid, "VmHWM"), 1)},
        "targets": TARGETS,
        "met": {
            "put_mb_s": put_best >= TARGETS["put_mb_s"],
            "get_mb_s": get_best >= TARGETS["get_mb_s"],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=os.environ.get("ORBIT_MQ_URL", orbit_mq.Settings().url))
    parser.add_argument("--size-mb", type=float, default=200, help="file size, MB (10^6 bytes)")
    parser.add_argument("--chunk-mb", type=float, default=1, help="chunk size, MiB")
    parser.add_argument("--window", type=int, default=8, help="chunk calls in flight")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--save", action="store_true", help="also write bench/results/…json")
    args = parser.parse_args()
    name = f"bench-staging-{os.getpid()}"
    scratch = Path(tempfile.mkdtemp(prefix="orbit-bench-staging-"))
    os.environ["ORBIT_MQ_STAGING_ROOTS"] = str(scratch)  # inherited by the endpoint process
    try:
        with endpoint_process(args.url, name, "staging") as endpoint:
            result = uvloop.run(run(args, name, endpoint.pid, scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    text = json.dumps(result, indent=2)
    print(text)
    if args.save:
        label = f"{args.size_mb:g}mb-chunk{args.chunk_mb:g}m-w{args.window}-{codec.BACKEND}"
        out = Path(__file__).parent / "results" / f"staging-{label}.json"
        out.write_text(text + "\n")
        print(f"written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
