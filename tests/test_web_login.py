"""The gateway's login form and session cookie (orbit_mq.web.login, .sessions) on a real
uvicorn against the real broker: the cookie's flags, a refused password, the CSRF token on
state-changing calls, logout, expiry, events under a session, nothing secret in the logs or
in clear in the session store, and one user's cookie giving nothing of another's."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import test_web
from broker_users import scratch_vhost, two_users_and_endpoint
from conftest import StartEndpoint
from echo_plugin import Echo
from test_web import ECHO_HELLO, SseReader, serve, wait_ended, wire_error

from orbit_mq import admin
from orbit_mq.admin import NewUser
from orbit_mq.broker_admin import Accounts
from orbit_mq.config import Settings
from orbit_mq.permissions import Role
from orbit_mq.waiting import wait_within
from orbit_mq.web import create_app, openapi_document
from orbit_mq.web.identity import FailedLogins, LoginThrottled
from orbit_mq.web.sessions import COOKIE, SECURE_COOKIE, Session, Sessions, SessionTerms
from orbit_mq.workers.plugins.psij import PsiJ
from orbit_mq.workers.plugins.sysinfo import SysInfo

API = "/api/v1"
PAGE = {"X-Orbit-Page": "1"}


class Gateway(test_web.Gateway):
    """The gateway as test_web has it, with its sessions; clients log in themselves."""

    @property
    def sessions(self) -> Sessions:
        sessions: Sessions = self.app.state.sessions
        return sessions

    def client(self, auth: tuple[str, str] | None = None) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, auth=auth, timeout=60)

    def session_of(self, user: str) -> Session:
        (session,) = [s for s in self.sessions if s.user == user]
        return session


async def gateway_on(settings: Settings, terms: SessionTerms) -> AsyncIterator[Gateway]:
    app = create_app(settings, keep_alive=1.0, webhooks=None, sessions=terms)
    async for url in serve(app):
        yield Gateway(url, app)
        await app.state.users.close(retire=True)  # the test's durable event queues go


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[Gateway]:
    async for gateway in gateway_on(settings, SessionTerms()):
        yield gateway


@pytest.fixture
async def endpoint(start_endpoint: StartEndpoint, name: str) -> str:
    await start_endpoint(plugins=[PsiJ, SysInfo, Echo])
    return name


async def log_in(client: httpx.AsyncClient, user: str, password: str) -> str:
    """Log `client` in by the form's route; its CSRF token (the cookie stays in its jar)."""
    response = await client.post(f"{API}/login", json={"user": user, "password": password})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user"] == user and body["csrf_token"]
    return str(body["csrf_token"])


def cookie_attributes(response: httpx.Response, cookie: str = COOKIE) -> tuple[str, dict[str, str]]:
    """The session cookie's value and attributes (lower-case names) of a Set-Cookie."""
    (header,) = response.headers.get_list("set-cookie")
    first, *rest = [part.strip() for part in header.split(";")]
    name, _, value = first.partition("=")
    assert name == cookie, header
    attributes = {}
    for part in rest:
        key, _, val = part.partition("=")
        attributes[key.lower()] = val
    return value, attributes


# -- login, CSRF, logout -----------------------------------------------------------------------


