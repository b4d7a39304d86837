"""Whole files to and from an endpoint's `staging` plugin: pipelined, SHA-256 verified, resumable.

    staging = await fabric.endpoint("hpc1").plugin(Staging, session=False)
    result = await orbit_mq.put_file(staging, "big.bin", "/scratch/alice/big.bin")
    await orbit_mq.get_file(staging, "/scratch/alice/out.h5", "out.h5", progress=print)

Several chunk calls are in flight at once (`window`), so a transfer is not bound by round
trips; memory stays at about `window` x `chunk_size` whatever the file's size. After a
transient failure (connection lost, timeout, endpoint offline or restarted) the transfer
continues where the endpoint (upload) or the local partial file (download) left off, up to
`retries` times; calling put_file/get_file again later resumes the same way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from orbit_mq.caller import new_id
from orbit_mq.contracts.staging import DownloadInfo, FileInfo, PutState, Staging
from orbit_mq.contracts.staging.errors import (
    ChecksumMismatch,
    IncompleteTransfer,
    NoSpace,
    TransferGap,
    TransferNotFound,
)
from orbit_mq.contracts.staging.files import publish
from orbit_mq.errors import CallTimeout, TransientError
from orbit_mq.proxy import remote as proxy_of
from orbit_mq.proxy import with_options
from orbit_mq.retry import retrying
from orbit_mq.staging_local import (
    BlockingCalls,
    LocalPartial,
    local_digest,
    local_target,
    read_encoded,
)

T = TypeVar("T")
Progress = Callable[[int, int], object]
"""Called with (bytes done, total bytes) as a transfer advances."""

log = logging.getLogger("orbit_mq.staging")

DEFAULT_WINDOW = 8
DEFAULT_RETRIES = 5
MiB = 1024 * 1024
# Calls that read a whole file on the endpoint (hashing) get this rate's worth of extra time.
SLOWEST_DISK = 20 * MiB
# What a transfer resumes after: the broker or the endpoint was away (or restarted and forgot
# the upload), or the endpoint is busy; not a full disk (NoSpace, an Unavailable).
TRANSIENT = (TransientError, CallTimeout, TransferNotFound, TransferGap, IncompleteTransfer)


@dataclass(frozen=True)
class TransferResult:
    direction: Literal["put", "get"]
    local: Path
    remote: str  # the endpoint's path, symlinks resolved
    size: int
    sha256: str  # verified: the same on both sides
    transferred: int  # bytes that crossed the broker this time
    resumed_from: int  # bytes already there when the transfer (first) started
    attempts: int
    seconds: float

    @property
    def rate(self) -> float:
        """Bytes per second that crossed the broker."""
        return self.transferred / self.seconds if self.seconds > 0 else 0.0


def _hashing_timeout(staging: Staging, size: int) -> float:
    """Calls that read a whole file on the endpoint get time for it."""
    proxy = proxy_of(staging)
    return (proxy.timeout or proxy.fabric.settings.timeout) + size / SLOWEST_DISK


def _resumable(error: BaseException) -> bool:
    return isinstance(error, TRANSIENT) and not isinstance(error, NoSpace)


async def _with_retries(
    attempt: Callable[[], Awaitable[T]], retries: int, what: str
) -> tuple[T, int]:
    """`attempt()` until it succeeds, resuming after a transient failure `retries` times."""
    tries = retrying(attempts=retries + 1, when=_resumable, what=what)
    async for trying in tries:
        with trying:
            return await attempt(), trying.retry_state.attempt_number
    raise AssertionError("unreachable: tenacity re-raises the last error")


# -- upload --------------------------------------------------------------------------------------


async def put_file(
    staging: Staging,
    local: str | os.PathLike[str],
    remote: str,
    *,
    overwrite: bool = False,
    parents: bool = True,
    chunk_size: int | None = None,
    window: int = DEFAULT_WINDOW,
    progress: Progress | None = None,
    retries: int = DEFAULT_RETRIES,
) -> TransferResult:
    """Upload the file `local` to `remote` on the endpoint of `staging` (a staging proxy).

    A `remote` ending in `/` means "into that directory, same name". Refuses an existing
    remote file unless `overwrite` (FileExists); creates missing remote directories unless
    `parents=False`. Raises ChecksumMismatch if the endpoint received other bytes.
    """
    source = await asyncio.to_thread(lambda: Path(local).expanduser())
    if remote.endswith("/"):
        remote += source.name
    size, digest = await asyncio.to_thread(local_digest, source)
    started = time.monotonic()
    # Commit flushes the file to disk, begin may hash it: they get time for that.
    hashing = with_options(staging, timeout=_hashing_timeout(staging, size))
    # Every try of the commit is one deduplicated request: it runs once, whatever is retried.
    commit = with_options(staging, timeout=_hashing_timeout(staging, size), message_id=new_id())
    committed: list[str] = []
    first: list[int] = []
    sent = 0

    async def attempt() -> FileInfo:
        nonlocal sent
        if committed:  # the last try's commit may have run: its stored reply says so
            try:
                return await commit.put_commit(transfer_id=committed[0])
            except (TransferNotFound, IncompleteTransfer):  # it did not: upload again
                committed.clear()
        state = await hashing.put_begin(
            path=remote,
            size=size,
            sha256=digest,
            overwrite=overwrite,
            parents=parents,
            chunk_size=chunk_size,
        )
        first[:] = first or [state.offset]
        sent += await _send(staging, source, state, window, progress)
        committed[:] = [state.transfer_id]
        return await commit.put_commit(transfer_id=state.transfer_id)

    info, attempts = await _with_retries(attempt, retries, f"put {source} to {remote}")
    return TransferResult(
        direction="put",
        local=source,
        remote=info.path,
        size=size,
        sha256=digest,
        transferred=sent,
        resumed_from=first[0] if first else size,
        attempts=attempts,
        seconds=time.monotonic() - started,
    )


async def _send(
    staging: Staging, source: Path, state: PutState, window: int, progress: Progress | None
) -> int:
    """Send the file from the endpoint's offset on, `window` chunks in flight; bytes sent."""
    size, offset, chunk = state.size, state.offset, state.chunk_size
    window = max(1, window)  # chunk calls go out as messages of their own (see caller.batches)
    if progress:
        progress(offset, size)
    fd = await asyncio.to_thread(os.open, source, os.O_RDONLY | os.O_CLOEXEC)
    reader, in_flight = BlockingCalls(), set[asyncio.Future[Any]]()
    position, acked = offset, offset
    try:
        while position < size or in_flight:
            while position < size and len(in_flight) < window:
                length = min(chunk, size - position)
                data = await reader.run(read_encoded, fd, position, length, source)
                sending = staging.put_chunk(
                    transfer_id=state.transfer_id, offset=position, data=data
                )
                in_flight.add(asyncio.ensure_future(sending))
                position += length
            done, in_flight = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            for reply in _results(done).values():
                acked = max(acked, reply.received)
            if progress:
                progress(acked, size)
    finally:
        await _cancel(in_flight)
        await reader.settle()
        os.close(fd)
    return position - offset


