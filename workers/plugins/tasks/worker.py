"""A worker process for Python function tasks: `python -m orbit_mq.workers.plugins.tasks.worker`.

It reads chunks of calls from its stdin and writes one outcome per call to its stdout as soon
as the call returns, each a frame (4-byte big-endian length, then a pickle). The file
descriptors 0 and 1 are moved aside first, so that what a task writes to them (print, C
code) cannot corrupt the frames; tasks' own stdout and stderr are captured per call.
"""

from __future__ import annotations

import os
import pickle
import struct
import sys
from typing import BinaryIO

from orbit_mq.workers.plugins.tasks.functions import Call, run_call

HEADER = struct.Struct(">I")


def read_frame(stream: BinaryIO) -> bytes | None:
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        return None
    (size,) = HEADER.unpack(header)
    return stream.read(size)


def write_frame(stream: BinaryIO, payload: bytes) -> None:
    stream.write(HEADER.pack(len(payload)) + payload)
    stream.flush()


def main() -> None:
    requests = os.fdopen(os.dup(0), "rb")
    replies = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    while (frame := read_frame(requests)) is not None:
        calls: list[Call] = pickle.loads(frame)
        for call in calls:
            outcome = run_call(Call(*call))
            write_frame(replies, pickle.dumps(tuple(outcome), protocol=pickle.HIGHEST_PROTOCOL))
    sys.exit(0)


if __name__ == "__main__":
    main()
