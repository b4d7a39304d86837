"""Calls through the SDK to in-process endpoints over the real broker."""

from __future__ import annotations

import asyncio
import os

import aio_pika
import pytest
from conftest import StartEndpoint, one_node
from echo_plugin import Point, ThingNotFound

import orbit_mq
from orbit_mq.protocol import request_queue
from orbit_mq.workers.plugins.sysinfo import Metrics

HOME = os.path.expanduser("~")


async def test_round_trip_with_typed_results(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str
) -> None:
    await start_endpoint()
    sysinfo = await fabric.endpoint(name).plugin("sysinfo")
    assert sysinfo.session_id
    assert await sysinfo.homedir() == HOME
    metrics = await sysinfo.metrics()
    assert isinstance(metrics, Metrics)
    assert metrics.cpu.logical > 0 and metrics.memory.total > 0

    echo = await fabric.endpoint(name).plugin("echo", session=False)
    assert await echo.echo(text="hi", times=3) == ["hi", "hi", "hi"]
    assert await echo.echo("positional") == ["positional"]
    assert await echo.add(point=Point(x=1, y=2), dx=5) == Point(x=6, y=2)


async def test_caller_identity_and_message_id_reach_the_plugin(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str
) -> None:
    await start_endpoint()
    who = await fabric.call(name, "echo", "whoami", message_id="my-idempotency-key")
    assert who == {"user": fabric.user, "message_id": "my-idempotency-key"}


async def test_many_concurrent_calls_share_one_connection(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str
) -> None:
    await start_endpoint()
    echo = await fabric.endpoint(name).plugin("echo", session=False)
    texts = [f"call-{i}" for i in range(300)]
    results = await asyncio.gather(*(echo.echo(text=t) for t in texts))
    assert results == [[t] for t in texts]


