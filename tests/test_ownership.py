"""Ownership on a real broker: two users of one endpoint keep their jobs and sessions apart.

The module makes a vhost of its own with two client users, alice and bob (unique names, made
by `orbit-mq admin`'s code with a client's least privileges), and serves psij there from an
in-process endpoint that trusts both; the endpoint runs as the broker's administrator, who is
therefore its admin. Users and vhost are deleted afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiormq
import pytest
import pytest_asyncio
from broker_users import Vhost, scratch_vhost

import orbit_mq
from orbit_mq import admin
from orbit_mq.config import Settings
from orbit_mq.contracts.psij import Job, JobState, NotJobOwner, PsiJ
from orbit_mq.errors import AccessRefused, Unauthorized
from orbit_mq.lanes import spare_channel
from orbit_mq.permissions import Role
from orbit_mq.protocol import AuditRecord, Event, subscription_queue
from orbit_mq.proxy import remote, with_options
from orbit_mq.tls import login_user
from orbit_mq.workers import ownership
from orbit_mq.workers.endpoint import Endpoint
from orbit_mq.workers.logs import RefusalLog
from orbit_mq.workers.plugins.psij import PsiJ as PsiJPlugin

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.single_node]  # its users

AUDIT = "orbit_mq.endpoint.audit"


@dataclass
class Users:
    """The module's endpoint and one psij proxy per user (each with its own session)."""

    endpoint: str
    alice: Any
    bob: Any
    admin: Any
    names: dict[str, str]
    fabrics: dict[str, orbit_mq.Fabric]


def _client_settings(url: str, home: Path) -> Settings:
    return Settings(url=url, home=home, timeout=15, discovery_window=0.3)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def users(broker_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Users]:
    async with scratch_vhost(broker_url, "orbit-own") as vhost:
        async for made in _users(vhost, broker_url, tmp_path_factory.mktemp("ownership")):
            yield made


async def _users(vhost: Vhost, broker_url: str, home: Path) -> AsyncIterator[Users]:
    tag = uuid.uuid4().hex[:8]
    administrator = login_user(Settings(url=broker_url))
    url = vhost.url
    fabrics: list[orbit_mq.Fabric] = []
    endpoint: Endpoint | None = None
    try:
        admin_settings = _client_settings(url, home / "admin")
        alice = await admin.add_user(vhost.accounts, admin_settings, Role.CLIENT, f"alice{tag}")
        vhost.users.append(alice.name)
        bob = await admin.add_user(vhost.accounts, admin_settings, Role.CLIENT, f"bob{tag}")
        vhost.users.append(bob.name)
        name = f"own{tag}"
        endpoint_settings = Settings(
            url=url,
            home=home / "endpoint",
            heartbeat_interval=0.5,
            timeout=15,
            discovery_window=0.3,
            allowed_users=[alice.name, bob.name, administrator],
        )
        endpoint = Endpoint(name, [PsiJPlugin], endpoint_settings)
        await endpoint.start()
        proxies = []
        for who, who_url in (("alice", alice.url), ("bob", bob.url), ("admin", url)):
            fabric = orbit_mq.Fabric(_client_settings(who_url, home / who))
            await fabric.__aenter__()
            fabrics.append(fabric)
            proxies.append(await fabric.endpoint(name).plugin(PsiJ))
        names = {"alice": alice.name, "bob": bob.name, "admin": administrator}
        yield Users(name, *proxies, names=names, fabrics=dict(zip(names, fabrics, strict=True)))
    finally:
        for fabric in fabrics:
            await fabric.__aexit__(None, None, None)
        if endpoint is not None:
            await endpoint.stop(grace=5)


