"""The staging plugin: files between clients and the endpoint host, chunked through the broker,
confined to allowed roots, SHA-256 verified, resumable.

staging = await fabric.endpoint("hpc1").plugin("staging")
await orbit_mq.put_file(staging, "big.bin", "/scratch/alice/big.bin")
"""

from orbit_mq.workers.plugins.staging.errors import (
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
from orbit_mq.workers.plugins.staging.models import (
    Chunk,
    ChunkAck,
    DownloadInfo,
    FileInfo,
    Listing,
    PutState,
    Removed,
)
from orbit_mq.workers.plugins.staging.plugin import Staging
from orbit_mq.workers.plugins.staging.settings import StagingSettings

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
    "StagingSettings",
    "TransferGap",
    "TransferNotFound",
]
