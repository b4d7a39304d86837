"""Sessions, events, subscriptions and presence over the real broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import TypeVar

import aio_pika
import pytest
from conftest import StartEndpoint, one_node

import orbit_mq
from orbit_mq.protocol import PresenceStatus
from orbit_mq.subscribe import durable_queue_name

T = TypeVar("T")


async def test_sessions_keep_state_and_expire_after_their_ttl(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str
) -> None:
    await start_endpoint()
    async with fabric.subscribe(f"{name}.echo.session_status") as statuses:
        echo = await fabric.endpoint(name).plugin("echo", ttl=0.5)
        assert await echo.remember(value="a") == ["a"]
        assert await echo.remember(value="b") == ["a", "b"]
        async with asyncio.timeout(10):
            seen = [event.data["status"] async for event in _take(statuses, 2)]
        assert seen == ["active", "expired"]
    expired = echo.session_id
    with pytest.raises(orbit_mq.SessionNotFound, match="unknown or expired"):
        await fabric.call(name, "echo", "remember", {"value": "c"}, session=expired)
    # The proxy opens a new session (the refused call did not run) and calls again in it.
    assert await echo.remember(value="c") == ["c"]
    assert echo.session_id not in (None, expired)


async def test_an_unknown_session_is_refused_by_every_method(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str
) -> None:
    await start_endpoint()
    for plugin, method in (("sysinfo", "homedir"), ("echo", "echo"), ("echo", "health")):
        params = {"text": "x"} if method == "echo" else {}
        with pytest.raises(orbit_mq.SessionNotFound, match="unknown or expired"):
            await fabric.call(name, plugin, method, params, session="forged")


async def test_session_is_required_where_the_method_declares_one(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str
) -> None:
    await start_endpoint()
    with pytest.raises(orbit_mq.SessionNotFound, match="needs a session"):
        await fabric.call(name, "echo", "remember", {"value": "x"})
    with pytest.raises(orbit_mq.SessionNotFound):
        await fabric.call(name, "echo", "remember", {"value": "x"}, session="forged")


async def test_unregister_session_and_health(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str
) -> None:
    await start_endpoint()
    echo = await fabric.endpoint(name).plugin("echo")
    health = await echo.health()
    assert health.healthy and health.sessions == 1 and health.version == "9.9.9"
    await echo.close()
    assert (await echo.health()).sessions == 0


async def test_events_arrive_in_order(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str
) -> None:
    await start_endpoint()
    async with fabric.subscribe(f"{name}.*.tick") as ticks:
        assert await fabric.call(name, "echo", "emit_many", {"count": 300}) == 300
        async with asyncio.timeout(20):
            seqs = [event.data["seq"] async for event in _take(ticks, 300)]
    assert seqs == list(range(1, 301))


async def test_durable_subscription_keeps_events_while_away(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str, settings: orbit_mq.Settings
) -> None:
    await start_endpoint()
    durable = f"test-{uuid.uuid4().hex[:8]}"
    try:
        async with fabric.subscribe(f"{name}.echo.tick", durable=durable):
            pass  # binds the named queue, then goes away
        await fabric.call(name, "echo", "emit_many", {"count": 5})
        async with fabric.subscribe(f"{name}.echo.tick", durable=durable) as again:
            async with asyncio.timeout(10):
                seqs = [event.data["seq"] async for event in _take(again, 5)]
        assert seqs == [1, 2, 3, 4, 5]
    finally:
        connection = await aio_pika.connect(one_node(settings.url))
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(durable_queue_name(fabric.user, durable))


async def test_presence_online_heartbeat_offline(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str
) -> None:
    async with fabric.presence(f"{name}.*") as presence:
        endpoint = await start_endpoint()
        async with asyncio.timeout(10):
            first, second = [info async for info in _take(presence, 2)]
        assert first.status == PresenceStatus.ONLINE
        assert second.status == PresenceStatus.HEARTBEAT
        assert {p.name for p in second.plugins} == {"sysinfo", "echo", "control"}
        assert second.heartbeat_interval == 0.5 and second.uptime >= first.uptime
        await endpoint.stop()
        async with asyncio.timeout(10):
            async for info in presence:
                if info.status == PresenceStatus.OFFLINE:
                    break


async def test_graceful_stop_finishes_in_flight_calls(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str
) -> None:
    endpoint = await start_endpoint()
    call = asyncio.create_task(fabric.call(name, "echo", "sleep", {"seconds": 1.0}))
    await asyncio.wait_for(endpoint.plugins["echo"].sleeping.wait(), 10)  # type: ignore[attr-defined]
    await endpoint.stop(grace=10)
    assert await call == 1.0


async def _take(subscription: AsyncIterator[T], count: int) -> AsyncIterator[T]:
    """The next `count` messages of a subscription."""
    taken = 0
    async for item in subscription:
        yield item
        taken += 1
        if taken == count:
            return


async def test_closing_a_durable_subscription_leaves_nothing_behind(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str, settings: orbit_mq.Settings
) -> None:
    """After close() nothing consumes the queue and nothing stays unacknowledged: a new
    subscription under the same name gets exactly what the first did not deliver."""
    await start_endpoint()
    durable = f"test-{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect(one_node(settings.url))
    try:
        async with fabric.subscribe(f"{name}.echo.tick", durable=durable) as first:
            await fabric.call(name, "echo", "emit_many", {"count": 10})
            async with asyncio.timeout(10):
                taken = [event.data["seq"] async for event in _take(first, 4)]
        channel = await connection.channel()
        queue = await channel.declare_queue(durable_queue_name(fabric.user, durable), passive=True)
        assert queue.declaration_result.consumer_count == 0
        assert queue.declaration_result.message_count == 6  # none stranded unacked
        async with fabric.subscribe(f"{name}.echo.tick", durable=durable) as second:
            async with asyncio.timeout(10):
                rest = [event.data["seq"] async for event in _take(second, 6)]
        assert (taken, rest) == ([1, 2, 3, 4], [5, 6, 7, 8, 9, 10])
    finally:
        channel = await connection.channel()
        await channel.queue_delete(durable_queue_name(fabric.user, durable))
        await connection.close()
