"""Starting an endpoint either completes or leaves nothing running."""

from __future__ import annotations

import pytest
from echo_plugin import Echo

import orbit_mq
from orbit_mq.config import Settings
from orbit_mq.errors import ConfigError
from orbit_mq.workers.endpoint import Endpoint
from orbit_mq.workers.plugin import Plugin


class Broken(Plugin):
    name = "broken_start"

    async def start(self) -> None:
        raise ValueError("no such directory: /nowhere")


async def test_a_plugin_failing_to_start_stops_the_endpoint_cleanly(
    settings: Settings, fabric: orbit_mq.Fabric, name: str
) -> None:
    endpoint = Endpoint(name, [Echo, Broken], settings)
    with pytest.raises(ConfigError, match="plugin 'broken_start' failed to start: no such dir"):
        await endpoint.start()
    assert endpoint._connection is not None and endpoint._connection.is_closed
    # The plugin started before it was stopped again: its queue has no consumer.
    with pytest.raises(orbit_mq.EndpointOffline):
        await fabric.call(name, "echo", "say", {"text": "x"})
