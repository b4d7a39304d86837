"""A broker restart mid-run: endpoints and clients reconnect, and requests the broker kept
(persistent, in durable queues) are served afterwards.

Runs where the test can restart the broker itself (root, rabbitmqctl, broker on this host).
"""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
import pytest
from broker_control import ensure_running, restart, restartable
from conftest import StartEndpoint
from test_rpc import _wait_for_queued

import orbit_mq
from orbit_mq.protocol import PresenceStatus, request_queue
from orbit_mq.subscribe import durable_queue_name

pytestmark = pytest.mark.broker_restart


async def test_endpoint_and_client_survive_a_broker_restart(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str, settings: orbit_mq.Settings
) -> None:
    if not restartable(settings.url):
        pytest.skip("needs root, rabbitmqctl and a broker on this host")
    absent = f"{name}-later"
    durable = f"restart-{uuid.uuid4().hex[:8]}"
    await start_endpoint()
    assert await fabric.call(name, "echo", "echo", {"text": "before"}) == ["before"]
    async with fabric.subscribe(f"{absent}.echo.tick", durable=durable):
        pass  # a durable queue that collects the absent endpoint's events
    # A request for an endpoint that is not running yet: persistent, in its durable queue.
    kept = asyncio.create_task(
        fabric.call(absent, "echo", "emit_many", {"count": 1}, wait=True, timeout=120)
    )
    await _wait_for_queued(settings.url, request_queue(absent, "echo"), count=1)

    async with fabric.presence(f"{name}.online") as presence:
        try:
            await restart()
        finally:
            await ensure_running()
        with pytest.raises(orbit_mq.ConnectionLost):
            await asyncio.wait_for(kept, 30)  # its reply channel died with the connection
        async with asyncio.timeout(60):
            async for info in presence:  # the endpoint announces itself after reconnecting
                if info.status == PresenceStatus.ONLINE:
                    break

    assert await fabric.call(name, "echo", "echo", {"text": "after"}) == ["after"]
    try:
        await start_endpoint(endpoint=absent)
        async with fabric.subscribe(f"{absent}.echo.tick", durable=durable) as ticks:
            async with asyncio.timeout(20):
                event = await anext(aiter(ticks))
        assert event.endpoint == absent and event.data == {"seq": 1}
    finally:
        connection = await aio_pika.connect(settings.url)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(durable_queue_name(fabric.user, durable))
