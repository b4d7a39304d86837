"""File upload and download through the gateway (orbit_mq/web/files.py), against the real
broker and an endpoint's staging plugin: the bytes arrive whole, and bad requests (no CSRF
header, no path, a path outside the roots, too large a body, a missing file) get the wire's
error body and leave nothing behind."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import StartEndpoint
from test_web import serve, wire_error

from orbit_mq.config import Settings
from orbit_mq.web import create_app, files
from orbit_mq.workers.plugins.staging import Staging

BODY = b"0123456789abcdef" * 4096  # 64 KiB: several chunks of the staging transfer


UPLOAD = {files.UPLOAD_HEADER: "1"}


@dataclass
class Files:
    """The files route of the test's endpoint, and the staging root it serves."""

    client: httpx.AsyncClient
    route: str
    root: Path

    async def put(
        self, path: str | None, body: bytes, headers: dict[str, str] = UPLOAD
    ) -> httpx.Response:
        params = {} if path is None else {"path": path}
        return await self.client.put(self.route, params=params, content=body, headers=headers)

    async def get(self, path: str) -> httpx.Response:
        return await self.client.get(self.route, params={"path": path})


@pytest.fixture
async def web(
    start_endpoint: StartEndpoint, settings: Settings, name: str, tmp_path: Path
) -> AsyncIterator[Files]:
    root = tmp_path / "root"
    root.mkdir()
    await start_endpoint(plugins=[Staging.configured(roots=[root])])
    app = create_app(settings, keep_alive=1.0, webhooks=None)
    async for url in serve(app):
        async with httpx.AsyncClient(base_url=url, auth=("guest", "guest"), timeout=60) as client:
            yield Files(client, f"/api/v1/endpoints/{name}/files", root)
        await app.state.users.close(retire=True)


async def test_an_upload_arrives_whole_and_comes_back_the_same(web: Files) -> None:
    target = web.root / "sub" / "data.bin"
    put = await web.put(str(target), BODY)
    assert put.status_code == 200, put.text
    assert put.json()["sha256"] == hashlib.sha256(BODY).hexdigest()
    assert target.read_bytes() == BODY
    again = await web.put(str(target), b"x")
    wire_error(again, 409, "conflict")  # an existing file stays unless overwrite=true
    assert target.read_bytes() == BODY
    got = await web.get(str(target))
    assert got.status_code == 200 and got.content == BODY
    assert got.headers["x-orbit-sha256"] == hashlib.sha256(BODY).hexdigest()


async def test_bad_uploads_and_downloads_are_refused_with_the_wire_body(
    web: Files, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inside = str(web.root / "a.bin")
    no_header = await web.put(inside, BODY, headers={})
    wire_error(no_header, 400, "invalid_request")  # CSRF: a raw body needs the header
    wire_error(await web.put(None, BODY), 422, "invalid_request")
    outside = await web.put(str(tmp_path / "elsewhere.bin"), BODY)
    assert wire_error(outside, 403, "unauthorized")["details"]["type"] == "PathNotAllowed"
    monkeypatch.setattr(files, "MAX_UPLOAD", len(BODY) - 1)
    wire_error(await web.put(inside, BODY), 422, "invalid_request")
    wire_error(await web.get(str(web.root / "none.bin")), 404, "not_found")
    assert not list(web.root.iterdir()) and not (tmp_path / "elsewhere.bin").exists()
