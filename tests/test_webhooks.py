"""Signed webhooks against the real broker, a real endpoint (PSI/J's local executor) and a
real HTTP receiver on 127.0.0.1 that goes down for 10 s in the middle of a job's life."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import StartEndpoint
from test_web import serve
from webhook_support import SECRET, WITHIN, Receiver, delete_queue

import orbit_mq
from orbit_mq.config import Settings
from orbit_mq.contracts.psij import Job, PsiJ
from orbit_mq.subscribe import durable_queue_name
from orbit_mq.waiting import wait_within
from orbit_mq.web import create_app
from orbit_mq.webhooks import (
    DELIVERY_HEADER,
    SIGNATURE_HEADER,
    Webhooks,
    WebhookStore,
    signature,
)
from orbit_mq.workers.plugins.psij.plugin import PsiJ as PsiJPlugin

DOWN_FOR = 10.0  # s the receiver is away: the fault's length, not a synchronisation


@pytest.fixture
async def hooks(
    fabric: orbit_mq.Fabric, tmp_path: Path, settings: Settings, name: str
) -> AsyncIterator[Webhooks]:
    made = await _webhooks(fabric, tmp_path, name)
    yield made
    await made.close()
    made.store.close()
    await delete_queue(settings.url, durable_queue_name(fabric.user, name))


async def _webhooks(fabric: orbit_mq.Fabric, tmp_path: Path, name: str, **options: Any) -> Webhooks:
    made = Webhooks(fabric, WebhookStore(tmp_path / "webhooks.db"), subscription=name, **options)
    await made.start()
    return made


def waiting_job(flag: Path) -> dict[str, Any]:
    script = f"for i in $(seq 600); do [ -e {flag} ] && exit 0; sleep 0.1; done; exit 1"
    return {"executable": "/bin/sh", "arguments": ["-c", script]}


async def submit(fabric: orbit_mq.Fabric, endpoint: str, spec: dict[str, Any]) -> Job:
    psij = await fabric.endpoint(endpoint).plugin(PsiJ, session=False)
    return await psij.submit_job(spec=spec)


def check_deliveries(receiver: Receiver, job: Job) -> list[int]:
    """Every POST signed with the secret; their seqs, which must be 1, 2, … without repeats."""
    seqs = []
    for headers, body in receiver.posts:
        assert hmac.compare_digest(headers[SIGNATURE_HEADER], signature(SECRET, body))
        expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
        assert headers[SIGNATURE_HEADER] == expected
        event = json.loads(body)
        assert event["job_id"] == job.job_id and headers[DELIVERY_HEADER].endswith(
            f":{event['seq']}"
        )
        seqs.append(event["seq"])
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    return seqs


@pytest.fixture
async def active(
    start_endpoint: StartEndpoint,
    fabric: orbit_mq.Fabric,
    hooks: Webhooks,
    receiver: Receiver,
    name: str,
    tmp_path: Path,
) -> tuple[Job, Path]:
    """A job with a webhook, ACTIVE (its POST received), that ends once the flag exists."""
    await start_endpoint([PsiJPlugin])
    flag = tmp_path / "go"
    job = await submit(fabric, name, waiting_job(flag))
    hooks.register(job.job_id, name, fabric.user, receiver.url, SECRET)
    await receiver.until("ACTIVE")
    return job, flag


async def test_every_state_change_arrives_signed_in_order_though_the_receiver_was_down(
    active: tuple[Job, Path],
    fabric: orbit_mq.Fabric,
    hooks: Webhooks,
    receiver: Receiver,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    job, flag = active
    receiver.stop()
    flag.touch()  # the job ends while nobody receives
    await asyncio.sleep(DOWN_FOR)
    assert "COMPLETED" not in receiver.states()
    receiver.start()
    await receiver.until("COMPLETED")
    assert check_deliveries(receiver, job)[-1] == len(receiver.posts)
    assert receiver.states()[0] == "NEW" and receiver.states()[-1] == "COMPLETED"
    info = await wait_within(hooks.settled(job.job_id), WITHIN)
    assert info is not None and hooks.infos(fabric.user) == [info]
    assert info.status == "done" and info.delivered == len(receiver.posts)
    assert info.attempts > len(receiver.posts) and info.last_error is None
    assert SECRET not in info.model_dump_json() and SECRET not in caplog.text


async def test_what_happens_while_the_gateway_is_down_is_delivered_when_it_returns(
    active: tuple[Job, Path],
    fabric: orbit_mq.Fabric,
    hooks: Webhooks,
    receiver: Receiver,
    name: str,
    tmp_path: Path,
) -> None:
    job, flag = active
    await hooks.close()  # the gateway stops; the job ends meanwhile
    flag.touch()
    await job.wait(timeout=WITHIN)
    again = await _webhooks(fabric, tmp_path, name)
    try:
        await receiver.until("COMPLETED")
    finally:
        await again.close()
        again.store.close()
    check_deliveries(receiver, job)


async def test_events_before_the_registration_are_sent_and_a_dead_receiver_is_given_up(
    start_endpoint: StartEndpoint,
    fabric: orbit_mq.Fabric,
    receiver: Receiver,
    name: str,
    tmp_path: Path,
    settings: Settings,
) -> None:
    await start_endpoint([PsiJPlugin])
    hooks = await _webhooks(fabric, tmp_path, name, give_up_after=2.0)
    try:
        job = await submit(fabric, name, {"executable": "/bin/true"})
        await job.wait(timeout=WITHIN)  # every event came before the registration
        hooks.register(job.job_id, name, fabric.user, receiver.url, SECRET)
        await receiver.until("COMPLETED")
        check_deliveries(receiver, job)
        receiver.stop()
        lost = await submit(fabric, name, {"executable": "/bin/true"})
        hooks.register(lost.job_id, name, fabric.user, receiver.url, SECRET)
        info = await wait_within(hooks.settled(lost.job_id), WITHIN)
        assert info is not None and info.status == "failed"
        assert info.last_error and info.attempts >= 2
    finally:
        await hooks.close()
        hooks.store.close()
        await delete_queue(settings.url, durable_queue_name(fabric.user, name))


def test_the_signature_is_hmac_sha256_of_the_body() -> None:
    assert signature("key", b"{}") == (
        "sha256=" + hmac.new(b"key", b"{}", hashlib.sha256).hexdigest()
    )


async def test_the_gateway_registers_webhooks_for_a_users_own_jobs_and_lists_them(
    start_endpoint: StartEndpoint,
    fabric: orbit_mq.Fabric,
    receiver: Receiver,
    name: str,
    settings: Settings,
) -> None:
    await start_endpoint([PsiJPlugin])
    app = create_app(settings, keep_alive=1.0, webhooks=name)
    try:
        async for url in serve(app):
            async with httpx.AsyncClient(base_url=url, auth=("guest", "guest"), timeout=30) as web:
                # answered once the gateway started, so its subscription is bound
                assert (await web.get("/api/v1/webhooks")).json() == []
                job = await submit(fabric, name, {"executable": "/bin/true"})
                route = f"/api/v1/endpoints/{name}/jobs/{job.job_id}/webhook"
                hook = {"url": receiver.url, "secret": SECRET}
                answer = await web.post(route, json=hook)
                assert answer.status_code == 200, answer.text
                await receiver.until("COMPLETED")
                check_deliveries(receiver, job)
                listed = (await web.get("/api/v1/webhooks")).json()
                assert [w["job_id"] for w in listed] == [job.job_id]
                assert SECRET not in answer.text + json.dumps(listed)
                short = await web.post(route, json={"url": receiver.url, "secret": "x"})
                assert short.status_code == 422, short.text
                unknown = await web.post(route.replace(job.job_id, "no-such-job"), json=hook)
                assert unknown.status_code == 404, unknown.text
            await app.state.users.close(retire=True)
    finally:
        await delete_queue(settings.url, durable_queue_name(fabric.user, name))
