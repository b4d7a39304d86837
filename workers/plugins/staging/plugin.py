"""`staging` on the endpoint: the contract (orbit_mq/contracts/staging) on the host's files.

Every path is confined to the allowed roots after following symlinks (paths.py); uploads land
under a hidden name and are renamed into place only once their SHA-256 matches (transfers.py,
uploads.py).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, cast

from pydantic import ValidationError

from orbit_mq.contracts import staging as contract
from orbit_mq.contracts.staging.codec import decode_base64
from orbit_mq.contracts.staging.errors import (
    ChunkTooLarge,
    NotADirectory,
    PathNotAllowed,
    TransferGap,
)
from orbit_mq.contracts.staging.models import (
    Chunk,
    ChunkAck,
    DownloadInfo,
    FileInfo,
    Listing,
    PutState,
    Removed,
)
from orbit_mq.errors import ConfigError, InvalidRequest
from orbit_mq.rpc import INJECTED, CallContext, in_thread
from orbit_mq.workers.logs import bounded_logger
from orbit_mq.workers.plugin import Plugin, wait_budget
from orbit_mq.workers.plugins.staging import files
from orbit_mq.workers.plugins.staging.paths import Roots
from orbit_mq.workers.plugins.staging.settings import StagingSettings
from orbit_mq.workers.plugins.staging.transfers import write_chunk
from orbit_mq.workers.plugins.staging.uploads import Uploads, transfer_gone

log = bounded_logger("orbit_mq.plugin.staging")

# Room left in a request for everything but the base64 data (ids, offsets, JSON).
ENVELOPE = 64 * 1024


def chunk_limit(max_message_size: int) -> int:
    """The largest chunk whose base64 encoding (4/3 the size) fits in one request."""
    return max(1, (max_message_size - ENVELOPE) // 4 * 3)


class Staging(Plugin, contract.Staging):
    # Settings for this class instead of ORBIT_MQ_STAGING_*; see `configured`.
    config: ClassVar[StagingSettings | None] = None
    # A chunk further than this many chunks ahead of the bytes received is refused at once.
    max_chunks_ahead: ClassVar[int] = 64

    @classmethod
    def configured(cls, **settings: Any) -> type[Staging]:
        """This plugin with explicit settings (e.g. `roots=[...]`) rather than the environment:
        for several endpoints in one process, tests, or embedding."""
        namespace = {"config": StagingSettings(**settings), "__module__": cls.__module__}
        return cast(type[Staging], type(cls.__name__, (cls,), namespace))

    async def start(self) -> None:
        await super().start()
        try:
            self.options = self.config or StagingSettings()
        except ValidationError as exc:
            raise ConfigError(f"staging settings (ORBIT_MQ_STAGING_*): {exc}") from None
        self.roots = Roots(self.options.roots)
        if self.roots.missing():
            log.warning("staging roots that are not directories: %s", self.roots.missing())
        limit = chunk_limit(self.context.settings.max_message_size)
        self.max_chunk = min(self.options.max_chunk_size, limit)
        self.chunk_size = min(self.options.chunk_size, self.max_chunk)
        self.uploads = Uploads(self.context.journal.db, self.roots)
        self.digests = files.DigestCache()
        await self.uploads.clean_stale(self.options.partial_max_age)
        self._janitor = asyncio.create_task(self._clean_periodically())
        log.info("staging roots: %s", self.roots)

    async def stop(self) -> None:
        self._janitor.cancel()
        await asyncio.gather(self._janitor, return_exceptions=True)
        self.uploads.close()

    async def health_details(self) -> dict[str, Any]:
        return {
            "roots": list(self.roots.paths),
            "uploads": len(self.uploads),
            "chunk_size": self.chunk_size,
            "max_chunk_size": self.max_chunk,
        }

    # -- uploads ---------------------------------------------------------------------------

    async def put_begin(
        self,
        path: str,
        size: int,
        sha256: str,
        overwrite: bool = False,
        parents: bool = True,
        chunk_size: int | None = None,
        *,
        ctx: CallContext = INJECTED,
    ) -> PutState:
        chunk = self._chunk_size(chunk_size)
        target = await asyncio.to_thread(files.prepare_target, self.roots, path, overwrite, parents)
        upload, resumed = await self.uploads.begin(
            ctx.user, target, size, sha256.lower(), overwrite
        )
        return PutState(
            transfer_id=upload.row.id,
            path=target,
            size=size,
            offset=upload.received,
            resumed=resumed,
            chunk_size=chunk,
            max_chunk_size=self.max_chunk,
        )

    async def put_chunk(
        self,
        transfer_id: str,
        offset: int,
        data: str,
        *,
        ctx: CallContext = INJECTED,
    ) -> ChunkAck:
        upload = self.uploads.get(transfer_id, ctx.user)
        raw = _decoded(data)
        self._check_length(len(raw))
        if offset + len(raw) > upload.row.size:
            raise InvalidRequest(
                f"chunk at {offset} of {len(raw)} bytes ends past the declared size "
                f"{upload.row.size}; start a new upload with the right size",
                {"offset": offset, "size": upload.row.size},
            )
        if offset - upload.received > self.max_chunks_ahead * self.max_chunk:
            raise TransferGap(
                f"chunk at offset {offset} is too far ahead of the {upload.received} bytes "
                f"received; send from offset {upload.received}",
                {"offset": offset, "received": upload.received},
            )
        gap_wait = wait_budget(self.options.gap_wait, ctx)
        received = await write_chunk(upload, offset, raw, gap_wait)
        if upload.closed:
            raise transfer_gone(transfer_id)
        return ChunkAck(received=received)

    async def put_commit(self, transfer_id: str, *, ctx: CallContext = INJECTED) -> FileInfo:
        return await self.uploads.commit(self.uploads.get(transfer_id, ctx.user))

    async def put_abort(self, transfer_id: str, *, ctx: CallContext = INJECTED) -> None:
        await self.uploads.abort(transfer_id, ctx.user)

    # -- downloads -------------------------------------------------------------------------

    @in_thread
    def get_begin(
        self,
        path: str,
        chunk_size: int | None = None,
    ) -> DownloadInfo:
        chunk = self._chunk_size(chunk_size)
        real = self.roots.resolve(path)
        st = files.regular_file(real)
        info = files.info_from_stat(real, st)
        return DownloadInfo(
            path=real,
            size=st.st_size,
            mtime=info.mtime,
            sha256=self.digests.digest(real),
            chunk_size=chunk,
            max_chunk_size=self.max_chunk,
        )

    @in_thread
    def get_chunk(
        self,
        path: str,
        offset: int,
        length: int,
    ) -> Chunk:
        self._check_length(length)
        real = self.roots.resolve(path)
        data, size = files.read_chunk(real, offset, length)
        return Chunk.of(offset, data, eof=offset + len(data) >= size)

    # -- files and directories -------------------------------------------------------------

    @in_thread
    def stat(
        self,
        path: str,
        checksum: bool = False,
    ) -> FileInfo:
        return files.file_info(self.roots.resolve(path), checksum, self.digests)

    @in_thread
    def list_dir(
        self,
        path: str,
        limit: int = 1000,
        start_after: str | None = None,
    ) -> Listing:
        real = self.roots.resolve(path)
        info = files.file_info(real)
        if info.type != "dir":
            raise NotADirectory(f"{real!r} is a {info.type}, not a directory", {"path": real})
        return files.list_dir(real, min(limit, self.options.list_limit), start_after)

    @in_thread
    def mkdir(
        self,
        path: str,
        parents: bool = False,
        exist_ok: bool = False,
    ) -> FileInfo:
        real = self.roots.resolve(path)
        files.make_dir(real, parents, exist_ok)
        self.roots.resolve(real)  # nothing was swapped for a symlink meanwhile
        return files.file_info(real)

    @in_thread
    def remove(
        self,
        path: str,
        recursive: bool = False,
    ) -> Removed:
        real = self.roots.resolve_entry(path)
        if self.roots.is_root(real):
            raise PathNotAllowed(
                f"{path!r} is the allowed root {real!r}, which cannot be removed",
                {"path": path, "resolved": real, "roots": list(self.roots.paths)},
            )
        return Removed(path=real, removed=files.remove_path(real, recursive))

    async def allowed_roots(self) -> list[str]:
        return list(self.roots.paths)

    # -- helpers ---------------------------------------------------------------------------

    def _chunk_size(self, requested: int | None) -> int:
        if requested is None:
            return self.chunk_size
        self._check_length(requested)
        return requested

    def _check_length(self, length: int) -> None:
        if length > self.max_chunk:
            raise ChunkTooLarge(
                f"chunk of {length} bytes is over this endpoint's {self.max_chunk}-byte limit "
                "(chunks travel base64-encoded in requests capped by max_message_size); use "
                "smaller chunks",
                {"size": length, "limit": self.max_chunk},
            )

    async def _clean_periodically(self) -> None:
        period = min(self.options.partial_max_age / 4, 3600.0)
        while True:
            await asyncio.sleep(period)
            try:
                await self.uploads.clean_stale(self.options.partial_max_age)
            except Exception:  # a failed sweep is retried at the next period
                log.exception("cleaning stale partial uploads failed")


def _decoded(data: str) -> bytes:
    try:
        return decode_base64(data)
    except ValueError:
        raise InvalidRequest(
            "data is not valid base64 (standard or URL-safe alphabet, with padding)",
            {"reason": "invalid_params"},
        ) from None
