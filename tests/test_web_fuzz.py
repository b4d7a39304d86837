"""schemathesis against the gateway: calls generated from /api/v1/openapi.json, on uvicorn, the
real broker and an endpoint, answer no 5xx (`not_a_server_error`). The operations that would
run what they are given (submitting jobs, the generic call, staging, stopping the endpoint)
and the endless event stream are left out; `{endpoint}` is the test's endpoint, so the calls
reach it instead of stopping at "unknown endpoint"; webhooks are on, so their routes are tried."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import StartEndpoint
from echo_plugin import Echo
from starlette.applications import Starlette
from test_web import serve
from webhook_support import delete_queue

from orbit_mq.config import Settings
from orbit_mq.subscribe import durable_queue_name
from orbit_mq.tls import login_user
from orbit_mq.web import create_app
from orbit_mq.workers.plugins.psij.plugin import PsiJ
from orbit_mq.workers.plugins.sysinfo import SysInfo

ST = Path(sys.executable).parent / "st"
LEFT_OUT = ("control.shutdown", "psij.submit", "psij.post.jobs", "psij.wait_jobs",
            "plugins.call", "events.", "staging.", "tasks.")  # fmt: skip
RUN_WITHIN = 240.0  # s for the whole run


def fuzzable(document: dict[str, Any], endpoint: str) -> dict[str, Any]:
    """The document with `{endpoint}` filled in and the left-out operations removed."""
    paths: dict[str, Any] = {}
    for path, operations in document["paths"].items():
        kept = {
            verb: {**op, "parameters": [p for p in op.get("parameters", [])
                                        if p.get("name") != "endpoint" or p.get("in") != "path"]}
            for verb, op in operations.items()
            if not str(op.get("operationId", "")).startswith(LEFT_OUT)
        }  # fmt: skip
        if kept:
            paths[path.replace("{endpoint}", endpoint)] = kept
    return {**document, "paths": paths}


async def test_generated_calls_get_no_server_error(
    start_endpoint: StartEndpoint, settings: Settings, name: str, tmp_path: Path
) -> None:
    if not ST.exists():
        pytest.skip("needs schemathesis (pip install -e '.[test]')")
    await start_endpoint(plugins=[PsiJ, SysInfo, Echo])
    # webhooks on: their routes answer 503 without them
    app = create_app(settings, keep_alive=1.0, webhooks=name)
    try:
        await _fuzz(app, name, tmp_path)
    finally:
        await delete_queue(settings.url, durable_queue_name(login_user(settings), name))


async def _fuzz(app: Starlette, name: str, tmp_path: Path) -> None:
    async for url in serve(app):
        async with httpx.AsyncClient(base_url=url, auth=("guest", "guest")) as client:
            document = (await client.get("/api/v1/openapi.json")).json()
        spec = tmp_path / "openapi.json"
        spec.write_text(json.dumps(fuzzable(document, name)))
        command = [str(ST), "run", str(spec), "--url", url, "-a", "guest:guest",
                   "-c", "not_a_server_error", "--phases", "examples,fuzzing", "-n", "12",
                   "--seed", "1", "--request-timeout", "30", "--no-color"]  # fmt: skip
        process = await asyncio.create_subprocess_exec(
            *command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=tmp_path,
            env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
        )
        async with asyncio.timeout(RUN_WITHIN):
            output, _ = await process.communicate()
        await app.state.users.close(retire=True)
    shutil.rmtree(tmp_path / "schemathesis-report", ignore_errors=True)
    assert process.returncode == 0, output.decode()[-6000:]
