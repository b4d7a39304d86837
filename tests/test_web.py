"""The HTTP API gateway (orbit_mq.web) on a real uvicorn, against the real broker and an
in-process endpoint: endpoints, plugin descriptions, generic calls, the psij conveniences,
errors with the wire's body, logins, and server-sent events resumed with Last-Event-ID."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from broker_users import two_users_and_endpoint
from conftest import StartEndpoint, cli_env, orbit_cli
from echo_plugin import Echo
from openapi_spec_validator import validate
from starlette.applications import Starlette

from orbit_mq.config import Settings
from orbit_mq.contracts import installed_contracts
from orbit_mq.schemas import plugin_descriptions
from orbit_mq.waiting import wait_within
from orbit_mq.web import create_app, openapi_document
from orbit_mq.web.identity import Users
from orbit_mq.workers.plugins.psij import PsiJ
from orbit_mq.workers.plugins.sysinfo import SysInfo

API = "/api/v1"
ECHO_HELLO = {"executable": "/bin/echo", "arguments": ["hello"]}


@dataclass
class Gateway:
    url: str
    app: Starlette

    @property
    def users(self) -> Users:
        users: Users = self.app.state.users
        return users

    def client(self, auth: tuple[str, str] | None = ("guest", "guest")) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, auth=auth, timeout=60)


async def serve(app: Starlette) -> AsyncIterator[str]:
    """`app` on uvicorn on a free 127.0.0.1 port, bound before the server starts (so a
    request made at once waits in the backlog instead of being refused)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await wait_within(task, 20)
        sock.close()


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[Gateway]:
    app = create_app(settings, keep_alive=1.0, webhooks=None)
    async for url in serve(app):
        yield Gateway(url, app)
        await app.state.users.close(retire=True)  # the test's durable event queues go


@pytest.fixture
async def endpoint(start_endpoint: StartEndpoint, name: str) -> str:
    await start_endpoint(plugins=[PsiJ, SysInfo, Echo])
    return name


def wire_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The error body, checked to be the wire's (`{"ok": false, "error": {code, …}}`)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["ok"] is False and body["error"]["code"] == code, body
    assert body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


async def wait_ended(client: httpx.AsyncClient, endpoint: str, job_id: str) -> dict[str, Any]:
    """Block on psij.wait_jobs through the generic call (no polling)."""
    response = await client.post(
        f"{API}/endpoints/{endpoint}/psij/wait_jobs",
        params={"timeout": 40},
        json={"job_ids": [job_id], "timeout": 30},
    )
    assert response.status_code == 200, response.text
    (job,) = response.json()
    assert job["state"] in ("COMPLETED", "FAILED", "CANCELED"), job
    return dict(job)


# -- the document ------------------------------------------------------------------------------


def test_openapi_document_validates_and_covers_every_plugin_method() -> None:
    document = openapi_document()
    validate(document)
    paths = document["paths"]
    for file, described in plugin_descriptions().items():
        for method in described["methods"]:
            path = f"{API}/endpoints/{{endpoint}}/{described['name']}/{method['name']}"
            assert "post" in paths[path], f"{file}: {method['name']} has no operation"
    assert {c.name for c in installed_contracts()} >= {"psij", "sysinfo"}
    for route in ("/jobs", "/jobs/{job_id}", "/jobs/{job_id}/output", "/jobs/{job_id}/cancel"):
        assert f"{API}/endpoints/{{endpoint}}{route}" in paths


# -- endpoints, calls, jobs --------------------------------------------------------------------


