"""Ownership without a broker: the check, who a listing shows, how a method learns its caller,
and a tunnel's owner."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from orbit_mq.config import Settings
from orbit_mq.contracts.psij import NotJobOwner
from orbit_mq.errors import Unauthorized
from orbit_mq.rpc import CallContext, rpc
from orbit_mq.wire import Request
from orbit_mq.workers import ownership
from orbit_mq.workers.dispatch import Dispatcher
from orbit_mq.workers.journal import Journal
from orbit_mq.workers.logs import RefusalLog
from orbit_mq.workers.ownership import Ownership, current_call, serving
from orbit_mq.workers.plugin import Plugin, PluginContext
from orbit_mq.workers.plugins.psij.tunneled import Tunnels, Watcher

POLICY = Ownership(endpoint_user="ep", admins=frozenset({"root"}))
AUDIT = "orbit_mq.endpoint.audit"


def call(user: str) -> CallContext:
    return CallContext(endpoint="hpc1", plugin="psij", method="get_job_status", user=user)


@pytest.fixture
def audit_lines(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> Callable[[], list[logging.LogRecord]]:
    """The audit records of the test so far (refusals not held back by earlier tests')."""
    monkeypatch.setattr(ownership, "_refusals", RefusalLog(ownership.audit_log))
    caplog.set_level(logging.INFO, logger=AUDIT)
    return lambda: [record for record in caplog.records if record.name == AUDIT]


def check(user: str, owners: dict[str, str | None]) -> None:
    with serving(call(user)):
        POLICY.check(owners, NotJobOwner, "job", "job_id")


def test_an_owner_passes_unaudited(audit_lines: Callable[[], list[logging.LogRecord]]) -> None:
    check("alice", {"j1": "alice", "j2": "alice"})
    assert audit_lines() == []


def test_another_user_is_refused_and_audited(
    audit_lines: Callable[[], list[logging.LogRecord]],
) -> None:
    with pytest.raises(NotJobOwner) as refused:
        check("bob", {"j1": "bob", "j2": "alice"})
    assert refused.value.code == "unauthorized" and refused.value.details == {"job_id": "j2"}
    assert "alice" not in refused.value.message  # the caller learns no other user's name
    (line,) = audit_lines()
    assert line.levelno == logging.WARNING
    assert line.getMessage() == "audit: refused psij.get_job_status by 'bob' on job j2 of alice"


def test_an_admin_passes_audited(audit_lines: Callable[[], list[logging.LogRecord]]) -> None:
    check("root", {"j1": "alice", "j2": "bob", "j3": "root"})
    (line,) = audit_lines()
    assert line.levelno == logging.INFO
    assert line.getMessage() == (
        "audit: admin override: psij.get_job_status by 'root' on job j1, j2 of alice, bob"
    )


def test_work_without_an_owner_is_the_endpoint_users() -> None:
    check("ep", {"old": None, "older": ""})
    with pytest.raises(NotJobOwner):
        check("alice", {"old": ""})


def test_a_listing_shows_a_user_their_own_and_an_admin_everything() -> None:
    with serving(call("alice")):
        assert POLICY.visible_owners() == {"alice"}
    with serving(call("ep")):
        assert POLICY.visible_owners() == {"ep", ""}
    with serving(call("root")):
        assert POLICY.visible_owners() is None


def test_current_call_exists_only_while_serving() -> None:
    with pytest.raises(RuntimeError, match="only inside a method"):
        current_call()
    with serving(call("alice")):
        assert current_call().user == "alice"
    with pytest.raises(RuntimeError):
        current_call()


class Caller(Plugin):
    name = "caller"

    @rpc
    async def on_the_loop(self) -> str:
        return current_call().user

    @rpc
    def in_a_thread(self) -> str:
        return current_call().user


async def _no_events(
    plugin: str, topic: str, data: dict[str, Any], key: str | None, owner: str
) -> None:
    pass


async def test_the_dispatcher_tells_every_method_its_caller() -> None:
    plugin = Caller(PluginContext("unit", Settings(), _no_events))
    dispatcher = Dispatcher(plugin, allowed_users=frozenset({"alice"}), max_message_size=4096)
    replies: list[bytes] = []

    async def send(reply_to: str, cid: str | None, body: bytes, kind: str | None) -> None:
        replies.append(body)

    for method in ("on_the_loop", "in_a_thread"):
        request = Request(
            body=b"{}", method=method, user="alice", reply_to="amq.rabbitmq.reply-to.x"
        )
        await dispatcher.handle(request, send)
    assert [orjson.loads(body) for body in replies] == [{"ok": True, "result": "alice"}] * 2


async def test_another_users_session_is_refused_for_any_call(
    audit_lines: Callable[[], list[logging.LogRecord]],
) -> None:
    plugin = Caller(PluginContext("unit", Settings(), _no_events))
    session = await plugin.sessions.open("alice")
    with pytest.raises(Unauthorized):
        plugin.sessions.use(session.id, "bob", "caller.on_the_loop")
    assert plugin.sessions.use(session.id, "alice", "caller.on_the_loop") is session
    (line,) = audit_lines()
    assert "refused caller.on_the_loop by 'bob' on session" in line.getMessage()


async def test_a_tunnels_status_is_its_jobs_owners(tmp_path: Path) -> None:
    rows = {"job1": SimpleNamespace(user="alice")}
    context = SimpleNamespace(journal=Journal(None), ownership=POLICY)
    plugin = SimpleNamespace(context=context, store=SimpleNamespace(get=rows.get))
    tunnels = Tunnels(plugin, None)  # type: ignore[arg-type]
    tunnels.watchers["child"] = Watcher("child", "none", tmp_path / "rv", job_id="job1")
    for user in ("alice", "root"):
        with serving(call(user)):
            assert (await tunnels.status("child")).status == "no_tunnel"
    with serving(call("bob")), pytest.raises(NotJobOwner) as refused:
        await tunnels.status("child")
    assert refused.value.details == {"name": "child"}
