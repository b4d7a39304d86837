"""The plugin base class: the endpoint's side of a contract (orbit_mq/contract.py).

    class Greeter(Contract):                 # the contract: orbit_mq-only imports
        name = "greeter"

        @rpc
        async def greet(self, who: str) -> str:
            \"\"\"Greet `who`.\"\"\"
            raise NotImplementedError

    class GreeterPlugin(Plugin, Greeter):    # the implementation, on the endpoint
        async def greet(self, who: str) -> str:
            return f"hello {who}"

A plugin may also be one class (`class Echo(Plugin)` with `@rpc` methods): then it is its own
contract. Every plugin answers `register_session`, `unregister_session`, `health` and
`describe`, implemented here.
"""

from __future__ import annotations

import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, overload

from pydantic import BaseModel, PositiveFloat

from orbit_mq.contract import Contract
from orbit_mq.protocol import HealthInfo, PluginInfo, SessionInfo, SessionStatus
from orbit_mq.rpc import INJECTED, CallContext, PluginDescription, Session
from orbit_mq.workers.journal import Journal
from orbit_mq.workers.logs import bounded_logger
from orbit_mq.workers.ownership import Ownership, current_call
from orbit_mq.workers.sessions import SessionRegistry

if TYPE_CHECKING:
    from orbit_mq.config import Settings


class EventSink(Protocol):
    async def __call__(
        self, plugin: str, topic: str, data: dict[str, Any], key: str | None, owner: str
    ) -> None: ...


class Emitter(Protocol):
    """`Plugin.emit`, as the parts of a plugin that announce its work take it."""

    async def __call__(
        self,
        topic: str,
        data: BaseModel | dict[str, Any],
        key: str | None = None,
        *,
        owner: str | None = None,
    ) -> None: ...


@dataclass(frozen=True)
class PluginContext:
    """What the endpoint hands each plugin."""

    endpoint: str
    settings: Settings
    publish_event: EventSink
    journal: Journal = field(default_factory=lambda: Journal(None))
    executor: Executor | None = None  # worker threads for blocking calls (`in_thread`)
    endpoint_control: EndpointControl | None = None  # only the control plugin needs it
    ownership: Ownership = field(default_factory=Ownership)  # who may act on whose work


class EndpointControl(Protocol):
    """What the control plugin may ask of its endpoint."""

    admins: frozenset[str]

    def in_flight(self) -> int: ...

    async def running_work(self) -> dict[str, int]: ...

    def request_stop(self, drain: bool, drain_timeout: float | None, user: str) -> None: ...


class Plugin(Contract):
    session_ttl: ClassVar[float | None] = None
    # Served under its endpoint's pool name too, when the endpoint is a pool member.
    pooled: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if hasattr(cls, "name"):
            missing = [s.attr for s in cls.rpc_methods.values() if _unimplemented(cls, s.attr)]
            if missing:
                raise TypeError(f"plugin {cls.__name__} does not implement {', '.join(missing)}")

    def __init__(self, context: PluginContext) -> None:
        self.context = context
        self.log = bounded_logger(f"orbit_mq.plugin.{self.name}")
        self.started = time.time()
        ttl = self.session_ttl or context.settings.session_ttl
        self.sessions = SessionRegistry(
            self.name, ttl, self._session_changed, context.journal, context.ownership
        )

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

    async def running_work(self) -> int:
        """How much work (jobs, tasks) still runs here: a draining endpoint waits for 0."""
        return 0

    async def emit(
        self,
        topic: str,
        data: BaseModel | dict[str, Any],
        key: str | None = None,
        *,
        owner: str | None = None,
    ) -> None:
        """Journal an event about broker user `owner`'s work (by default: the user of the call
        being served) for orbit.events, routing key `{endpoint}.{plugin}.{topic}.{owner
        word}`, which only `owner` and the users granted all events can bind; it is published
        soon after, in order. `key` is its dedupe key (the message_id every copy on the wire
        carries): unique per event, e.g. `{job_id}:{seq}`; a model's own `event_key()` is used
        when there is one, a random id otherwise. `data` should be an instance of the model
        `events` declares for the topic."""
        if isinstance(data, BaseModel):
            if key is None and hasattr(data, "event_key"):
                key = data.event_key()
            data = data.model_dump(mode="json")
        if owner is None:
            owner = current_call().user  # outside a call, the caller must say whose work
        owner = self.context.ownership.owner(owner)  # work recorded without one: the endpoint's
        await self.context.publish_event(self.name, topic, data, key, owner)

    async def _session_changed(self, session: Session, status: SessionStatus) -> None:
        info = session.info(status, self.context.endpoint)
        await self.emit("session_status", info, owner=session.user)

    # -- the methods every plugin answers (their contract: orbit_mq/contract.py) -----------

    async def register_session(
        self, ttl: PositiveFloat | None = None, *, ctx: CallContext = INJECTED
    ) -> SessionInfo:
        session = await self.sessions.open(ctx.user, ttl)
        return session.info(endpoint=self.context.endpoint)

    async def unregister_session(
        self, session_id: str, *, ctx: CallContext = INJECTED
    ) -> SessionInfo:
        method = f"{ctx.plugin}.{ctx.method}"
        session = await self.sessions.close(session_id, ctx.user, method)
        return session.info("closed", self.context.endpoint)

    async def health(self) -> HealthInfo:
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

    async def describe(self) -> PluginDescription:
        return type(self).description()


REPLY_MARGIN = 0.5  # s: a waiting call answers this long before its caller's deadline


@overload
def wait_budget(timeout: float, ctx: CallContext) -> float: ...
@overload
def wait_budget(timeout: float | None, ctx: CallContext) -> float | None: ...
def wait_budget(timeout: float | None, ctx: CallContext) -> float | None:
    """How long a call that waits (wait_jobs, wait_tasks) may wait: its own timeout, bounded
    by the request's deadline; None for no limit."""
    limits = [] if timeout is None else [timeout]
    if ctx.deadline_ms is not None:
        limits.append(ctx.deadline_ms / 1000 - time.time() - REPLY_MARGIN)
    return max(0.0, min(limits)) if limits else None


def _unimplemented(cls: type, attr: str) -> bool:
    """Whether `cls.attr` is still a contract's stub."""
    owner = next((klass for klass in cls.__mro__ if attr in vars(klass)), None)
    return owner is not None and issubclass(owner, Contract) and not issubclass(owner, Plugin)