async def test_a_login_gives_a_strict_http_only_cookie_and_state_changes_need_its_token(
    gateway: Gateway, endpoint: str
) -> None:
    async with gateway.client() as client:
        response = await client.post(f"{API}/login", json={"user": "guest", "password": "guest"})
        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"
        secret, flags = cookie_attributes(response)
        assert len(secret) >= 40  # token_urlsafe(32)
        assert "httponly" in flags and flags["samesite"].lower() == "strict"
        assert flags["path"] == "/" and int(flags["max-age"]) == int(SessionTerms.lifetime)
        assert "secure" not in flags  # plain HTTP here: a Secure cookie would never come back
        token = response.json()["csrf_token"]

        listed = await client.get(f"{API}/endpoints")  # the cookie alone logs in
        assert listed.status_code == 200, listed.text
        assert endpoint in [info["endpoint"] for info in listed.json()]
        me = (await client.get(f"{API}/session")).json()
        assert me["user"] == "guest" and me["csrf_token"] == token

        jobs = f"{API}/endpoints/{endpoint}/jobs"
        missing = await client.post(jobs, json=ECHO_HELLO)
        assert wire_error(missing, 403, "unauthorized")["details"]["type"] == "CsrfRejected"
        wrong = await client.post(jobs, json=ECHO_HELLO, headers={"X-CSRF-Token": token[:-1]})
        wire_error(wrong, 403, "unauthorized")
        form = await client.post(jobs, content=b"x=1", headers={"X-CSRF-Token": token})
        wire_error(form, 415, "invalid_request")  # the JSON rule still holds as well
        submitted = await client.post(jobs, json=ECHO_HELLO, headers={"X-CSRF-Token": token})
        assert submitted.status_code == 200, submitted.text
        job = await wait_ended_by_cookie(client, endpoint, submitted.json()["job_id"], token)
        assert job["state"] == "COMPLETED"

        refused = await client.post(f"{API}/logout", json={})
        wire_error(refused, 403, "unauthorized")  # no other site can log the browser out
        assert len(gateway.sessions) == 1
        out = await client.post(f"{API}/logout", json={}, headers={"X-CSRF-Token": token})
        assert out.status_code == 204, out.text
        cleared, flags = cookie_attributes(out)
        assert cleared in ("", '""') and flags["max-age"] == "0"
    assert len(gateway.sessions) == 0
    assert len(gateway.users) == 0  # nobody else used guest's connection: it closed

    async with gateway.client() as again:  # the old cookie, sent on purpose: it is dead
        stale = await again.get(
            f"{API}/endpoints", headers={"Cookie": f"{COOKIE}={secret}", **PAGE}
        )
        wire_error(stale, 401, "unauthorized")
        assert "www-authenticate" not in stale.headers  # the page's own request: no dialog
        assert len(gateway.users) == 0


async def wait_ended_by_cookie(
    client: httpx.AsyncClient, endpoint: str, job_id: str, token: str
) -> dict[str, object]:
    """tests/test_web.wait_ended, under a session (its POST needs the token)."""
    client.headers["X-CSRF-Token"] = token
    try:
        return await wait_ended(client, endpoint, job_id)
    finally:
        del client.headers["X-CSRF-Token"]


async def test_over_https_the_cookie_is_secure_and_bound_to_the_origin(gateway: Gateway) -> None:
    # uvicorn takes the scheme from a proxy it trusts (127.0.0.1 by default): as if TLS ended there
    https = {"X-Forwarded-Proto": "https"}
    async with gateway.client() as client:
        body = {"user": "guest", "password": "guest"}
        response = await client.post(f"{API}/login", json=body, headers=https)
        assert response.status_code == 200, response.text
        secret, flags = cookie_attributes(response, SECURE_COOKIE)
        assert "secure" in flags and "httponly" in flags and flags["path"] == "/"
        assert "domain" not in flags  # __Host-: this origin only
        cookie = {"Cookie": f"{SECURE_COOKIE}={secret}", **https}
        me = await client.get(f"{API}/session", headers=cookie)
        assert me.status_code == 200 and me.json()["user"] == "guest"


def test_the_document_lists_the_login_routes_and_the_cookie_scheme() -> None:
    document = openapi_document()
    paths = document["paths"]
    assert paths[f"{API}/login"]["post"]["security"] == []
    assert paths[f"{API}/logout"]["post"]["security"] == []
    assert "get" in paths[f"{API}/session"]
    scheme = document["components"]["securitySchemes"]["session"]
    assert scheme == {**scheme, "type": "apiKey", "in": "cookie", "name": COOKIE}
    assert {"session": []} in document["security"]


