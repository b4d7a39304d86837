"""The dispatcher, registry and public API without a broker."""

from __future__ import annotations

import asyncio
import pkgutil
import sys
import textwrap
import time
from pathlib import Path
from typing import Annotated, Any

import orjson
import pytest
from echo_plugin import Echo
from pydantic import Field

import orbit_mq
from orbit_mq.config import Settings
from orbit_mq.contract import Contract
from orbit_mq.errors import ConfigError, from_error_info, to_error_info
from orbit_mq.protocol import ErrorInfo
from orbit_mq.rpc import rpc
from orbit_mq.wire import Request
from orbit_mq.workers.dispatch import Dispatcher
from orbit_mq.workers.plugin import Plugin, PluginContext
from orbit_mq.workers.registry import known_plugins, load_plugins

Sent = list[tuple[bytes, str | None]]


async def _no_events(
    plugin: str, topic: str, data: dict[str, Any], key: str | None, owner: str
) -> None:
    pass


async def _dispatcher() -> tuple[Dispatcher, Sent]:
    plugin = Echo(PluginContext("unit", Settings(), _no_events))
    await plugin.start()
    return Dispatcher(plugin, allowed_users=frozenset({"me"}), max_message_size=4096), []


def _request(method: str, body: bytes = b"{}", **extra: Any) -> Request:
    return Request(body=body, method=method, user="me", reply_to="amq.rabbitmq.reply-to.x", **extra)


async def _handle(dispatcher: Dispatcher, sent: Sent, request: Request) -> None:
    async def send(reply_to: str, cid: str | None, body: bytes, kind: str | None) -> None:
        sent.append((body, kind))

    await dispatcher.handle(request, send)


async def test_expired_request_is_not_executed() -> None:
    dispatcher, sent = await _dispatcher()
    past = int(time.time() * 1000) - 1000
    await _handle(dispatcher, sent, _request("sleep", b'{"seconds": 0}', deadline_ms=past))
    assert not dispatcher.plugin.sleeping.is_set()  # type: ignore[attr-defined]
    assert orjson.loads(sent[0][0])["error"]["code"] == "timeout"


async def test_batch_answers_fast_calls_before_slow_ones() -> None:
    dispatcher, sent = await _dispatcher()
    batch = {
        "calls": [
            {"id": "slow", "method": "sleep", "params": {"seconds": 0.3}},
            {"id": "a", "method": "echo", "params": {"text": "a"}},
            {"id": "bad", "method": "echo", "params": {"text": 1}},
            {"id": "gone", "method": "nope"},
        ]
    }
    await _handle(dispatcher, sent, _request("orbit.batch", orjson.dumps(batch)))
    assert all(kind == "orbit.batch" for _, kind in sent)
    groups = [[item["id"] for item in orjson.loads(body)["replies"]] for body, _ in sent]
    assert groups[-1] == ["slow"] and len(groups) >= 2
    replies = {item["id"]: item for body, _ in sent for item in orjson.loads(body)["replies"]}
    assert replies["a"] == {"id": "a", "ok": True, "result": ["a"]}
    assert replies["bad"]["error"]["code"] == "invalid_request"
    assert replies["gone"]["error"]["code"] == "not_found"


async def test_unknown_user_is_refused_before_the_body_is_read() -> None:
    dispatcher, sent = await _dispatcher()
    request = _request("echo", b"\x00garbage")
    request = Request(**{**request.__dict__, "user": "eve"})
    await _handle(dispatcher, sent, request)
    assert orjson.loads(sent[0][0])["error"]["code"] == "unauthorized"


def test_error_info_round_trip_keeps_the_specific_class() -> None:
    error = orbit_mq.PayloadTooLarge("too big", {"size": 5})
    back = from_error_info(ErrorInfo.model_validate(to_error_info(error).model_dump()))
    assert type(back) is orbit_mq.PayloadTooLarge and back.details["size"] == 5
    unknown = ErrorInfo(code="conflict", message="x", details={"type": "SomethingElse"})
    assert type(from_error_info(unknown)) is orbit_mq.Conflict


def test_unknown_plugin_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"known plugins: .*sysinfo"):
        load_plugins(["sysinfo", "nope"])


