"""What the staging plugin's methods take and return."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, WithJsonSchema

from orbit_mq.contracts.staging.codec import decode_base64, encode_base64

Base64Text = Annotated[
    str,
    WithJsonSchema(
        {
            "type": "string",
            "contentEncoding": "base64",
            "description": "Bytes as base64 text, standard (+/) or URL-safe (-_) alphabet, "
            "padded; the endpoint sends the URL-safe one.",
        }
    ),
]
EntryType = Literal["file", "dir", "link", "other"]


class FileInfo(BaseModel):
    path: str = Field(description="Absolute path on the endpoint, symlinks resolved.")
    name: str = Field(description="Last component of the path.")
    type: EntryType = Field(description="file, dir, link (a symlink, not followed) or other.")
    size: int = Field(description="Size in bytes (of the link itself for a symlink).")
    mtime: datetime = Field(description="Last modification (UTC).")
    mode: int = Field(description="Permission bits, e.g. 420 for 0o644 (rw-r--r--).")
    target: str | None = Field(None, description="Where a symlink points (as written in it).")
    sha256: str | None = Field(None, description="SHA-256 of the content, when asked for.")


class Listing(BaseModel):
    path: str = Field(description="The directory listed, symlinks resolved.")
    entries: list[FileInfo] = Field(description="Entries sorted by name; symlinks not followed.")
    total: int = Field(description="Entries in the directory (after start_after).")
    truncated: bool = Field(description="More entries follow: list again with start_after.")


class PutState(BaseModel):
    transfer_id: str = Field(description="Id for put_chunk, put_commit and put_abort.")
    path: str = Field(description="The target path, symlinks resolved.")
    size: int = Field(description="Declared size of the file, bytes.")
    offset: int = Field(description="Bytes already received: send from here on.")
    resumed: bool = Field(description="True when an earlier partial upload is continued.")
    chunk_size: int = Field(description="Chunk size to send with, bytes.")
    max_chunk_size: int = Field(description="Largest chunk the endpoint accepts, bytes.")


class ChunkAck(BaseModel):
    received: int = Field(description="Bytes received without a gap from the start of the file.")


class DownloadInfo(BaseModel):
    path: str = Field(description="The file, symlinks resolved: pass it to get_chunk.")
    size: int = Field(description="Size in bytes.")
    mtime: datetime = Field(description="Last modification (UTC).")
    sha256: str = Field(description="SHA-256 of the content.")
    chunk_size: int = Field(description="Chunk size to ask for, bytes.")
    max_chunk_size: int = Field(description="Largest chunk the endpoint sends, bytes.")


class Chunk(BaseModel):
    offset: int = Field(description="Where the data starts in the file.")
    # Kept as the base64 text it travels as: whoever needs the bytes decodes them, in a worker
    # thread where it matters (a megabyte of base64 costs about a millisecond).
    data: Base64Text = Field(description="The bytes read (fewer than asked at the end).")
    eof: bool = Field(description="True when the data reaches the end of the file.")

    @classmethod
    def of(cls, offset: int, data: bytes, eof: bool) -> Chunk:
        return cls(offset=offset, data=encode_base64(data), eof=eof)

    def decoded(self) -> bytes:
        return decode_base64(self.data)


class Removed(BaseModel):
    path: str = Field(description="What was removed.")
    removed: int = Field(description="Number of files, links and directories removed.")
