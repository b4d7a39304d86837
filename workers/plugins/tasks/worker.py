"""A worker process for Python function tasks: `python -m orbit_mq.workers.plugins.tasks.worker`.

It reads chunks of calls from its stdin and writes one outcome per call to its stdout as soon
as the call returns, each a frame (4-byte big-endian length, then a pickle). The file
descriptors 0 and 1 are moved aside first, so that what a task writes to them (print, C
code) cannot corrupt the frames; tasks' own stdout and stderr are captured per call.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import pickle
import signal
import struct
import sys
from typing import BinaryIO

from orbit_mq.workers.plugins.tasks.functions import Call, run_call

HEADER = struct.Struct(">I")
PR_SET_PDEATHSIG = 1


def read_frame(stream: BinaryIO) -> bytes | None:
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (size,) = HEADER.unpack(header)
    return stream.read(size)


def write_frame(stream: BinaryIO, payload: bytes) -> None:
    stream.write(HEADER.pack(len(payload)) + payload)
    stream.flush()


def die_with_parent() -> None:
    """Linux: be killed when the endpoint dies (a kill -9 leaves no orphaned worker running a
    long call); elsewhere a worker ends when it reads the end of its stdin."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before the line above took effect
        sys.exit(0)


def main() -> None:
    die_with_parent()
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    with contextlib.suppress(BrokenPipeError):  # the endpoint went away: so does the worker
        while (frame := read_frame(requests)) is not None:
            for call in pickle.loads(frame):
                outcome = run_call(Call(*call))
                payload = pickle.dumps(tuple(outcome), protocol=pickle.HIGHEST_PROTOCOL)
                write_frame(replies, payload)
    os._exit(0)  # without flushing the moved-aside streams again


if __name__ == "__main__":
    main()