async def test_a_refused_login_keeps_no_session_and_a_login_cannot_be_forged(
    gateway: Gateway,
) -> None:
    async with gateway.client() as client:
        body = {"user": "guest", "password": "not-the-password"}
        wrong = await client.post(f"{API}/login", json=body)
        wire_error(wrong, 401, "unauthorized")
        assert "set-cookie" not in wrong.headers and "www-authenticate" not in wrong.headers
        assert "not-the-password" not in wrong.text
        as_form = await client.post(f"{API}/login", data={"user": "guest", "password": "guest"})
        wire_error(as_form, 415, "invalid_request")  # an HTML form of another site: refused
        cross = await client.post(
            f"{API}/login",
            json={"user": "guest", "password": "guest"},
            headers={"Sec-Fetch-Site": "cross-site"},
        )
        assert wire_error(cross, 403, "unauthorized")["details"]["type"] == "CrossSiteLogin"
        odd = await client.post(f"{API}/login", json={"user": "", "password": 3})
        error = wire_error(odd, 422, "invalid_request")
        assert {e["loc"] for e in error["details"]["errors"]} == {"user", "password"}
        nobody = await client.get(f"{API}/session", headers=PAGE)
        wire_error(nobody, 401, "unauthorized")
        unknown = await client.get(f"{API}/endpoints", headers={"Cookie": f"{COOKIE}=made-up"})
        wire_error(unknown, 401, "unauthorized")
    assert len(gateway.sessions) == 0 and len(gateway.users) == 0


async def test_basic_decides_when_both_come_and_logout_keeps_a_connection_others_use(
    gateway: Gateway,
) -> None:
    async with gateway.client() as first, gateway.client() as second:
        token = await log_in(first, "guest", "guest")
        await log_in(second, "guest", "guest")
        assert len(gateway.sessions) == 2 and len(gateway.users) == 1  # one connection
        token = await log_in(first, "guest", "guest")  # again: its former session ends
        assert len(gateway.sessions) == 2
        # a wrong Basic password with a good cookie: Basic alone decides
        both = await first.get(f"{API}/session", auth=("guest", "wrong"))
        wire_error(both, 401, "unauthorized")
        basic = await first.get(f"{API}/session", auth=("guest", "guest"))
        assert basic.json()["user"] == "guest" and basic.json()["csrf_token"] is None
        # under Basic the session's token is not asked for (the JSON rule is Basic's CSRF rule)
        call = await first.post(
            f"{API}/endpoints/nowhere/echo/echo", json={}, auth=("guest", "guest")
        )
        wire_error(call, 404, "not_found")

        out = await first.post(f"{API}/logout", json={}, headers={"X-CSRF-Token": token})
        assert out.status_code == 204
        assert len(gateway.users) == 1  # the second session (and a Basic client) still use it
        assert (await second.get(f"{API}/session")).status_code == 200


# -- expiry ------------------------------------------------------------------------------------


async def test_an_idle_session_ends_and_a_closed_connection_reopens_from_the_cookie(
    settings: Settings,
) -> None:
    async for gateway in gateway_on(settings, SessionTerms(idle=1.0, lifetime=60.0)):
        async with gateway.client() as client:
            await log_in(client, "guest", "guest")
            await gateway.users.close_idle(idle=0)  # as if the connection's idle time passed
            assert len(gateway.users) == 0
            again = await client.get(f"{API}/session")  # reopened with the sealed password
            assert again.status_code == 200, again.text
            assert len(gateway.users) == 1

            session = gateway.session_of("guest")
            await wait_within(session.ended.wait(), 20)  # the sweep after a second unused
            expired = await client.get(f"{API}/session", headers=PAGE)
            wire_error(expired, 401, "unauthorized")
            assert cookie_attributes(expired)[1]["max-age"] == "0"  # the browser forgets it
        assert len(gateway.sessions) == 0


async def test_a_session_ends_at_its_lifetime_however_used_and_so_do_its_streams(
    settings: Settings, endpoint: str
) -> None:
    async for gateway in gateway_on(settings, SessionTerms(idle=60.0, lifetime=4.0)):
        async with gateway.client() as client:
            await log_in(client, "guest", "guest")
            session = gateway.session_of("guest")
            params = {"pattern": f"{endpoint}.psij.job_status"}
            async with client.stream("GET", f"{API}/events", params=params) as stream:
                assert stream.status_code == 200
                reader = SseReader(stream.aiter_lines())
                await wait_within(reader.subscribed(), 20)
                # in use (a stream listens) yet it ends: at the lifetime, with its stream
                await wait_within(session.ended.wait(), 20)
                await wait_within(_drain(reader), 20)  # the stream ends (the keep-alive: 1 s)
            wire_error(await client.get(f"{API}/endpoints", headers=PAGE), 401, "unauthorized")


