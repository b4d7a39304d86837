"""The plugin base class. A plugin is one class; its `@rpc` methods are its wire API.

    class Echo(Plugin):
        name = "echo"
        version = "1.0"

        @rpc
        async def say(self, text: str, times: int = 1) -> list[str]:
            return [text] * times

Every plugin also answers `register_session`, `unregister_session`, `health` and `describe`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import BaseModel, Field

from orbit_mq.protocol import HealthInfo, PluginInfo, SessionInfo, SessionStatus, check_name
from orbit_mq.workers.journal import Journal
from orbit_mq.workers.logs import bounded_logger
from orbit_mq.workers.rpc import CallContext, RpcSpec, Session, build_specs, rpc
from orbit_mq.workers.sessions import SessionRegistry

if TYPE_CHECKING:
    from orbit_mq.config import Settings


class EventSink(Protocol):
    async def __call__(
        self, plugin: str, topic: str, data: dict[str, Any], key: str | None
    ) -> None: ...


class KeyedEvent(Protocol):
    """Event data that knows its dedupe key (see `Plugin.emit`)."""

    def event_key(self) -> str: ...


@dataclass(frozen=True)
class PluginContext:
    """What the endpoint hands each plugin."""

    endpoint: str
    settings: Settings
    publish_event: EventSink
    journal: Journal = field(default_factory=lambda: Journal(None))


class MethodInfo(BaseModel):
    name: str
    doc: str
    params: dict[str, Any]
    result: dict[str, Any]
    session: bool = Field(
        description="Session-scoped: the call uses the session named in orbit-session."
    )
    session_required: bool = Field(description="The call is refused without a session.")
    dedupe: bool = Field(
        description="Runs once per message_id: a repeat with the same message_id gets the "
        "first reply, so retrying with it is safe."
    )


class PluginDescription(BaseModel):
    name: str
    version: str
    methods: list[MethodInfo]


class Plugin:
    name: ClassVar[str]
    version: ClassVar[str] = "0.1.0"
    session_ttl: ClassVar[float | None] = None
    rpc_methods: ClassVar[dict[str, RpcSpec]] = {}
    # The data model of each event topic the plugin emits (schemas/events/ is made from it).
    events: ClassVar[dict[str, type[BaseModel]]] = {"session_status": SessionInfo}
    # Every plugin class imported in this process, by name (the SDK types results with it).
    loaded: ClassVar[dict[str, type[Plugin]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.rpc_methods = build_specs(cls)
        if "name" in cls.__dict__:
            Plugin.loaded[check_name("plugin", cls.name)] = cls

    def __init__(self, context: PluginContext) -> None:
        self.context = context
        self.log = bounded_logger(f"orbit_mq.plugin.{self.name}")
        self.started = time.time()
        ttl = self.session_ttl or context.settings.session_ttl
        self.sessions = SessionRegistry(self.name, ttl, self._session_changed, context.journal)

    @classmethod
    def is_available(cls) -> bool:
        """False where the plugin cannot work on this host (checked when loading by default)."""
        return True

    @classmethod
    def info(cls) -> PluginInfo:
        return PluginInfo(name=cls.name, version=cls.version, methods=sorted(cls.rpc_methods))

    async def start(self) -> None:
        """Called once before the plugin's queue is consumed."""

    async def stop(self) -> None:
        """Called after consuming stopped and in-flight calls finished."""

    async def health_details(self) -> dict[str, Any]:
        """Plugin-specific health figures; raise to report the plugin unhealthy."""
        return {}

    async def emit(
        self, topic: str, data: BaseModel | dict[str, Any], key: str | None = None
    ) -> None:
        """Journal an event for orbit.events (routing key `{endpoint}.{plugin}.{topic}`); it is
        published soon after, in order. `key` is its dedupe key (the message_id every copy on
        the wire carries): unique per event, e.g. `{job_id}:{seq}`; a model's own
        `event_key()` is used when there is one, a random id otherwise. `data` should be an
        instance of the model `events` declares for the topic."""
        if isinstance(data, BaseModel):
            if key is None and hasattr(data, "event_key"):
                key = data.event_key()
            data = data.model_dump(mode="json")
        await self.context.publish_event(self.name, topic, data, key)

    async def _session_changed(self, session: Session, status: SessionStatus) -> None:
        await self.emit("session_status", session.info(status))

    @rpc
    async def register_session(self, ctx: CallContext, ttl: float | None = None) -> SessionInfo:
        """Open a session for the caller; it expires after `ttl` seconds without use."""
        session = await self.sessions.open(ctx.user, ttl)
        return session.info()

    @rpc
    async def unregister_session(self, ctx: CallContext, session_id: str) -> SessionInfo:
        """Close one of the caller's sessions."""
        session = await self.sessions.close(session_id, ctx.user)
        return session.info("closed")

    @rpc
    async def health(self) -> HealthInfo:
        """Whether the plugin works, with its version, uptime and session count."""
        try:
            details, healthy = await self.health_details(), True
        except Exception as exc:  # a health probe reports failures instead of raising them
            details, healthy = {"error": f"{type(exc).__name__}: {exc}"}, False
        return HealthInfo(
            plugin=self.name,
            version=self.version,
            healthy=healthy,
            uptime=time.time() - self.started,
            sessions=len(self.sessions),
            details=details,
        )

    @rpc
    async def describe(self) -> PluginDescription:
        """The plugin's methods with the JSON Schemas of their parameters and results."""
        return describe_plugin(type(self))


def describe_plugin(cls: type[Plugin]) -> PluginDescription:
    return PluginDescription(
        name=cls.name,
        version=cls.version,
        methods=[
            MethodInfo(
                name=spec.name,
                doc=spec.doc,
                params=spec.params_schema(),
                result=spec.result_schema(),
                session=spec.session_param is not None,
                session_required=spec.session_required,
                dedupe=spec.dedupe,
            )
            for spec in sorted(cls.rpc_methods.values(), key=lambda s: s.name)
        ],
    )
