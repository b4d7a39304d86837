"""Bad input by hand (aio-pika, no SDK): every case gets a structured error or is dropped,
is acked, and the endpoint keeps serving."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import orjson
import pytest
from conftest import StartEndpoint, one_node

import orbit_mq
from orbit_mq.protocol import request_queue


class RawClient:
    """Publishes hand-made requests to orbit.rpc and reads direct replies."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel) -> None:
        self.channel = channel
        self.replies: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()

    async def start(self) -> None:
        queue = await self.channel.get_queue("amq.rabbitmq.reply-to", ensure=False)
        await queue.consume(self.replies.put, no_ack=True)

    async def send(self, key: str, body: bytes, **properties: Any) -> str:
        correlation_id = uuid.uuid4().hex
        exchange = await self.channel.get_exchange("orbit.rpc", ensure=False)
        message = aio_pika.Message(
            body,
            correlation_id=correlation_id,
            **{"reply_to": "amq.rabbitmq.reply-to", "user_id": "guest", **properties},
        )
        await exchange.publish(message, routing_key=key, mandatory=True)
        return correlation_id

    async def reply(self, correlation_id: str, timeout: float = 10) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                message = await self.replies.get()
                if message.correlation_id == correlation_id:
                    result: dict[str, Any] = orjson.loads(message.body)
                    return result


@pytest.fixture
async def raw(settings: orbit_mq.Settings) -> AsyncIterator[RawClient]:
    connection = await aio_pika.connect(one_node(settings.url))
    async with connection:
        client = RawClient(await connection.channel())
        await client.start()
        yield client


async def _still_serves(raw: RawClient, name: str) -> None:
    cid = await raw.send(f"{name}.sysinfo", b"{}", type="homedir")
    assert (await raw.reply(cid))["ok"] is True


@pytest.mark.parametrize(
    ("plugin", "method", "body", "headers", "code", "fragment"),
    [
        ("sysinfo", "homedir", b"\x00not json{", {}, "invalid_request", "not valid JSON"),
        ("sysinfo", "homedir", b"[1, 2]", {}, "invalid_request", "JSON object"),
        ("sysinfo", "homedir", b'"text"', {}, "invalid_request", "JSON object"),
        ("sysinfo", "no_such_method", b"{}", {}, "not_found", "no method"),
        ("sysinfo", None, b"{}", {}, "not_found", "no method"),
        ("echo", "echo", b'{"text": 5}', {}, "invalid_request", "text"),
        ("sysinfo", "homedir", b"{}", {"orbit-protocol": "3"}, "invalid_request", "protocol"),
        ("echo", "emit_many", b'{"count": 1}', {"orbit-deadline": 1}, "timeout", "not executed"),
        ("echo", "orbit.batch", b'{"calls": "nope"}', {}, "invalid_request", "orbit.batch"),
        ("echo", "orbit.batch", b'{"calls": []}', {}, "invalid_request", "orbit.batch"),
    ],
)
async def test_malformed_requests_get_error_replies(
    start_endpoint: StartEndpoint,
    raw: RawClient,
    name: str,
    plugin: str,
    method: str | None,
    body: bytes,
    headers: dict[str, Any],
    code: str,
    fragment: str,
) -> None:
    await start_endpoint()
    cid = await raw.send(f"{name}.{plugin}", body, type=method, headers=headers)
    reply = await raw.reply(cid)
    assert reply["ok"] is False
    assert reply["error"]["code"] == code
    assert fragment in reply["error"]["message"]
    await _still_serves(raw, name)


async def test_request_without_reply_to_is_dropped_and_acked(
    start_endpoint: StartEndpoint, raw: RawClient, name: str, settings: orbit_mq.Settings
) -> None:
    await start_endpoint()
    exchange = await raw.channel.get_exchange("orbit.rpc", ensure=False)
    await exchange.publish(
        aio_pika.Message(b"{}", type="homedir", user_id="guest"), routing_key=f"{name}.sysinfo"
    )
    await _still_serves(raw, name)
    queue = await raw.channel.declare_queue(request_queue(name, "sysinfo"), passive=True)
    assert queue.declaration_result.message_count == 0  # acked, not requeued


async def test_oversized_request_is_refused(
    start_endpoint: StartEndpoint, raw: RawClient, name: str
) -> None:
    await start_endpoint(max_message_size=1024)
    cid = await raw.send(f"{name}.echo", orjson.dumps({"text": "x" * 2000}), type="echo")
    reply = await raw.reply(cid)
    assert reply["error"]["code"] == "invalid_request"
    assert reply["error"]["details"]["type"] == "PayloadTooLarge"
    await _still_serves(raw, name)


async def test_callers_outside_the_allow_list_are_unauthorized(
    start_endpoint: StartEndpoint, raw: RawClient, name: str, fabric: orbit_mq.Fabric
) -> None:
    await start_endpoint(allowed_users=["alice"])
    cid = await raw.send(f"{name}.sysinfo", b"{}", type="homedir")
    reply = await raw.reply(cid)
    assert reply["error"]["code"] == "unauthorized"
    assert "'guest' may not use this endpoint" in reply["error"]["message"]
    with pytest.raises(orbit_mq.Unauthorized):
        await fabric.call(name, "sysinfo", "homedir")


async def test_request_without_user_id_is_unauthorized(
    start_endpoint: StartEndpoint, raw: RawClient, name: str
) -> None:
    await start_endpoint()
    cid = await raw.send(f"{name}.sysinfo", b"{}", type="homedir", user_id=None)
    reply = await raw.reply(cid)
    assert reply["error"]["code"] == "unauthorized"
    assert "user_id" in reply["error"]["message"]


async def test_forged_user_id_is_stopped_by_the_broker(
    start_endpoint: StartEndpoint, settings: orbit_mq.Settings, name: str
) -> None:
    await start_endpoint()
    connection = await aio_pika.connect(one_node(settings.url))
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange("orbit.rpc", ensure=False)
        with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed, match="user_id"):
            await exchange.publish(
                aio_pika.Message(b"{}", type="homedir", user_id="mallory"),
                routing_key=f"{name}.sysinfo",
            )


async def test_refused_batch_fails_every_call_in_it(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str
) -> None:
    await start_endpoint(allowed_users=["alice"])
    results = await asyncio.gather(
        *(fabric.call(name, "echo", "echo", {"text": str(i)}, timeout=20) for i in range(5)),
        return_exceptions=True,
    )
    assert all(isinstance(result, orbit_mq.Unauthorized) for result in results), results


async def test_reply_to_other_than_direct_reply_to_is_not_answered(
    start_endpoint: StartEndpoint, raw: RawClient, name: str, settings: orbit_mq.Settings
) -> None:
    await start_endpoint()
    victim = await raw.channel.declare_queue(exclusive=True)
    cid = await raw.send(f"{name}.sysinfo", b"{}", type="homedir", reply_to=victim.name)
    await _still_serves(raw, name)
    assert (
        await raw.channel.declare_queue(victim.name, passive=True)
    ).declaration_result.message_count == 0
    assert raw.replies.empty(), cid
