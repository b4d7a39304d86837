"""Test a plugin without a broker: its methods through the endpoint's real dispatcher
(validation, sessions, call contexts, error replies), called through a typed proxy.

    from orbit_mq.testing import PluginHarness

    async def test_greet() -> None:
        async with PluginHarness(GreeterPlugin) as harness:
            greeter = await harness.proxy(Greeter)          # typed as the contract
            assert await greeter.greet(who="ada") == "hello ada"
            assert harness.events == []                     # what the plugin emitted

Each call is encoded, dispatched and decoded as on the wire; `harness.events` collects the
events the plugin emitted, in order. The plugin's journal is in memory. This module loads the
endpoint runtime (orbit_mq.workers) when a harness starts, never on import.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar, cast, overload

import orjson

from orbit_mq.caller import new_id
from orbit_mq.config import Settings
from orbit_mq.contract import Contract
from orbit_mq.protocol import REPLY_TO, Event
from orbit_mq.proxy import PluginProxy, proxy_class
from orbit_mq.wire import Request, outcome

if TYPE_CHECKING:
    from orbit_mq.workers.dispatch import Dispatcher
    from orbit_mq.workers.plugin import Plugin

C = TypeVar("C", bound=Contract)
ENDPOINT = "harness"


class PluginHarness:
    """One plugin instance behind the real dispatcher, served to `user`."""

    def __init__(
        self,
        plugin: type[Plugin],
        *,
        user: str = "tester",
        settings: Settings | None = None,
        home: Path | None = None,
    ) -> None:
        self.plugin_class = plugin
        self.user = user
        self._scratch = None if settings or home else tempfile.TemporaryDirectory(prefix="orbit-")
        where = home or Path(self._scratch.name if self._scratch else ".")
        self.settings = settings or Settings(home=where)
        self.events: list[Event] = []
        self.plugin: Plugin | None = None
        self._dispatcher: Dispatcher | None = None

    async def __aenter__(self) -> Self:
        from orbit_mq.workers.dispatch import Dispatcher
        from orbit_mq.workers.plugin import PluginContext

        context = PluginContext(ENDPOINT, self.settings, self._collect)
        self.plugin = self.plugin_class(context)
        await self.plugin.start()
        self._dispatcher = Dispatcher(
            self.plugin,
            allowed_users=frozenset({self.user}),
            max_message_size=self.settings.max_message_size,
        )
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.plugin is not None:
            await self.plugin.stop()
        if self._scratch is not None:
            self._scratch.cleanup()

    async def _collect(
        self, plugin: str, topic: str, data: dict[str, Any], key: str | None, owner: str
    ) -> None:
        event = Event(id=key, endpoint=ENDPOINT, plugin=plugin, topic=topic, owner=owner, data=data)
        self.events.append(event)

    @overload
    async def proxy(self, contract: type[C], *, session: bool = False) -> C: ...
    @overload
    async def proxy(self, contract: None = None, *, session: bool = False) -> PluginProxy: ...
    async def proxy(self, contract: type[Contract] | None = None, *, session: bool = False) -> Any:
        """A proxy whose calls go through the dispatcher; typed as `contract` (default: the
        plugin's own), with a session registered first when `session`."""
        contract = contract or self.plugin_class
        proxy = proxy_class(contract)(cast(Any, _Direct(self)), ENDPOINT, contract.name)
        if session:
            await proxy.open_session()
        return proxy

    async def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session: str | None = None,
        message_id: str | None = None,
        timeout: float = 30.0,
    ) -> Any:
        """One call as a foreign client would make it: the result's JSON value, or the
        RemoteError the reply carries."""
        assert self._dispatcher is not None, "use the harness in `async with`"
        request = Request(
            body=orjson.dumps(params or {}),
            method=method,
            user=self.user,
            reply_to=REPLY_TO,
            correlation_id=new_id(),
            message_id=message_id or new_id(),
            session=session,
            deadline_ms=int((time.time() + timeout) * 1000),
        )
        answers: list[bytes] = []

        async def send(reply_to: str, cid: str | None, body: bytes, kind: str | None) -> None:
            answers.append(body)

        await self._dispatcher.handle(request, send)
        return outcome(orjson.loads(answers[0]), self.plugin_class.name)


class _Direct:
    """What a proxy needs of a Fabric, answered by the harness."""

    def __init__(self, harness: PluginHarness) -> None:
        self.harness = harness
        self.settings = harness.settings

    async def call(
        self,
        endpoint: str,
        plugin: str,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
        wait: bool = False,
        session: str | None = None,
        message_id: str | None = None,
        retry: bool = False,
    ) -> Any:
        return await self.harness.call(
            method, params, session=session, message_id=message_id, timeout=timeout or 30.0
        )