async def _drain(reader: SseReader) -> None:
    """Read the stream to its end."""
    async for _ in reader.lines:
        pass


async def test_events_stream_under_a_session_and_end_at_its_logout(
    gateway: Gateway, endpoint: str
) -> None:
    async with gateway.client() as client:
        token = await log_in(client, "guest", "guest")
        params = {"pattern": f"{endpoint}.psij.job_status"}
        async with client.stream("GET", f"{API}/events", params=params) as stream:
            reader = SseReader(stream.aiter_lines())
            await wait_within(reader.subscribed(), 20)
            submitted = await client.post(
                f"{API}/endpoints/{endpoint}/jobs", json=ECHO_HELLO, headers={"X-CSRF-Token": token}
            )
            job_id = submitted.json()["job_id"]
            await wait_within(reader.until(job_id, "COMPLETED"), 30)
            out = await client.post(f"{API}/logout", json={}, headers={"X-CSRF-Token": token})
            assert out.status_code == 204
            await wait_within(_drain(reader), 20)  # the logout ended it
    assert [state for _, state in reader.states(job_id)][-1] == "COMPLETED"


# -- secrets -----------------------------------------------------------------------------------


@dataclass
class Account:
    user: str
    password: str


async def _accounts(accounts: Accounts, made: Settings, tag: str, *names: str) -> list[Account]:
    """New broker users `{name}{tag}` (client role) with their generated passwords."""
    found = []
    for prefix in names:
        user = await admin.add_user(accounts, made, Role.CLIENT, f"{prefix}{tag}")
        found.append(Account(user.name, user.password))
    return found