def _results(done: set[asyncio.Future[Any]]) -> dict[asyncio.Future[Any], Any]:
    """The results of finished calls; the first failure is raised once all were looked at
    (so none is left "never retrieved")."""
    failures = [error for task in done if (error := task.exception()) is not None]
    if failures:
        raise failures[0]
    return {task: task.result() for task in done}


async def _cancel(tasks: set[asyncio.Future[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


# -- download ------------------------------------------------------------------------------------


async def get_file(
    staging: Staging,
    remote: str,
    local: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    chunk_size: int | None = None,
    window: int = DEFAULT_WINDOW,
    progress: Progress | None = None,
    retries: int = DEFAULT_RETRIES,
) -> TransferResult:
    """Download `remote` from the endpoint of `staging` to the file (or into the directory)
    `local`; a `local` ending in `/` is a directory, created if missing. The bytes go to a
    hidden partial file that is renamed into place once its SHA-256 matches the endpoint's;
    an existing local file is kept unless `overwrite`."""
    target = await asyncio.to_thread(local_target, local, remote, overwrite)
    started = time.monotonic()
    first: list[int] = []
    received = 0

    async def attempt() -> tuple[str, int, str]:
        nonlocal received
        found = await staging.stat(path=remote)
        hashing = with_options(staging, timeout=_hashing_timeout(staging, found.size))
        info = await hashing.get_begin(path=remote, chunk_size=chunk_size)
        partial = await asyncio.to_thread(LocalPartial.open, target, info.sha256, info.size)
        first[:] = first or [partial.have]
        before = partial.have
        try:
            await _receive(staging, info, partial, window, progress)
        finally:
            received += partial.have - before
        digest = await asyncio.to_thread(partial.finish)
        if digest != info.sha256:
            await asyncio.to_thread(partial.path.unlink, True)
            raise ChecksumMismatch(
                f"{remote} arrived with SHA-256 {digest}, but the endpoint has "
                f"{info.sha256} (did it change meanwhile?); the partial file was deleted: "
                "get it again",
                {"expected": info.sha256, "actual": digest},
            )
        await asyncio.to_thread(publish, str(partial.path), str(target), overwrite)
        return info.path, info.size, digest

    (path, size, digest), attempts = await _with_retries(
        attempt, retries, f"get {remote} to {target}"
    )
    return TransferResult(
        direction="get",
        local=target,
        remote=path,
        size=size,
        sha256=digest,
        transferred=received,
        resumed_from=first[0] if first else 0,
        attempts=attempts,
        seconds=time.monotonic() - started,
    )


async def _receive(
    staging: Staging,
    info: DownloadInfo,
    partial: LocalPartial,
    window: int,
    progress: Progress | None,
) -> None:
    """Fetch the file from the partial's size on, `window` chunks in flight, written in order."""
    size, chunk = info.size, info.chunk_size
    window = max(1, window)
    writer, in_flight = BlockingCalls(), dict[asyncio.Future[Any], int]()
    ready: dict[int, str] = {}
    position = partial.have
    if progress:
        progress(partial.have, size)
    try:
        while partial.have < size:
            while (position < size and len(in_flight) < window
                   and position - partial.have < window * chunk):  # fmt: skip
                length = min(chunk, size - position)
                fetching = staging.get_chunk(path=info.path, offset=position, length=length)
                in_flight[asyncio.ensure_future(fetching)] = length
                position += length
                await asyncio.sleep(0)  # one message per chunk, not a coalesced batch
            done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
            for task, reply in _results(done).items():
                length = in_flight.pop(task)
                if len(reply.data) != (length + 2) // 3 * 4:  # base64 of exactly `length`
                    raise ChecksumMismatch(f"{info.path} changed size during the download")
                ready[reply.offset] = reply.data  # decoded by the writer thread
            pieces, offset = [], partial.have
            while offset in ready:
                pieces.append(ready.pop(offset))
                offset = min(offset + chunk, size)
            if pieces:
                await writer.run(partial.append, pieces)
            if progress:
                progress(partial.have, size)
    finally:
        await _cancel(set(in_flight))
        await writer.settle()
        if partial.have < size:
            partial.close()