async def test_a_burst_of_calls_checks_the_endpoint_once(
    start_endpoint: StartEndpoint,
    fabric: orbit_mq.Fabric,
    name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Calls that find no recent sign of the endpoint ask the broker whether its queue is
    consumed: a burst asks once (a channel and a passive declare each cost the broker more
    than the call), not once per call."""
    await start_endpoint()
    echo = await fabric.endpoint(name).plugin("echo", session=False)
    checks, check = [], fabric._check

    async def counted(endpoint: str, plugin: str, wait: float) -> bool:
        checks.append(plugin)
        return await check(endpoint, plugin, wait)

    monkeypatch.setattr(fabric, "_check", counted)
    fabric._served.clear()  # as after a reconnection: the next calls must check
    texts = [f"call-{i}" for i in range(200)]
    assert await asyncio.gather(*(echo.echo(text=t) for t in texts)) == [[t] for t in texts]
    assert checks == ["echo"]


async def test_a_slow_call_does_not_hold_up_fast_ones(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str
) -> None:
    await start_endpoint()
    echo = await fabric.endpoint(name).plugin("echo", session=False)
    slow = asyncio.create_task(echo.sleep(seconds=3))
    blocking = asyncio.create_task(echo.blocking_sleep(seconds=3))
    fast = await asyncio.gather(*(echo.echo(text=str(i)) for i in range(20)))
    assert len(fast) == 20
    assert not slow.done() and not blocking.done()
    assert await slow == 3
    assert (await blocking).startswith("orbit-")  # ran in the endpoint's worker threads


async def test_timeout_raises_call_timeout(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str
) -> None:
    await start_endpoint()
    with pytest.raises(orbit_mq.CallTimeout):
        await fabric.call(name, "echo", "sleep", {"seconds": 5}, timeout=0.3)


async def test_offline_endpoint_fails_fast(
    start_endpoint: StartEndpoint, settings: orbit_mq.Settings, name: str
) -> None:
    endpoint = await start_endpoint()
    await endpoint.stop()
    async with orbit_mq.Fabric(settings) as fabric:
        # A long call timeout, a short test deadline: only failing fast passes.
        async with asyncio.timeout(5):
            with pytest.raises(orbit_mq.EndpointOffline, match="not online"):
                await fabric.call(name, "sysinfo", "homedir", timeout=60)


async def test_wait_keeps_the_request_until_the_endpoint_comes(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str, settings: orbit_mq.Settings
) -> None:
    call = asyncio.create_task(
        fabric.call(name, "echo", "echo", {"text": "later"}, wait=True, timeout=30)
    )
    await _wait_for_queued(settings.url, request_queue(name, "echo"), count=1)
    assert not call.done()
    await start_endpoint()
    assert await asyncio.wait_for(call, 20) == ["later"]


async def _wait_for_queued(url: str, queue: str, count: int, timeout: float = 10) -> None:
    connection = await aio_pika.connect(one_node(url))
    async with connection, asyncio.timeout(timeout):
        channel = await connection.channel()
        while True:
            try:
                declared = await channel.declare_queue(queue, passive=True)
            except aio_pika.exceptions.ChannelNotFoundEntity:
                channel = await connection.channel()
                continue
            if declared.declaration_result.message_count >= count:
                return


async def test_unknown_endpoint_and_plugin(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str
) -> None:
    await start_endpoint()
    with pytest.raises(orbit_mq.EndpointNotFound, match=f"not known.*online:.*{name}"):
        await fabric.call(f"{name}-nope", "sysinfo", "homedir")
    with pytest.raises(orbit_mq.EndpointNotFound, match="does not serve plugin 'nope'"):
        await fabric.call(name, "nope", "homedir")


async def test_unknown_method(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str
) -> None:
    await start_endpoint()
    with pytest.raises(orbit_mq.MethodNotFound, match="no method 'nope'") as caught:
        await fabric.call(name, "sysinfo", "nope")
    assert "homedir" in caught.value.details["methods"]


async def test_remote_errors_map_to_typed_exceptions(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str
) -> None:
    await start_endpoint()
    echo = await fabric.endpoint(name).plugin("echo", session=False)
    with pytest.raises(orbit_mq.Conflict, match="already there") as conflict:
        await echo.fail(kind="conflict")
    assert conflict.value.details["thing"] == 1
    with pytest.raises(ThingNotFound) as domain:
        await echo.fail(kind="domain")
    assert isinstance(domain.value, orbit_mq.NotFound) and domain.value.code == "not_found"
    with pytest.raises(orbit_mq.InternalError, match="ValueError: boom"):
        await echo.fail(kind="other")


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"text": ["not", "a", "string"]}, "text"),
        ({}, "text: Field required"),
        ({"text": "x", "times": "many"}, "times"),
        ({"text": "x", "surprise": 1}, "surprise"),
    ],
)
async def test_wrong_parameters_are_invalid_requests(
    start_endpoint: StartEndpoint,
    fabric: orbit_mq.Fabric,
    name: str,
    params: dict[str, object],
    fragment: str,
) -> None:
    await start_endpoint()
    with pytest.raises(orbit_mq.InvalidRequest, match=fragment):
        await fabric.call(name, "echo", "echo", params)
    assert await fabric.call(name, "echo", "echo", {"text": "still serving"}) == ["still serving"]


async def test_proxy_checks_parameters_before_sending(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str
) -> None:
    await start_endpoint()
    echo = await fabric.endpoint(name).plugin("echo", session=False)
    with pytest.raises(orbit_mq.InvalidArguments, match="times") as refused:
        await echo.echo(text="x", times="many")
    assert not isinstance(refused.value, orbit_mq.RemoteError)  # found here: nothing was sent


async def test_oversized_request_is_refused_before_sending(fabric: orbit_mq.Fabric) -> None:
    huge = "x" * (fabric.settings.max_message_size + 1)
    with pytest.raises(orbit_mq.RequestTooLarge, match="max_message_size"):
        await fabric.call("anywhere", "echo", "echo", {"text": huge})


async def test_endpoints_lists_live_endpoints_with_plugins(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str
) -> None:
    await start_endpoint()
    infos = {info.endpoint: info for info in await fabric.endpoints()}
    assert name in infos
    plugins = {plugin.name: plugin for plugin in infos[name].plugins}
    assert set(plugins) == {"sysinfo", "echo", "control"}
    assert plugins["echo"].version == "9.9.9" and "echo" in plugins["echo"].methods
    assert infos[name].user == fabric.user and infos[name].pid == os.getpid()
    assert (await fabric.endpoint(name).info()).endpoint == name