async def test_no_password_cookie_or_token_in_the_logs_or_in_clear_in_the_store(
    broker_url: str, settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with scratch_vhost(broker_url, "orbit-login") as vhost:
        tag = uuid.uuid4().hex[:8]
        made = Settings(url=vhost.url, home=tmp_path / "admin")
        (carol,) = await _accounts(vhost.accounts, made, tag, "carol")
        vhost.users.append(carol.user)
        on_vhost = settings.model_copy(update={"url": vhost.url})
        async for gateway in gateway_on(on_vhost, SessionTerms()):
            async with gateway.client() as client:
                response = await client.post(
                    f"{API}/login", json={"user": carol.user, "password": carol.password}
                )
                assert response.status_code == 200, response.text
                secret, _ = cookie_attributes(response)
                token = response.json()["csrf_token"]
                assert (await client.get(f"{API}/endpoints")).status_code == 200
                session = gateway.session_of(carol.user)
                held = b"".join(
                    value if isinstance(value, bytes) else str(value).encode()
                    for value in vars(session).values()
                )
                assert carol.password.encode() not in held and secret.encode() not in held
                assert carol.password not in repr(session) and token not in repr(session)
                assert session.password(secret) == carol.password  # only the cookie opens it
                with pytest.raises(ValueError):
                    session.password(secret[:-1] + ("A" if secret[-1] != "A" else "B"))
                wrong = {"user": carol.user, "password": carol.password + "x"}
                assert (await client.post(f"{API}/login", json=wrong)).status_code == 401
                await client.post(f"{API}/logout", json={}, headers={"X-CSRF-Token": token})
    # the gateway's side: this test's own HTTP client (httpx, httpcore) logs the headers it got
    client_side = ("httpx", "httpcore")
    logged = "\n".join(
        caplog.handler.format(r) for r in caplog.records if not r.name.startswith(client_side)
    )
    assert carol.user in logged  # the log was captured (the login is logged by user name)
    for secret_text in (carol.password, secret, token):
        assert secret_text not in logged


# -- two users ---------------------------------------------------------------------------------


async def test_one_users_cookie_gives_nothing_of_another_users(
    settings: Settings, tmp_path: Path
) -> None:
    async with two_users_and_endpoint(settings, tmp_path, "orbit-login", [PsiJ]) as two:
        async for gateway in gateway_on(two.on_vhost, SessionTerms()):
            await _apart(gateway, two.endpoint.name, two.alice, two.bob)


async def _apart(gateway: Gateway, endpoint: str, alice: NewUser, bob: NewUser) -> None:
    jobs = f"{API}/endpoints/{endpoint}/jobs"
    async with gateway.client() as as_alice, gateway.client() as as_bob:
        alice_token = await log_in(as_alice, alice.name, alice.password)
        submitted = await as_alice.post(
            jobs, json=ECHO_HELLO, headers={"X-CSRF-Token": alice_token}
        )
        assert submitted.status_code == 200, submitted.text
        job_id = submitted.json()["job_id"]
        assert (await as_alice.get(f"{jobs}/{job_id}")).status_code == 200

        bob_token = await log_in(as_bob, bob.name, bob.password)
        theirs = await as_bob.get(f"{jobs}/{job_id}")
        assert wire_error(theirs, 403, "unauthorized")["details"]["type"] == "NotJobOwner"
        cancel = await as_bob.post(
            f"{jobs}/{job_id}/cancel", json={}, headers={"X-CSRF-Token": bob_token}
        )
        wire_error(cancel, 403, "unauthorized")
        listed = (await as_bob.get(jobs)).json()
        assert job_id not in [job["job_id"] for job in listed["jobs"]]
        # alice's token is hers: with bob's cookie it is no token at all
        borrowed = await as_bob.post(
            f"{jobs}/{job_id}/cancel", json={}, headers={"X-CSRF-Token": alice_token}
        )
        assert wire_error(borrowed, 403, "unauthorized")["details"]["type"] == "CsrfRejected"
        assert (await as_bob.get(f"{API}/session")).json()["user"] == bob.name
        out = await as_bob.post(f"{API}/logout", json={}, headers={"X-CSRF-Token": bob_token})
        assert out.status_code == 204
        assert (await as_alice.get(f"{jobs}/{job_id}")).status_code == 200  # hers goes on
    assert len(gateway.users) == 1  # bob's connection closed at his logout, alice's stays


# -- refused passwords ---------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_user_name_refused_too_often_pauses_and_sessions_keep_working(
    gateway: Gateway,
) -> None:
    clock = Clock()
    gateway.users.failed = FailedLogins(limit=3, window=60, clock=clock)
    async with gateway.client() as kept, gateway.client() as client:
        await log_in(kept, "guest", "guest")  # before the wrong passwords
        await gateway.users.drop("guest")  # so the next logins must ask the broker
        for _ in range(3):
            body = {"user": "guest", "password": "not-the-password"}
            wire_error(await client.post(f"{API}/login", json=body), 401, "unauthorized")
        clock.now += 30
        right = {"user": "guest", "password": "guest"}
        paused = await client.post(f"{API}/login", json=right)  # even the right one waits
        error = wire_error(paused, 429, "unauthorized")
        assert error["details"] == {"type": "LoginThrottled", "retry_after": 30}
        assert paused.headers["retry-after"] == "30" and "set-cookie" not in paused.headers
        basic = await client.get(f"{API}/session", auth=("guest", "guest"))
        assert basic.status_code == 429 and basic.headers["retry-after"] == "30"
        # a session's own login waits too, but the session is not ended by it
        assert (await kept.get(f"{API}/session")).status_code == 429
        assert len(gateway.sessions) == 1
        other = await client.get(f"{API}/session", auth=("someone-else", "x"))
        wire_error(other, 401, "unauthorized")  # other names are theirs alone
        clock.now += 30  # the oldest refusal is a window old
        await log_in(client, "guest", "guest")
        assert (await kept.get(f"{API}/session")).status_code == 200


def test_refusals_slide_out_of_the_window_and_a_login_forgets_them() -> None:
    clock = Clock()
    failed = FailedLogins(limit=2, window=10, clock=clock)
    failed.refused("alice")
    clock.now += 6
    failed.refused("alice")
    with pytest.raises(LoginThrottled) as paused:
        failed.check("alice")
    assert paused.value.retry_after == 4
    failed.check("bob")
    clock.now += 4
    failed.check("alice")  # the first refusal left the window
    failed.refused("alice")
    with pytest.raises(LoginThrottled):
        failed.check("alice")
    failed.accepted("alice")
    failed.check("alice")
