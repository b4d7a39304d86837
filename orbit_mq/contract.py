"""The base of every plugin contract: its name, version, event topics and the methods every
plugin answers (sessions, health, describe).

    class Greeter(Contract):
        name = "greeter"
        version = "1.0"

        @rpc
        async def greet(self, who: str, times: int = 1) -> list[str]:
            \"\"\"Greet `who`, `times` times.\"\"\"
            ...

The endpoint implements a contract (`class GreeterPlugin(Plugin, Greeter)`); the SDK calls it
(`await fabric.endpoint("hpc1").plugin(Greeter)`). Contracts import no endpoint runtime.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, PositiveFloat

from orbit_mq.errors import RemoteError, register_errors
from orbit_mq.protocol import HealthInfo, SessionInfo, check_name
from orbit_mq.rpc import PluginDescription, RpcSpec, build_specs, describe, rpc


class Contract:
    name: ClassVar[str]
    # Other names the plugin is also served under (its request queues; events use `name`).
    aliases: ClassVar[tuple[str, ...]] = ()
    version: ClassVar[str] = "0.1.0"
    # The data model of each event topic the plugin emits (schemas/events/ is made from it).
    events: ClassVar[dict[str, type[BaseModel]]] = {"session_status": SessionInfo}
    rpc_methods: ClassVar[dict[str, RpcSpec]] = {}
    # The plugin's own error classes (the SDK raises them for its `details.type`).
    errors: ClassVar[tuple[type[RemoteError], ...]] = ()
    # The contracts known in this process, by plugin name (the SDK types results with them).
    known: ClassVar[dict[str, type[Contract]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.rpc_methods = build_specs(cls)
        if "name" in cls.__dict__:
            check_name("plugin", cls.name)
            Contract.known.setdefault(cls.name, cls)  # the first: the contract, not a subclass
            for alias in cls.aliases:
                Contract.known.setdefault(check_name("plugin", alias), cls)
        if "errors" in cls.__dict__:
            register_errors(cls.name, cls.errors)

    @classmethod
    def description(cls) -> PluginDescription:
        """What `describe` answers: every method with its parameter and result schemas."""
        return describe(cls.name, cls.version, cls.rpc_methods)

    @rpc
    async def register_session(self, ttl: PositiveFloat | None = None) -> SessionInfo:
        """Open a session for the caller; it expires after `ttl` seconds without use (at most,
        and by default, the plugin's session lifetime)."""
        raise NotImplementedError

    @rpc
    async def unregister_session(self, session_id: str) -> SessionInfo:
        """Close one of the caller's sessions."""
        raise NotImplementedError

    @rpc
    async def health(self) -> HealthInfo:
        """Whether the plugin works, with its version, uptime and session count."""
        raise NotImplementedError

    @rpc
    async def describe(self) -> PluginDescription:
        """The plugin's methods with the JSON Schemas of their parameters and results."""
        raise NotImplementedError


Contract.rpc_methods = build_specs(Contract)  # the methods every plugin answers
