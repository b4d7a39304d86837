"""orbit_mq.testing: plugins tested through the real dispatcher, without a broker."""

from __future__ import annotations

import pytest
from echo_plugin import Echo, Point, ThingNotFound

import orbit_mq
from orbit_mq.contracts.sysinfo import Metrics, SysInfo
from orbit_mq.testing import PluginHarness
from orbit_mq.workers.plugins.sysinfo import SysInfo as SysInfoPlugin


async def test_a_plugin_through_the_dispatcher() -> None:
    async with PluginHarness(Echo, user="ada") as harness:
        echo = await harness.proxy(session=True)
        assert await echo.echo(text="hi", times=2) == ["hi", "hi"]
        assert await echo.add(point=Point(x=1, y=2), dx=3) == Point(x=4, y=2)  # parsed
        assert (await echo.whoami())["user"] == "ada"
        assert await echo.remember(value="a") == ["a"]  # the session's state
        with pytest.raises(ThingNotFound):  # a domain error, mapped back
            await echo.fail(kind="domain")
        with pytest.raises(orbit_mq.InvalidArguments):  # checked before "sending"
            await echo.echo(text="x", times="many")
        with pytest.raises(orbit_mq.InvalidRequest, match="times"):  # and by the dispatcher
            await harness.call("echo", {"text": "x", "times": "many"})
        await echo.emit_many(count=2)
    assert [event.topic for event in harness.events] == ["session_status", "tick", "tick"]


async def test_a_contract_plugin_typed_by_its_contract() -> None:
    async with PluginHarness(SysInfoPlugin) as harness:
        sysinfo = await harness.proxy(SysInfo)
        metrics = await sysinfo.metrics()  # in a worker thread, as on an endpoint
        assert isinstance(metrics, Metrics) and metrics.cpu.logical >= 1
        assert (await sysinfo.describe()).name == "sysinfo"