def test_third_party_plugins_are_found_through_entry_points(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "thirdparty_plugin.py"
    package.write_text(
        textwrap.dedent(
            """
            from orbit_mq.workers.plugin import Plugin
            from orbit_mq.rpc import rpc

            class Greeter(Plugin):
                name = "greeter"

                @rpc
                async def greet(self, who: str) -> str:
                    return f"hello {who}"
            """
        )
    )
    dist = tmp_path / "thirdparty_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[orbit_mq.plugins]\ngreeter = thirdparty_plugin:Greeter\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "greeter" in known_plugins()
    (greeter,) = load_plugins(["greeter"])
    assert set(greeter.rpc_methods) >= {"greet", "health", "register_session"}
    sys.modules.pop("thirdparty_plugin", None)


def test_public_api_is_exactly_all() -> None:
    exported = {name for name in dir(orbit_mq) if not name.startswith("_")}
    modules = {module.name for module in pkgutil.iter_modules(orbit_mq.__path__)}
    assert exported - modules - {"workers", "cli", "schemas"} == set(orbit_mq.__all__) - {
        "__version__"
    }
    for name in orbit_mq.__all__:
        assert getattr(orbit_mq, name) is not None
    assert issubclass(orbit_mq.EndpointOffline, orbit_mq.OrbitError)
    assert all(
        issubclass(getattr(orbit_mq, name), orbit_mq.OrbitError)
        for name in orbit_mq.__all__
        if name.endswith(("Error", "Timeout", "NotFound", "Offline", "Refused", "Lost"))
    )


async def test_sync_methods_run_off_the_event_loop() -> None:
    dispatcher, sent = await _dispatcher()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    await _handle(dispatcher, sent, _request("blocking_sleep", b'{"seconds": 0.2}'))
    task.cancel()
    assert orjson.loads(sent[0][0])["ok"] is True
    assert ticks > 5  # the loop kept running while the call blocked its thread


def test_annotated_constraints_are_enforced_and_published() -> None:
    class Bounded(Plugin):
        name = "bounded_unit"

        @rpc
        async def page(self, limit: Annotated[int, Field(ge=1, le=10)] = 5) -> int:
            return limit

    spec = Bounded.rpc_methods["page"]
    assert spec.params_schema()["properties"]["limit"]["maximum"] == 10
    assert spec.params.model_validate({"limit": 10}).model_dump() == {"limit": 10}
    with pytest.raises(ValueError, match="less than or equal to 10"):
        spec.params.model_validate({"limit": 11})
    del Contract.known["bounded_unit"]


def test_an_endpoint_serves_by_default_what_works_on_its_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from orbit_mq.workers.plugins.queue_info import QueueInfo
    from orbit_mq.workers.registry import available_plugins

    monkeypatch.setattr(QueueInfo, "is_available", classmethod(lambda cls: False))
    names = [cls.name for cls in available_plugins()]
    assert {"sysinfo", "psij", "staging"} <= set(names) and "queue_info" not in names
    monkeypatch.setattr(QueueInfo, "is_available", classmethod(lambda cls: True))
    assert "queue_info" in [cls.name for cls in available_plugins()]


async def test_coalescing_keeps_big_calls_alone_and_batches_bounded() -> None:
    from orbit_mq.caller import BATCH_BYTES, SOLO_BYTES, Call, batches

    def call(size: int) -> Call:
        return Call(("ep", "p"), "m", b"x" * size, None, time.time() + 5, "id")

    small, big = SOLO_BYTES // 2, SOLO_BYTES + 1
    calls = [call(small), call(small), call(big), call(small)]
    assert [len(group) for group in batches(calls)] == [2, 1, 1]  # order kept
    many = [call(small) for _ in range(3 * BATCH_BYTES // small)]
    groups = batches(many)
    assert all(sum(len(c.body) for c in group) <= BATCH_BYTES for group in groups)
    assert [c for group in groups for c in group] == many


async def test_numbers_refuse_booleans() -> None:
    dispatcher, sent = await _dispatcher()
    await _handle(dispatcher, sent, _request("register_session", b'{"ttl": true}'))
    await _handle(dispatcher, sent, _request("echo", b'{"text": "a", "times": true}'))
    await _handle(dispatcher, sent, _request("echo", b'{"text": "a", "times": 2}'))
    replies = [orjson.loads(body) for body, _ in sent]
    assert [reply["ok"] for reply in replies] == [False, False, True]
    assert "not a boolean" in replies[0]["error"]["message"]
    assert replies[1]["error"]["details"]["errors"][0]["loc"] == "times"


def test_a_constrained_optional_number_keeps_its_rule_and_its_schema() -> None:
    from typing import Annotated

    from pydantic import Field, TypeAdapter, ValidationError

    from orbit_mq.numbers import no_booleans

    field = TypeAdapter(no_booleans(Annotated[int | None, Field(gt=0, description="size")]))
    assert field.json_schema() == {
        "anyOf": [{"exclusiveMinimum": 0, "type": "integer"}, {"type": "null"}],
        "description": "size",
    }
    assert field.validate_python(None) is None and field.validate_python(3) == 3
    for refused in (0, True):
        with pytest.raises(ValidationError):
            field.validate_python(refused)


async def test_one_session_rule_for_every_method() -> None:
    """A named session must be live and the caller's, whatever the method; one that needs a
    session refuses a call without one."""
    dispatcher, sent = await _dispatcher()
    await _handle(dispatcher, sent, _request("echo", b'{"text": "a"}', session="forged"))
    await _handle(dispatcher, sent, _request("health", session="forged"))
    await _handle(dispatcher, sent, _request("remember", b'{"value": "a"}'))
    errors = [orjson.loads(body)["error"]["details"]["type"] for body, _ in sent]
    assert errors == ["SessionNotFound"] * 3


def test_describe_marks_session_scoped_and_deduplicated_methods() -> None:
    from orbit_mq.workers.plugins.psij import PsiJ

    echo = {method.name: method for method in Echo.description().methods}
    assert (echo["remember"].session, echo["remember"].session_required) == (True, True)
    assert (echo["echo"].session, echo["echo"].session_required) == (False, False)
    assert echo["bump"].dedupe and not echo["echo"].dedupe
    submit = {method.name: method for method in PsiJ.description().methods}["submit_job"]
    assert (submit.session, submit.session_required, submit.dedupe) == (True, False, True)
