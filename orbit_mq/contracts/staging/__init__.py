"""The `staging` contract: files between clients and the endpoint host, in chunks through the
broker, confined to allowed roots, SHA-256 verified, resumable.

Uploads: `put_begin` → `put_chunk`… → `put_commit` (or `put_abort`). Downloads: `get_begin`
→ `get_chunk`…. Plus `stat`, `list`, `mkdir`, `remove` and `roots`. The SDK helpers
`orbit_mq.put_file` / `orbit_mq.get_file` drive whole transfers with pipelining and resume:

    staging = await fabric.endpoint("hpc1").plugin(Staging)
    await orbit_mq.put_file(staging, "big.bin", "/scratch/alice/big.bin")

Parameter constraints are given as `Field(...)` defaults: they reach the schema and the
validation however the signature is read.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from orbit_mq.contract import Contract
from orbit_mq.contracts.staging.errors import (
    AccessDenied,
    ChecksumMismatch,
    ChunkTooLarge,
    DirectoryNotEmpty,
    FileExists,
    FileNotFound,
    IncompleteTransfer,
    InvalidPath,
    NoSpace,
    NotADirectory,
    NotAFile,
    PathNotAllowed,
    TransferGap,
    TransferNotFound,
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
from orbit_mq.rpc import rpc

PATH_DOC = "Absolute path on the endpoint (~ is the endpoint user's home)."
RemotePath = Annotated[str, Field(description=PATH_DOC)]
TransferId = Annotated[str, Field(description="From put_begin.")]


class Staging(Contract):
    name = "staging"
    version = "1.0.0"
    errors = (
        PathNotAllowed,
        AccessDenied,
        NoSpace,
        InvalidPath,
        FileExists,
        FileNotFound,
        NotADirectory,
        NotAFile,
        DirectoryNotEmpty,
        ChecksumMismatch,
        IncompleteTransfer,
        TransferNotFound,
        TransferGap,
        ChunkTooLarge,
    )

    # -- uploads ---------------------------------------------------------------------------

    @rpc
    async def put_begin(
        self,
        path: RemotePath,
        size: Annotated[int, Field(ge=0, description="Size of the file to upload, bytes.")],
        sha256: Annotated[
            str,
            Field(
                pattern=r"^[0-9a-fA-F]{64}$",
                description="SHA-256 of the whole file, 64 hex digits.",
            ),
        ],
        overwrite: Annotated[
            bool, Field(description="Replace an existing file at `path`.")
        ] = False,
        parents: Annotated[bool, Field(description="Create missing parent directories.")] = True,
        chunk_size: Annotated[
            int | None, Field(gt=0, description="Preferred chunk size, bytes.")
        ] = None,
    ) -> PutState:
        """Start (or resume) uploading `size` bytes whose SHA-256 is `sha256` to `path`.

        The same user putting the same path, size and sha256 again continues the earlier
        partial upload: `offset` says how many bytes the endpoint already has. Refuses an
        existing target unless `overwrite`; creates missing parent directories when
        `parents`. Data goes to a hidden file beside the target until put_commit.
        """
        raise NotImplementedError

    @rpc
    async def put_chunk(
        self,
        transfer_id: TransferId,
        offset: Annotated[int, Field(ge=0, description="Where `data` starts in the file.")],
        data: Annotated[
            str,
            Field(
                description="The bytes as base64 (standard or URL-safe alphabet, padded).",
                json_schema_extra={"contentEncoding": "base64"},
            ),
        ],
    ) -> ChunkAck:
        """Write `data` at `offset` of upload `transfer_id`.

        Chunks may arrive out of order (a pipelining client): one that starts past the bytes
        received waits for those before it. Sending a chunk again is harmless.
        """
        raise NotImplementedError

    @rpc(dedupe=True)
    async def put_commit(self, transfer_id: TransferId) -> FileInfo:
        """Finish upload `transfer_id`: check the SHA-256 of every byte received, then rename
        the hidden partial file to the target (never over an existing file unless the upload
        was started with overwrite). On a checksum mismatch nothing is written."""
        raise NotImplementedError

    @rpc
    async def put_abort(self, transfer_id: TransferId) -> None:
        """Cancel upload `transfer_id` and delete its partial file."""
        raise NotImplementedError

    # -- downloads -------------------------------------------------------------------------

    @rpc
    async def get_begin(
        self,
        path: RemotePath,
        chunk_size: Annotated[
            int | None, Field(gt=0, description="Preferred chunk size, bytes.")
        ] = None,
    ) -> DownloadInfo:
        """Size, mtime and SHA-256 of the file at `path`, to download it with get_chunk.

        The SHA-256 costs one read of the whole file on the endpoint (≈ 1.5 GB/s from the
        page cache); it is remembered while the file stays unchanged.
        """
        raise NotImplementedError

    @rpc
    async def get_chunk(
        self,
        path: RemotePath,
        offset: Annotated[int, Field(ge=0, description="Where to start reading, bytes.")],
        length: Annotated[int, Field(gt=0, description="How many bytes to read at most.")],
    ) -> Chunk:
        """Up to `length` bytes of the file at `path` from `offset`, base64-encoded."""
        raise NotImplementedError

    # -- files and directories -------------------------------------------------------------

    @rpc
    async def stat(
        self,
        path: RemotePath,
        checksum: Annotated[bool, Field(description="Also compute the SHA-256 of a file.")] = False,
    ) -> FileInfo:
        """What is at `path` (symlinks followed); with `checksum`, the SHA-256 of a file."""
        raise NotImplementedError

    @rpc(name="list")
    async def list_dir(
        self,
        path: RemotePath,
        limit: Annotated[int, Field(ge=1, description="Most entries to return.")] = 1000,
        start_after: Annotated[str | None, Field(description="List names after this one.")] = None,
    ) -> Listing:
        """The entries of directory `path`, sorted by name, symlinks shown as links.

        At most `limit` entries (capped by the endpoint); when `truncated`, list again with
        `start_after` = the last name received.
        """
        raise NotImplementedError

    @rpc
    async def mkdir(
        self,
        path: RemotePath,
        parents: Annotated[
            bool, Field(description="Create missing parent directories too.")
        ] = False,
        exist_ok: Annotated[
            bool, Field(description="Succeed if the directory exists already.")
        ] = False,
    ) -> FileInfo:
        """Create directory `path` (with its missing parents when `parents`)."""
        raise NotImplementedError

    @rpc
    async def remove(
        self,
        path: RemotePath,
        recursive: Annotated[
            bool, Field(description="Remove a directory with its content.")
        ] = False,
    ) -> Removed:
        """Remove a file, a symlink (not what it points to) or an empty directory; a directory
        with everything in it when `recursive`. An allowed root itself is never removed."""
        raise NotImplementedError

    @rpc(name="roots")
    async def allowed_roots(self) -> list[str]:
        """The directories this endpoint lets clients use, symlinks resolved."""
        raise NotImplementedError


__all__ = [
    "AccessDenied",
    "ChecksumMismatch",
    "Chunk",
    "ChunkAck",
    "ChunkTooLarge",
    "DirectoryNotEmpty",
    "DownloadInfo",
    "FileExists",
    "FileInfo",
    "FileNotFound",
    "IncompleteTransfer",
    "InvalidPath",
    "Listing",
    "NoSpace",
    "NotADirectory",
    "NotAFile",
    "PathNotAllowed",
    "PutState",
    "Removed",
    "Staging",
    "TransferGap",
    "TransferNotFound",
]