async def test_endpoints_plugins_and_a_job_from_submit_to_output(
    gateway: Gateway, endpoint: str
) -> None:
    async with gateway.client() as client:
        listed = await client.get(f"{API}/endpoints")
        assert listed.status_code == 200, listed.text
        assert endpoint in [info["endpoint"] for info in listed.json()]
        one = (await client.get(f"{API}/endpoints/{endpoint}")).json()
        assert one["status"] in ("online", "heartbeat") and one["endpoint"] == endpoint
        described = (await client.get(f"{API}/endpoints/{endpoint}/psij")).json()
        assert "submit_job" in [method["name"] for method in described["methods"]]

        submitted = await client.post(f"{API}/endpoints/{endpoint}/jobs", json=ECHO_HELLO)
        assert submitted.status_code == 200, submitted.text
        job_id = submitted.json()["job_id"]
        assert (await wait_ended(client, endpoint, job_id))["state"] == "COMPLETED"

        status = (await client.get(f"{API}/endpoints/{endpoint}/jobs/{job_id}")).json()
        assert status["state"] == "COMPLETED" and status["executable"] == "/bin/echo"
        output = await client.get(
            f"{API}/endpoints/{endpoint}/jobs/{job_id}/output", params={"offset": 0}
        )
        assert "hello" in output.json()["stdout"]
        later = output.json()["stdout_offset"]
        rest = await client.get(
            f"{API}/endpoints/{endpoint}/jobs/{job_id}/output", params={"offset": later}
        )
        assert rest.json()["stdout"] == ""
        jobs = (await client.get(f"{API}/endpoints/{endpoint}/jobs", params={"limit": 5})).json()
        assert job_id in [job["job_id"] for job in jobs["jobs"]]
        cancel = await client.post(f"{API}/endpoints/{endpoint}/jobs/{job_id}/cancel", json={})
        assert cancel.json()["state"] == "COMPLETED"  # it had ended: returned unchanged


async def test_the_generic_call_reaches_any_plugin_method(gateway: Gateway, endpoint: str) -> None:
    async with gateway.client() as client:
        echoed = await client.post(
            f"{API}/endpoints/{endpoint}/echo/echo", json={"text": "hi", "times": 2}
        )
        assert echoed.status_code == 200 and echoed.json() == ["hi", "hi"]
        whoami = await client.post(f"{API}/endpoints/{endpoint}/echo/whoami", json={})
        assert whoami.json()["user"] == "guest"
        home = await client.post(f"{API}/endpoints/{endpoint}/sysinfo/homedir", json={})
        assert home.status_code == 200 and isinstance(home.json(), str)
        described = (await client.get(f"{API}/endpoints/{endpoint}/echo")).json()
        assert described["version"] == "9.9.9"  # not a contract installed here: asked


