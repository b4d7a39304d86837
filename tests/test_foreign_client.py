"""A client written from docs/protocol.md alone: plain pika, every name spelled out literally.

Nothing below imports orbit_mq's protocol constants: if a name, property or body shape in the
endpoint drifts from the document, these tests fail. The endpoint runs in-process on the test's
event loop, so each pika scenario runs in a worker thread (`asyncio.to_thread`), and every wait
is bounded by a deadline.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pika
import pika.exceptions
import pytest
from conftest import StartEndpoint, one_node
from pika.adapters.blocking_connection import BlockingChannel

from orbit_mq.config import Settings

# The contract, as docs/protocol.md writes it.
RPC = "orbit.rpc"
EVENTS = "orbit.events"
TOPOLOGY = "orbit.topology"
REPLY_TO = "amq.rabbitmq.reply-to"
DISCOVER_KEY = "_orbit.discover"
JSON = "application/json"
PROTOCOL = "2"
WAIT = 10.0  # seconds, the bound of every wait

SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"

try:
    import jsonschema  # type: ignore[import-untyped, import-not-found, unused-ignore]
except ImportError:  # pragma: no cover - the checks below still run, without schema validation
    jsonschema = None


def check(instance: Any, schema: str) -> Any:
    """Validate a received body against schemas/<schema>.json where jsonschema is installed."""
    if jsonschema is not None:
        document = json.loads((SCHEMAS / f"{schema}.json").read_text())
        jsonschema.Draft202012Validator(document).validate(instance)
    return instance


class Client:
    """A minimal foreign client: one connection, one channel with publisher confirms, direct
    reply-to consumed (no-ack) on that same channel before anything is published."""

    def __init__(self, url: str) -> None:
        self.user = unquote(urlsplit(url).username or "guest")
        self.connection = pika.BlockingConnection(pika.URLParameters(one_node(url)))
        self.channel: BlockingChannel = self.connection.channel()
        self.channel.confirm_delivery()
        self.replies: dict[str, list[tuple[pika.BasicProperties, bytes]]] = {}
        self.channel.basic_consume(REPLY_TO, self._on_reply, auto_ack=True)

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()

    def _on_reply(self, _ch: Any, _m: Any, props: pika.BasicProperties, body: bytes) -> None:
        self.replies.setdefault(props.correlation_id, []).append((props, body))

    def publish(
        self,
        key: str,
        method: str,
        body: bytes,
        *,
        user_id: str | None = "",
        session: str | None = None,
        protocol: str = PROTOCOL,
        deadline_ms: int | None = None,
        expiration_ms: int = 10_000,
    ) -> str:
        """Publish one request (mandatory) and return its correlation_id."""
        correlation_id = uuid.uuid4().hex
        now_ms = int(time.time() * 1000)
        headers: dict[str, Any] = {
            "orbit-protocol": protocol,
            "orbit-deadline": deadline_ms if deadline_ms is not None else now_ms + expiration_ms,
        }
        if session:
            headers["orbit-session"] = session
        properties = pika.BasicProperties(
            content_type=JSON,
            correlation_id=correlation_id,
            reply_to=REPLY_TO,
            message_id=uuid.uuid4().hex,
            type=method,
            user_id=self.user if user_id == "" else user_id,
            expiration=str(expiration_ms),
            headers=headers,
        )
        self.channel.basic_publish(RPC, key, body, properties, mandatory=True)
        return correlation_id

    def wait_for(self, done: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{what}: nothing within {timeout} s")
            self.connection.process_data_events(time_limit=min(remaining, 0.1))

    def reply(self, correlation_id: str) -> tuple[pika.BasicProperties, Any]:
        self.wait_for(lambda: correlation_id in self.replies, f"reply {correlation_id}")
        props, body = self.replies[correlation_id].pop(0)
        assert props.content_type == JSON
        return props, json.loads(body)

    def call(
        self,
        endpoint: str,
        plugin: str,
        method: str,
        params: dict[str, Any] | None = None,
        **kw: Any,
    ) -> Any:
        body = json.dumps(params or {}).encode()
        _, reply = self.reply(self.publish(f"{endpoint}.{plugin}", method, body, **kw))
        return check(reply, "reply")

    def listen(self, exchange: str, key: str) -> list[dict[str, Any]]:
        """Bind a private queue to `exchange` with `key`; returns the list messages land in."""
        queue = self.channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
        self.channel.queue_bind(queue, exchange, routing_key=key)
        received: list[dict[str, Any]] = []

        def on_message(_ch: Any, _m: Any, props: pika.BasicProperties, body: bytes) -> None:
            assert props.content_type == JSON
            received.append(json.loads(body))

        self.channel.basic_consume(queue, on_message, auto_ack=True)
        return received


async def run(settings: Settings, scenario: Callable[[Client], None]) -> None:
    def in_thread() -> None:
        client = Client(settings.url)
        try:
            scenario(client)
        finally:
            client.close()

    await asyncio.to_thread(in_thread)


def error_code(reply: dict[str, Any]) -> str:
    assert reply["ok"] is False, reply
    code: str = reply["error"]["code"]
    return code


async def test_call_homedir(start_endpoint: StartEndpoint, settings: Settings, name: str) -> None:
    await start_endpoint()

    def scenario(client: Client) -> None:
        reply = client.call(name, "sysinfo", "homedir")
        assert reply["ok"] is True
        assert isinstance(reply["result"], str) and reply["result"].startswith("/")

    await run(settings, scenario)


async def test_register_session_publishes_session_status(
    start_endpoint: StartEndpoint, settings: Settings, name: str
) -> None:
    await start_endpoint()

    def scenario(client: Client) -> None:
        # protocol 2: the key's last word is the owner's user name (plain here: no character
        # in it needs encoding)
        events = client.listen(EVENTS, f"{name}.sysinfo.session_status.{client.user}")
        reply = client.call(name, "sysinfo", "register_session", {"ttl": 30})
        session = check(reply["result"], "session-info")
        assert session["status"] == "active" and session["user"] == client.user
        client.wait_for(lambda: bool(events), "session_status event")
        event = check(events[0], "event")
        assert (event["endpoint"], event["plugin"], event["topic"]) == (
            name,
            "sysinfo",
            "session_status",
        )
        assert check(event["data"], "session-info")["session_id"] == session["session_id"]
        # The session goes in the orbit-session header; health counts it.
        health = client.call(name, "sysinfo", "health", session=session["session_id"])
        assert check(health["result"], "health")["sessions"] == 1
        closed = client.call(
            name, "sysinfo", "unregister_session", {"session_id": session["session_id"]}
        )
        assert closed["result"]["status"] == "closed"
        client.wait_for(lambda: len(events) == 2, "closed session_status event")
        assert events[1]["data"]["status"] == "closed"

    await run(settings, scenario)


async def test_presence_heartbeat(
    start_endpoint: StartEndpoint, settings: Settings, name: str
) -> None:
    await start_endpoint()

    def scenario(client: Client) -> None:
        beats = client.listen(TOPOLOGY, f"{name}.heartbeat")
        client.wait_for(lambda: bool(beats), "heartbeat")
        info = check(beats[0], "endpoint-info")
        assert info["endpoint"] == name and info["status"] == "heartbeat"
        assert {"sysinfo", "echo"} <= {plugin["name"] for plugin in info["plugins"]}

    await run(settings, scenario)


async def test_garbage_body_is_invalid_request_and_the_endpoint_keeps_serving(
    start_endpoint: StartEndpoint, settings: Settings, name: str
) -> None:
    await start_endpoint()

    def scenario(client: Client) -> None:
        _, reply = client.reply(client.publish(f"{name}.sysinfo", "homedir", b"\x00not json{"))
        assert error_code(check(reply, "reply")) == "invalid_request"
        assert reply["error"]["details"]["type"] == "InvalidRequest"
        assert client.call(name, "sysinfo", "homedir")["ok"] is True

    await run(settings, scenario)


async def test_unknown_method_is_not_found(
    start_endpoint: StartEndpoint, settings: Settings, name: str
) -> None:
    await start_endpoint()

    def scenario(client: Client) -> None:
        reply = client.call(name, "sysinfo", "no_such_method")
        assert error_code(reply) == "not_found"
        assert reply["error"]["details"]["type"] == "MethodNotFound"
        assert "homedir" in reply["error"]["details"]["methods"]

    await run(settings, scenario)


async def test_request_without_user_id_is_unauthorized(
    start_endpoint: StartEndpoint, settings: Settings, name: str
) -> None:
    await start_endpoint()

    def scenario(client: Client) -> None:
        assert error_code(client.call(name, "sysinfo", "homedir", user_id=None)) == "unauthorized"

    await run(settings, scenario)


async def test_unknown_endpoint_is_returned_unroutable(settings: Settings, name: str) -> None:
    def scenario(client: Client) -> None:
        with pytest.raises(pika.exceptions.UnroutableError):
            client.publish(f"{name}-nowhere.sysinfo", "homedir", b"{}")

    await run(settings, scenario)


async def test_other_protocol_major_and_expired_deadline(
    start_endpoint: StartEndpoint, settings: Settings, name: str
) -> None:
    await start_endpoint()

    def scenario(client: Client) -> None:
        reply = client.call(name, "sysinfo", "homedir", protocol="3")
        assert error_code(reply) == "invalid_request"
        assert reply["error"]["details"]["supported"] == ["1", PROTOCOL]
        # requests did not change from 1 to 2: a protocol 1 client is still answered
        assert client.call(name, "sysinfo", "homedir", protocol="1.7")["ok"] is True
        assert client.call(name, "sysinfo", "homedir", protocol="2.1")["ok"] is True
        past = int(time.time() * 1000) - 1000
        assert error_code(client.call(name, "sysinfo", "homedir", deadline_ms=past)) == "timeout"

    await run(settings, scenario)


async def test_discovery_and_serving_check(
    start_endpoint: StartEndpoint, settings: Settings, name: str
) -> None:
    await start_endpoint()

    def scenario(client: Client) -> None:
        properties = pika.BasicProperties(
            content_type=JSON,
            correlation_id="discover-1",
            reply_to=REPLY_TO,
            type="orbit.discover",
            user_id=client.user,
            expiration="2000",
            headers={"orbit-protocol": PROTOCOL},
        )
        client.channel.basic_publish(RPC, DISCOVER_KEY, b"{}", properties)
        answers = client.replies.setdefault("discover-1", [])  # other endpoints answer too

        def mine() -> list[dict[str, Any]]:
            bodies = [json.loads(body) for _, body in answers]
            return [body for body in bodies if body["endpoint"] == name]

        client.wait_for(lambda: bool(mine()), "discovery answer")
        info = check(mine()[0], "endpoint-info")
        assert info["status"] == "online" and info["protocol"] == PROTOCOL
        # A passive declare of the plugin queue: consumer_count > 0 means it is served.
        declared = client.channel.queue_declare(f"orbit.ep.{name}.sysinfo", passive=True)
        assert declared.method.consumer_count >= 1

    await run(settings, scenario)

    def missing_queue(client: Client) -> None:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
            client.channel.queue_declare(f"orbit.ep.{name}.nothing", passive=True)
        assert closed.value.reply_code == 404

    await run(settings, missing_queue)


async def test_batch_replies_cover_every_call(
    start_endpoint: StartEndpoint, settings: Settings, name: str
) -> None:
    await start_endpoint()

    def scenario(client: Client) -> None:
        calls = [
            {"id": "a", "method": "echo", "params": {"text": "hi", "times": 2}},
            {"id": "b", "method": "nope", "params": {}},
            {"id": "c", "method": "sleep", "params": {"seconds": 0.2}},
        ]
        body = json.dumps(check({"calls": calls}, "batch-request")).encode()
        correlation_id = client.publish(f"{name}.echo", "orbit.batch", body)
        items: dict[str, dict[str, Any]] = {}

        def all_in() -> bool:
            for props, raw in client.replies.pop(correlation_id, []):
                assert props.type == "orbit.batch"
                for item in check(json.loads(raw), "batch-reply")["replies"]:
                    items[item["id"]] = item
            return len(items) == len(calls)

        client.wait_for(all_in, "batch replies")
        assert items["a"]["ok"] is True and items["a"]["result"] == ["hi", "hi"]
        assert items["b"]["ok"] is False and items["b"]["error"]["code"] == "not_found"
        assert items["c"]["result"] == 0.2

    await run(settings, scenario)


async def test_describe_answers_what_schemas_plugins_holds(
    start_endpoint: StartEndpoint, settings: Settings, name: str
) -> None:
    await start_endpoint()

    def scenario(client: Client) -> None:
        described = client.call(name, "sysinfo", "describe")["result"]
        published = json.loads((SCHEMAS / "plugins" / "sysinfo.json").read_text())
        assert described == published

    await run(settings, scenario)
