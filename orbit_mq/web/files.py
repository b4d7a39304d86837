"""File upload and download through an endpoint's staging plugin.

    PUT /api/v1/endpoints/{endpoint}/files?path=REMOTE[&overwrite=true]   body: the bytes
    GET /api/v1/endpoints/{endpoint}/files?path=REMOTE                    the bytes

The body is spooled to a private temporary file on the gateway (never held in memory) and then
sent with the SDK's chunked, SHA-256-verified, resumable transfer (`orbit_mq.staging`); a
download comes the same way into a temporary file that is streamed to the browser and deleted
after. An upload's body is not JSON, so instead of the JSON rule it needs the header
`X-Orbit-Upload: 1`, which a cross-site page cannot send without the browser asking first.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path

from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, Response

from orbit_mq.contracts.staging import Staging
from orbit_mq.errors import InvalidRequest, PayloadTooLarge
from orbit_mq.staging import get_file, put_file
from orbit_mq.web.identity import Connection
from orbit_mq.web.routes import JSON, QUERY, name_of

UPLOAD_HEADER = "x-orbit-upload"
MAX_UPLOAD = 8 * 1024**3  # bytes one upload may have


def _remote_path(request: Request) -> str:
    path = request.query_params.get("path", "")
    if not path:
        raise InvalidRequest("give the file's path on the endpoint: ?path=/some/file", QUERY)
    return path


async def _staging(user: Connection, endpoint: str) -> Staging:
    return await user.fabric.endpoint(endpoint).plugin(Staging, session=False)


async def upload(request: Request, user: Connection) -> Response:
    endpoint, remote = name_of(request, "endpoint"), _remote_path(request)
    overwrite = request.query_params.get("overwrite", "").lower() in ("1", "true", "yes")
    spool = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="orbit-mq-upload-"))
    try:
        local = spool / "body"
        await _spool(request, local)
        staging = await _staging(user, endpoint)
        done = await put_file(staging, local, remote, overwrite=overwrite)
    finally:
        await asyncio.to_thread(shutil.rmtree, spool, True)
    return JSON({"path": done.remote, "size": done.size, "sha256": done.sha256})


async def _spool(request: Request, local: Path) -> None:
    fd = await asyncio.to_thread(os.open, local, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_UPLOAD:
                raise PayloadTooLarge(
                    f"an upload through the gateway takes at most {MAX_UPLOAD} bytes; use "
                    "`orbit-mq stage put` for larger files",
                    {"limit": MAX_UPLOAD},
                )
            await asyncio.to_thread(os.write, fd, chunk)
    finally:
        os.close(fd)


async def download(request: Request, user: Connection) -> Response:
    endpoint, remote = name_of(request, "endpoint"), _remote_path(request)
    spool = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="orbit-mq-download-"))
    try:
        staging = await _staging(user, endpoint)
        done = await get_file(staging, remote, spool / "body")
    except BaseException:
        await asyncio.to_thread(shutil.rmtree, spool, True)
        raise
    return FileResponse(
        done.local,
        filename=Path(done.remote).name,
        headers={"x-orbit-sha256": done.sha256},
        background=BackgroundTask(shutil.rmtree, spool, True),
    )