@pytest.fixture
def audit_lines(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> Callable[[], list[str]]:
    """The audit lines logged during the test (refusals not held back by earlier tests')."""
    monkeypatch.setattr(ownership, "_refusals", RefusalLog(ownership.audit_log))
    caplog.set_level(logging.INFO, logger=AUDIT)
    return lambda: [r.getMessage() for r in caplog.records if r.name == AUDIT]


def _job(result: Any) -> Job:
    return Job.model_validate(getattr(result, "info", result))


async def _ended(psij: Any, *arguments: str) -> Job:
    """A job of `psij`'s user that ran /bin/echo and ended."""
    job = _job(
        await psij.submit_job(spec={"executable": "/bin/echo", "arguments": list(arguments)})
    )
    (done,) = await psij.wait_jobs(job_ids=[job.job_id], timeout=20)
    assert done.state is JobState.COMPLETED
    return done


async def _running(psij: Any) -> Job:
    return _job(await psij.submit_job(spec={"executable": "/bin/sleep", "arguments": ["60"]}))


async def test_bob_cannot_read_alices_job_status_or_output(
    users: Users, audit_lines: Callable[[], list[str]]
) -> None:
    job = await _ended(users.alice, "alice's output")
    with pytest.raises(NotJobOwner, match="belongs to another user") as refused:
        await users.bob.get_job_status(job_id=job.job_id)
    assert refused.value.code == "unauthorized" and refused.value.details["job_id"] == job.job_id
    with pytest.raises(NotJobOwner):
        await users.bob.get_job_status(job_id=job.job_id, stdout_offset=3)
    assert (await users.alice.get_job_status(job_id=job.job_id)).stdout == "alice's output\n"
    bob = users.names["bob"]
    refusals = [line for line in audit_lines() if "refused" in line and job.job_id in line]
    assert len(refusals) == 2
    assert f"psij.get_job_status by {bob!r}" in refusals[0]
    assert users.names["alice"] in refusals[0]


async def test_bob_cannot_cancel_alices_job(users: Users) -> None:
    job = await _running(users.alice)
    try:
        with pytest.raises(NotJobOwner):
            await users.bob.cancel_job(job_id=job.job_id)
        (still,) = await users.alice.wait_jobs(job_ids=[job.job_id], timeout=0.3)
        assert not still.state.final
    finally:
        await users.alice.cancel_job(job_id=job.job_id)
    (done,) = await users.alice.wait_jobs(job_ids=[job.job_id], timeout=20)
    assert done.state is JobState.CANCELED


async def test_bob_cannot_remove_or_wait_on_alices_job(users: Users) -> None:
    job = await _ended(users.alice)
    mine = await _ended(users.bob)
    with pytest.raises(NotJobOwner):
        await users.bob.remove_job(job_id=job.job_id)
    with pytest.raises(NotJobOwner):
        await users.bob.wait_jobs(job_ids=[job.job_id])
    with pytest.raises(NotJobOwner):  # one foreign job refuses the whole wait
        await users.bob.wait_jobs(job_ids=[mine.job_id, job.job_id], timeout=0)
    assert (await users.alice.get_job_status(job_id=job.job_id)).state is JobState.COMPLETED
    assert [j.job_id for j in await users.bob.wait_jobs(job_ids=[mine.job_id])] == [mine.job_id]


async def test_bob_cannot_use_alices_session(
    users: Users, audit_lines: Callable[[], list[str]]
) -> None:
    alices = remote(users.alice).session_id
    bob = remote(users.bob)
    own = bob.session_id
    bob.session_id = alices
    try:
        with pytest.raises(Unauthorized, match="belongs to another user"):
            await users.bob.list_jobs()
        with pytest.raises(Unauthorized):  # any call, even one that needs no session
            await users.bob.executors()
        with pytest.raises(Unauthorized):
            await bob.call("unregister_session", {"session_id": alices})
    finally:
        bob.session_id = own
    with pytest.raises(Unauthorized):  # nor by naming it as the parameter
        await bob.call("unregister_session", {"session_id": alices})
    assert (await users.alice.list_jobs()).offset == 0  # her session still works
    refusals = [line for line in audit_lines() if "refused" in line and "session" in line]
    assert len(refusals) == 4
    assert "psij.list_jobs" in refusals[0] and "psij.unregister_session" in refusals[-1]


async def test_bob_lists_only_his_own_jobs(users: Users) -> None:
    alices = await _ended(users.alice)
    bobs = await _ended(users.bob)
    listing = await users.bob.list_jobs(limit=1000)
    ids = [job.job_id for job in listing.jobs]
    assert bobs.job_id in ids and alices.job_id not in ids
    assert listing.total == len(ids)
    alices_session = remote(users.alice).session_id
    assert (await users.bob.list_jobs(session=alices_session)).total == 0
    assert (await users.alice.list_jobs(session=alices_session)).total >= 1


async def test_an_admin_reads_lists_waits_on_and_cancels_alices_job(
    users: Users, audit_lines: Callable[[], list[str]]
) -> None:
    ended = await _ended(users.alice, "for the admin")
    running = await _running(users.alice)
    bobs = await _ended(users.bob)
    status = await users.admin.get_job_status(job_id=ended.job_id)
    assert status.stdout == "for the admin\n"
    ids = {job.job_id for job in (await users.admin.list_jobs(limit=1000)).jobs}
    assert {ended.job_id, running.job_id, bobs.job_id} <= ids
    await users.admin.cancel_job(job_id=running.job_id)
    (done,) = await users.admin.wait_jobs(job_ids=[running.job_id], timeout=20)
    assert done.state is JobState.CANCELED
    admin_name = users.names["admin"]
    overrides = [line for line in audit_lines() if "admin override" in line]
    assert any(
        f"psij.get_job_status by {admin_name!r}" in line and ended.job_id in line
        for line in overrides
    )
    assert any("psij.cancel_job" in line and running.job_id in line for line in overrides)
    assert not [line for line in audit_lines() if "refused" in line]


async def test_alice_does_everything_with_her_own_jobs(
    users: Users, audit_lines: Callable[[], list[str]]
) -> None:
    ended = await _ended(users.alice, "mine")
    running = await _running(users.alice)
    status = await users.alice.get_job_status(job_id=ended.job_id, stdout_offset=1)
    assert status.stdout == "ine\n"
    ids = {job.job_id for job in (await users.alice.list_jobs(limit=1000)).jobs}
    assert {ended.job_id, running.job_id} <= ids
    await users.alice.cancel_job(job_id=running.job_id)
    waited = await users.alice.wait_jobs(job_ids=[running.job_id, ended.job_id], timeout=20)
    assert [job.state for job in waited] == [JobState.CANCELED, JobState.COMPLETED]
    removed = await users.alice.remove_job(job_id=ended.job_id)
    assert removed.job_id == ended.job_id
    assert audit_lines() == []  # her own work: nothing to audit


async def test_another_users_message_id_gets_no_copy_of_her_reply(users: Users) -> None:
    """Repeating alice's message_id gives bob neither her stored reply nor her job."""
    message_id = f"same-{uuid.uuid4().hex}"
    spec = {"executable": "/bin/echo", "arguments": ["once"]}
    hers = _job(await with_options(users.alice, message_id=message_id).submit_job(spec=spec))
    with pytest.raises(NotJobOwner):  # the request key names her job: refused, not shown
        await with_options(users.bob, message_id=message_id).submit_job(spec=spec)
    again = _job(await with_options(users.alice, message_id=message_id).submit_job(spec=spec))
    assert again.job_id == hers.job_id  # her own repeat still gets her stored reply


async def _first(events: Any, wanted: Callable[[Event], bool]) -> Event:
    async with asyncio.timeout(20):
        async for event in events:
            if wanted(event):
                return cast(Event, event)
    raise AssertionError("the subscription ended")


async def test_bob_cannot_bind_to_alices_job_events(users: Users) -> None:
    bob, alice = users.fabrics["bob"], users.names["alice"]
    pattern = f"{users.endpoint}.psij.job_status"
    for owner in (alice, None):  # her events, everyone's
        with pytest.raises(AccessRefused, match="access to topic"):
            await bob.subscribe(pattern, owner=owner).start()
    with pytest.raises(AccessRefused):
        await bob.audit_events(users.endpoint).start()
    async with (
        users.fabrics["alice"].subscribe(pattern) as hers,
        users.fabrics["admin"].subscribe(pattern, owner=None) as everyones,
    ):
        job = await _ended(users.alice)
        for events in (hers, everyones):  # hers and an admin's see it; the key names her
            event = await _first(events, lambda e: e.data["job_id"] == job.job_id)
            assert event.owner == alice


async def test_bob_cannot_consume_alices_durable_subscription(users: Users) -> None:
    durable = f"watch{uuid.uuid4().hex[:6]}"
    async with users.fabrics["alice"].subscribe(f"{users.endpoint}.#", durable=durable):
        pass  # her queue now exists and keeps her events
    queue = subscription_queue(users.names["alice"], durable)
    bob = users.fabrics["bob"]
    for action in (
        lambda ch: ch.basic_consume(queue, lambda _m: None),
        lambda ch: ch.basic_get(queue),
        lambda ch: ch.queue_delete(queue),
    ):
        with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
            async with spare_channel(bob.connection, "probe", 10) as amqp:
                await action(amqp)
    # his own durable subscription under the same name is another queue
    async with bob.subscribe(f"{users.endpoint}.#", durable=durable) as his:
        assert his.queue_name != queue
    for who in ("alice", "bob"):  # each may delete only their own
        async with spare_channel(users.fabrics[who].connection, "clean", 10) as amqp:
            await amqp.queue_delete(subscription_queue(users.names[who], durable))


async def test_refusals_and_overrides_go_out_as_audit_events_only_admins_read(
    users: Users,
) -> None:
    job = await _ended(users.alice)
    async with users.fabrics["admin"].audit_events(users.endpoint) as audit:
        with pytest.raises(NotJobOwner):
            await users.bob.get_job_status(job_id=job.job_id)
        event = await _first(audit, lambda e: job.job_id in e.data["ids"])
        record = AuditRecord.model_validate(event.data)
        assert (record.decision, record.user) == ("refused", users.names["bob"])
        assert record.owners == [users.names["alice"]] and record.method == "psij.get_job_status"
        await users.admin.get_job_status(job_id=job.job_id)
        event = await _first(audit, lambda e: e.data["decision"] == "admin_override")
        assert event.data["user"] == users.names["admin"] and event.owner is None
