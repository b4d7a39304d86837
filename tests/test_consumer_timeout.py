"""Long calls against a broker with a short `consumer_timeout`.

RabbitMQ closes a channel whose delivery stays unacknowledged longer than `consumer_timeout`
(checked on every channel tick) and delivers all its unacknowledged requests again. The
endpoint acks every request within `ack_within` s, so a call longer than the timeout answers
once and runs once. The control test shows what happens without that: the broker closes the
channel, the endpoint logs why, and the call runs a second time.

The node is the tests' own (tests/broker_node.py): consumer_timeout 3 s, ticks every 1 s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
from broker_node import BrokerNode, usable
from echo_plugin import Echo

import orbit_mq
from orbit_mq.config import Settings
from orbit_mq.workers.endpoint import Endpoint

pytestmark = pytest.mark.timeout(180)

CONSUMER_TIMEOUT = 3.0
CALL = 7.0  # s: past the timeout and the tick that notices it


@pytest.fixture(scope="module")
def short_timeout_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    reason = usable()
    if reason is not None:
        pytest.skip(f"a broker node of the test's own {reason}")
    node = BrokerNode(
        tmp_path_factory.mktemp("broker-node"),
        config=[f"consumer_timeout = {int(CONSUMER_TIMEOUT * 1000)}"],
        advanced="[{rabbit, [{channel_tick_interval, 1000}]}].",
    )
    yield node.start()
    node.stop()


@asynccontextmanager
async def _served(
    url: str, settings: Settings, name: str, ack_within: float
) -> AsyncIterator[tuple[Endpoint, Echo, orbit_mq.Fabric]]:
    """An echo endpoint on the short-timeout node, and a fabric connected to it."""
    settings = settings.model_copy(update={"url": url, "ack_within": ack_within, "timeout": 30})
    endpoint = Endpoint(name, [Echo], settings)
    await endpoint.start()
    try:
        async with orbit_mq.Fabric(settings) as fabric:
            echo = endpoint.plugins["echo"]
            assert isinstance(echo, Echo)
            yield endpoint, echo, fabric
            assert await fabric.call(name, "echo", "echo", {"text": "still"}) == ["still"]
    finally:
        await endpoint.stop(grace=5)


async def _slow_runs(echo: Echo, count: int, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while echo.slow_runs < count or not echo.slow_finished.is_set():
            echo.slow_finished.clear()
            await echo.slow_finished.wait()


async def test_a_call_longer_than_the_consumer_timeout_answers_once_and_runs_once(
    short_timeout_url: str, settings: Settings, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with _served(short_timeout_url, settings, name, ack_within=1.0) as served:
        endpoint, echo, fabric = served
        assert await fabric.call(name, "echo", "slow", {"seconds": CALL}) == 1
        assert echo.slow_runs == 1
        assert endpoint._lanes["echo"].opened == 1  # the broker never closed its channel
    assert "delivery acknowledgement" not in caplog.text


async def test_without_the_early_ack_the_broker_closes_the_channel_and_it_is_logged(
    short_timeout_url: str, settings: Settings, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with _served(short_timeout_url, settings, name, ack_within=60.0) as served:
        endpoint, echo, fabric = served
        # The first run still answers (the call is the endpoint's, not the channel's)…
        assert await fabric.call(name, "echo", "slow", {"seconds": CALL}) == 1
        await _slow_runs(echo, 2)  # … but the broker delivered it again: it ran twice
        assert endpoint._lanes["echo"].opened >= 2
    closed = [r for r in caplog.records if "closed the channel" in r.getMessage()]
    assert closed and "delivery acknowledgement" in closed[0].getMessage()