async def test_errors_carry_the_wire_body_and_status(gateway: Gateway, endpoint: str) -> None:
    async with gateway.client() as client:
        nowhere = f"nowhere{uuid.uuid4().hex[:6]}"
        missing = await client.post(f"{API}/endpoints/{nowhere}/psij/executors", json={})
        assert wire_error(missing, 404, "not_found")["details"]["type"] == "EndpointNotFound"
        gone = await client.get(f"{API}/endpoints/{nowhere}")
        wire_error(gone, 404, "not_found")
        method = await client.post(f"{API}/endpoints/{endpoint}/psij/no_such_method", json={})
        assert wire_error(method, 404, "not_found")["details"]["type"] == "MethodNotFound"
        bad = await client.post(f"{API}/endpoints/{endpoint}/psij/submit_job", json={"spec": 5})
        assert wire_error(bad, 422, "invalid_request")["details"]["reason"] == "invalid_params"
        bad_spec = await client.post(f"{API}/endpoints/{endpoint}/jobs", json={"nope": 1})
        wire_error(bad_spec, 422, "invalid_request")
        bad_query = await client.get(f"{API}/endpoints/{endpoint}/jobs", params={"limit": "x"})
        wire_error(bad_query, 422, "invalid_request")
        huge = await client.get(
            f"{API}/endpoints/{endpoint}/jobs/x", params={"stdout_offset": 2**70}
        )
        assert wire_error(huge, 422, "invalid_request")["details"]["type"] == "InvalidArguments"
        unknown_job = await client.get(f"{API}/endpoints/{endpoint}/jobs/nosuchjob")
        wire_error(unknown_job, 404, "not_found")
        form = await client.post(
            f"{API}/endpoints/{endpoint}/echo/echo",
            content="text=hi",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        wire_error(form, 415, "invalid_request")
        wire_error(await client.get(f"{API}/nothing/here"), 404, "not_found")
        wire_error(await client.get(f"{API}/events"), 422, "invalid_request")
        too_long = await client.get(f"{API}/events", params={"pattern": "a.b.c.d.e"})
        wire_error(too_long, 422, "invalid_request")


async def test_offline_timeout_plugin_errors_and_cancel(
    gateway: Gateway, endpoint: str, start_endpoint: StartEndpoint
) -> None:
    away = await start_endpoint(plugins=[SysInfo], endpoint=f"{endpoint}x")
    await away.stop(grace=5)  # its queue stays, with nobody consuming it
    async with gateway.client() as client:
        offline = await client.post(f"{API}/endpoints/{away.name}/sysinfo/homedir", json={})
        assert wire_error(offline, 503, "unavailable")["details"]["type"] == "EndpointOffline"
        sleeper = {"executable": "/bin/sleep", "arguments": ["60"]}
        job = (await client.post(f"{API}/endpoints/{endpoint}/jobs", json=sleeper)).json()
        echo = f"{API}/endpoints/{endpoint}/echo"
        late = await client.post(f"{echo}/sleep", params={"timeout": 1}, json={"seconds": 5})
        wire_error(late, 504, "timeout")
        conflict = await client.post(f"{echo}/fail", json={"kind": "conflict"})
        assert wire_error(conflict, 409, "conflict")["details"]["thing"] == 1
        domain = await client.post(f"{echo}/fail", json={"kind": "domain"})
        assert wire_error(domain, 404, "not_found")["details"]["type"] == "ThingNotFound"
        wire_error(await client.post(f"{echo}/fail", json={"kind": "boom"}), 500, "internal")
        cancel = await client.post(f"{API}/endpoints/{endpoint}/jobs/{job['job_id']}/cancel")
        wire_error(cancel, 415, "invalid_request")  # no JSON content type: refused (CSRF)
        cancel = await client.post(
            f"{API}/endpoints/{endpoint}/jobs/{job['job_id']}/cancel", json={}
        )
        assert cancel.status_code == 200, cancel.text
        assert (await wait_ended(client, endpoint, job["job_id"]))["state"] == "CANCELED"


async def test_no_login_and_a_wrong_password_are_refused(gateway: Gateway, endpoint: str) -> None:
    async with gateway.client(auth=None) as anonymous:
        response = await anonymous.get(f"{API}/endpoints")
        wire_error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith("Basic")
        wire_error(await anonymous.get(f"{API}/openapi.json"), 401, "unauthorized")
    async with gateway.client(auth=("guest", "not-the-password")) as wrong:
        response = await wrong.get(f"{API}/endpoints")
        wire_error(response, 401, "unauthorized")
        assert "not-the-password" not in response.text
        assert response.headers["www-authenticate"].startswith("Basic")
    assert len(gateway.users) == 0  # no connection kept for a refused login
    async with gateway.client() as client:
        document = await client.get(f"{API}/openapi.json")
        assert document.status_code == 200 and document.json()["openapi"] == "3.1.0"
    assert len(gateway.users) == 1
    await gateway.users.close_idle(idle=0)  # as if the idle time had passed
    assert len(gateway.users) == 0


# -- events ------------------------------------------------------------------------------------


@dataclass
class SseReader:
    """Reads one event stream: its events (id, data) and whether it said `: subscribed`."""

    lines: AsyncIterator[str]
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def subscribed(self) -> None:
        async for line in self.lines:
            if line == ": subscribed":
                return

    async def until(self, job_id: str, state: str) -> None:
        """Read events until `job_id`'s `state` came."""
        event_id, data = "", ""
        async for line in self.lines:
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and data:
                event = json.loads(data)
                self.events.append((event_id, event))
                event_id, data = "", ""
                if event["data"].get("job_id") == job_id and event["data"]["state"] == state:
                    return

    def states(self, job_id: str) -> list[tuple[int, str]]:
        return [
            (event["data"]["seq"], event["data"]["state"])
            for _, event in self.events
            if event["data"].get("job_id") == job_id
        ]


async def _submit(client: httpx.AsyncClient, endpoint: str) -> str:
    submitted = await client.post(f"{API}/endpoints/{endpoint}/jobs", json=ECHO_HELLO)
    assert submitted.status_code == 200, submitted.text
    return str(submitted.json()["job_id"])


async def test_events_resume_after_a_dropped_connection_with_nothing_lost(
    gateway: Gateway, endpoint: str
) -> None:
    params = {"pattern": f"{endpoint}.psij.job_status"}
    async with gateway.client() as client:
        async with client.stream("GET", f"{API}/events", params=params) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            first = SseReader(stream.aiter_lines())
            await wait_within(first.subscribed(), 20)
            job1 = await _submit(client, endpoint)
            await wait_within(first.until(job1, "COMPLETED"), 30)
            await gateway.users.close_idle(idle=0)
            assert len(gateway.users) == 1  # a connection with a listening stream is in use
        last_id = first.events[-1][0]
        assert [seq for seq, _ in first.states(job1)] == list(range(1, len(first.states(job1)) + 1))

        # the browser is away: a whole job runs meanwhile
        job2 = await _submit(client, endpoint)
        await wait_ended(client, endpoint, job2)

        headers = {"Last-Event-ID": last_id}
        async with client.stream("GET", f"{API}/events", params=params, headers=headers) as again:
            second = SseReader(again.aiter_lines())
            await wait_within(second.subscribed(), 20)
            await wait_within(second.until(job2, "COMPLETED"), 30)
    assert second.states(job1) == []  # nothing the browser had is sent again
    states = second.states(job2)
    assert [seq for seq, _ in states] == list(range(1, len(states) + 1))  # from NEW, no gap
    assert states[0][1] == "NEW" and states[-1][1] == "COMPLETED"
    ids = [event_id for event_id, _ in first.events + second.events]
    assert len(ids) == len(set(ids))

    # an older id: the rest is sent again from the gateway's log, in order
    async with gateway.client() as client:
        headers = {"Last-Event-ID": first.events[0][0]}
        async with client.stream("GET", f"{API}/events", params=params, headers=headers) as old:
            third = SseReader(old.aiter_lines())
            await wait_within(third.until(job2, "COMPLETED"), 30)
    assert third.events == first.events[1:] + second.events


# -- the command -------------------------------------------------------------------------------


async def test_orbit_mq_web_prints_its_url_and_serves_the_api(
    settings: Settings, endpoint: str
) -> None:
    command = orbit_cli("web", "--listen", "127.0.0.1:0", "--idle", "5", "--no-webhooks")
    process = await asyncio.create_subprocess_exec(
        *command, env=cli_env(settings), stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = (await wait_within(process.stdout.readline(), 30)).decode()
        assert line.startswith("orbit-mq web: http://127.0.0.1:"), line
        page = line.split(": ", 1)[1].split()[0]
        api = line.rsplit("API: ", 1)[1].strip().rstrip(")")
        async with httpx.AsyncClient(auth=("guest", "guest"), timeout=30) as client:
            assert "orbit_mq explorer" in (await client.get(page)).text
            response = await client.get(api)
        assert response.status_code == 200, response.text
        assert endpoint in [info["endpoint"] for info in response.json()]
    finally:
        if process.returncode is None:
            process.terminate()
        await wait_within(process.wait(), 20)
    # uvicorn shuts down gracefully on SIGTERM, then ends by that signal as is the custom
    assert process.returncode in (0, -signal.SIGTERM)


# -- two users ---------------------------------------------------------------------------------


@pytest.mark.single_node  # makes broker users on the local node
async def test_a_second_user_cannot_see_the_first_users_job(
    settings: Settings, tmp_path: Path
) -> None:
    async with two_users_and_endpoint(settings, tmp_path, "orbit-web", [PsiJ]) as two:
        app = create_app(two.on_vhost, keep_alive=1.0, webhooks=two.vhost.name)
        async for url in serve(app):
            gateway = Gateway(url, app)
            alice, bob = two.alice, two.bob
            await _apart(gateway, two.endpoint.name, (alice.name, alice.password), bob.password)
            await gateway.users.close(retire=True)


async def _apart(
    gateway: Gateway, endpoint: str, alice: tuple[str, str], bob_password: str
) -> None:
    jobs = f"{API}/endpoints/{endpoint}/jobs"
    async with gateway.client(auth=alice) as as_alice:
        job_id = await _submit(as_alice, endpoint)
        assert (await as_alice.get(f"{jobs}/{job_id}")).status_code == 200
    bob = alice[0].replace("alice", "bob")
    async with gateway.client(auth=(bob, bob_password)) as as_bob:
        theirs = await as_bob.get(f"{jobs}/{job_id}")
        assert wire_error(theirs, 403, "unauthorized")["details"]["type"] == "NotJobOwner"
        cancel = await as_bob.post(f"{jobs}/{job_id}/cancel", json={})
        wire_error(cancel, 403, "unauthorized")
        hook = {"url": "http://127.0.0.1:9/hook", "secret": "s" * 16}
        webhook = await as_bob.post(f"{jobs}/{job_id}/webhook", json=hook)
        wire_error(webhook, 403, "unauthorized")
        assert (await as_bob.get(f"{API}/webhooks")).json() == []
        listed = (await as_bob.get(jobs)).json()
        assert job_id not in [job["job_id"] for job in listed["jobs"]]
        # bob's password is not alice's: her cached connection does not let him in as her
        wrong = await as_bob.get(jobs, auth=(alice[0], bob_password))
        wire_error(wrong, 401, "unauthorized")
    assert len(gateway.users) == 2
