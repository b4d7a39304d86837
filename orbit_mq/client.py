"""The async SDK.

async with orbit_mq.connect("amqp://guest:guest@127.0.0.1:5672/") as fabric:
    sysinfo = await fabric.endpoint("hpc1").plugin("sysinfo")
    home = await sysinfo.homedir()
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Generator
from contextlib import suppress
from typing import Any, Self, TypeVar, overload

import aiormq
import orjson
from aio_pika.abc import AbstractRobustConnection

from orbit_mq import broker
from orbit_mq.caller import Call, Caller, new_id
from orbit_mq.config import Settings, load_settings
from orbit_mq.contract import Contract
from orbit_mq.errors import (
    AccessRefused,
    CallTimeout,
    ConfigError,
    ConnectionLost,
    EndpointNotFound,
    EndpointOffline,
    InvalidArguments,
    OrbitError,
    RequestTooLarge,
    TransientError,
)
from orbit_mq.lanes import spare_channel
from orbit_mq.protocol import (
    DISCOVER_KEY,
    EVENTS_EXCHANGE,
    REPLY_TO,
    RPC_EXCHANGE,
    TOPOLOGY_EXCHANGE,
    EndpointInfo,
    Event,
    audit_key,
    check_name,
    owned_pattern,
    request_key,
    request_queue,
)
from orbit_mq.proxy import PluginProxy, proxy_class
from orbit_mq.retry import until_deadline
from orbit_mq.subscribe import Subscription
from orbit_mq.tls import login_user
from orbit_mq.waiting import Shared, wait_within
from orbit_mq.wire import discovery_properties, outcome


class Mine:
    """The default owner of `Fabric.subscribe`: the connection's own broker user."""


MINE = Mine()

log = logging.getLogger("orbit_mq.client")
C = TypeVar("C", bound=Contract)

# After a reconnection (a broker restart) endpoints get this long to consume again before a
# call finds them offline; the consumer count is checked every CONSUMER_POLL s meanwhile.
RECONNECT_GRACE = 15.0
CONSUMER_POLL = 0.2
OFFLINE_CONFIRM = 0.5  # s an empty request queue must stay unexplained by a broker restart


def connect(url: str | None = None, **settings: Any) -> Fabric:
    """A Fabric for `url` (default: settings). Use `async with` or `await`."""
    return Fabric(load_settings(url=url, **settings))


class Fabric:
    """One broker connection shared by every call, proxy and subscription made through it."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.user = login_user(self.settings)
        self._connection: AbstractRobustConnection | None = None
        self._caller: Caller | None = None
        self._served: dict[str, float] = {}  # request queue -> when last seen with a consumer
        self._checking: Shared[str, bool] = Shared()  # request queue -> its check under way
        self._proxies: list[PluginProxy] = []
        self._subscriptions: list[Subscription[Any]] = []
        self._reconnected = -RECONNECT_GRACE  # time.monotonic() of the last reconnection
        self._drop_waiters: set[asyncio.Event] = set()

    async def open(self) -> Self:
        if self._connection is None:
            self._connection = await broker.connect(self.settings, f"orbit-mq client {self.user}")
            # a subscriber may come before any endpoint ever ran on this vhost
            await broker.ensure_topology(self._connection, self.user, self.settings.queue_type)
            self._connection.reconnect_callbacks.add(self._on_reconnect)
            self._connection.close_callbacks.add(self._on_drop)
            self._caller = Caller(self._connection, self.settings, self.user)
            await self._caller.open()
        return self

    async def close(self) -> None:
        for proxy in self._proxies:
            with suppress(OrbitError, TimeoutError, asyncio.CancelledError):
                await wait_within(proxy.close(), 2)
        for subscription in self._subscriptions:
            with suppress(Exception):
                await subscription.close()
        if self._caller is not None:
            await self._caller.close()
        if self._connection is not None:
            with suppress(Exception):
                await self._connection.close()
            self._connection = None

    def __await__(self) -> Generator[Any, None, Self]:
        return self.open().__await__()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(self, *_: Any) -> None:
        await self.close()

    @property
    def connection(self) -> AbstractRobustConnection:
        if self._connection is None:
            raise ConfigError("the fabric is not open; use `async with orbit_mq.connect(...)`")
        return self._connection

    # -- discovery -------------------------------------------------------------------------

    async def endpoints(self, window: float | None = None) -> list[EndpointInfo]:
        """The live endpoints: every endpoint answering a discovery request within `window` s,
        and those answering later while answers keep coming (each within DISCOVERY_QUIET s of
        the one before, up to DISCOVERY_STRETCH windows in all): with hundreds of endpoints
        the answers take longer than a window to arrive (docs/scaling.md)."""
        window = self.settings.discovery_window if window is None else window
        answers: list[EndpointInfo] = []
        answered = asyncio.Event()  # set by each answer
        with broker.translated("discovering endpoints"):
            async with spare_channel(self.connection, "discovery", self.settings.timeout) as amqp:

                async def on_answer(message: aiormq.abc.DeliveredMessage) -> None:
                    answered.set()
                    with suppress(ValueError):
                        answers.append(EndpointInfo.model_validate_json(message.body))

                await amqp.basic_consume(REPLY_TO, on_answer, no_ack=True)
                # the request (and so the answers' reply address) lives as long as we may wait
                properties = discovery_properties(self.user, window * DISCOVERY_STRETCH)
                await amqp.basic_publish(
                    b"{}", exchange=RPC_EXCHANGE, routing_key=DISCOVER_KEY, properties=properties
                )
                await _collect(window, answered)
        latest = {info.endpoint: info for info in answers}
        return sorted(latest.values(), key=lambda info: info.endpoint)

    async def pool_members(self, pool: str) -> list[str]:
        """The live members of endpoint pool `pool`, by name."""
        return [info.endpoint for info in await self.endpoints() if info.pool == pool]

    def endpoint(self, name: str) -> EndpointHandle:
        return EndpointHandle(self, check_name("endpoint", name))

    async def _served_by(self, endpoint: str, plugin: str, timeout: float | None = None) -> bool:
        """Whether the plugin queue has a consumer; EndpointNotFound when there is no queue.
        Waits up to `timeout` s (default: the settings') for a lost connection to return.
        Calls that ask at once share one check."""
        queue = request_queue(endpoint, plugin)
        seen = self._served.get(queue)
        if seen is not None and time.monotonic() - seen < self.settings.presence_cache:
            return True
        wait = self.settings.timeout if timeout is None else timeout
        try:
            return await self._checking(queue, lambda: self._check(endpoint, plugin, wait), wait)
        except TimeoutError:
            raise ConnectionLost(
                f"checking {queue}: the broker connection did not come back within {wait:.0f} s"
            ) from None

    async def _check(self, endpoint: str, plugin: str, wait: float) -> bool:
        queue = request_queue(endpoint, plugin)
        with broker.translated(f"checking {queue}"):
            try:
                async with spare_channel(self.connection, "check", wait) as amqp:
                    declared = await amqp.queue_declare(queue, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                raise await self._not_found(endpoint, plugin) from None
        if declared.consumer_count:
            self._served[queue] = time.monotonic()
            return True
        self._served.pop(queue, None)
        return False

    async def _served_soon(self, endpoint: str, plugin: str, deadline: float) -> bool:
        """`_served_by`, telling an endpoint that is away from a broker that restarts: nothing
        consumes the queue while a broker shuts down, nor just after it is back. So an empty
        queue is confirmed (this connection must not drop within OFFLINE_CONFIRM s), and just
        after a reconnection the endpoint gets RECONNECT_GRACE s to consume again. Nothing has
        been sent yet, so waiting is safe."""
        while True:
            if await self._served_by(endpoint, plugin, deadline - time.time()):
                return True
            if time.monotonic() - self._reconnected < RECONNECT_GRACE:
                if time.time() + CONSUMER_POLL > deadline:
                    return False
                await asyncio.sleep(CONSUMER_POLL)  # polling the queue's consumer count
                continue
            dropped = asyncio.Event()
            self._drop_waiters.add(dropped)
            try:
                await wait_within(dropped.wait(), OFFLINE_CONFIRM)
            except TimeoutError:
                return False  # the broker is fine: the endpoint is away
            finally:
                self._drop_waiters.discard(dropped)

    def _on_drop(self, *_: Any) -> None:
        for waiter in self._drop_waiters:
            waiter.set()

    def _on_reconnect(self, *_: Any) -> None:
        self._reconnected = time.monotonic()
        self._served.clear()

    async def _online_summary(self) -> str:
        infos = await self.endpoints()
        return (
            ", ".join(
                f"{info.endpoint} ({', '.join(p.name for p in info.plugins)})" for info in infos
            )
            or "none"
        )

    async def _not_found(self, endpoint: str, plugin: str) -> EndpointNotFound:
        infos = {info.endpoint: info for info in await self.endpoints()}
        if endpoint in infos:
            served = ", ".join(p.name for p in infos[endpoint].plugins)
            message = f"endpoint {endpoint!r} does not serve plugin {plugin!r}; it serves: {served}"
        else:
            online = ", ".join(sorted(infos)) or "none"
            message = f"endpoint {endpoint!r} is not known to the broker; online: {online}"
        return EndpointNotFound(message, endpoint=endpoint, plugin=plugin)

    async def _offline(self, endpoint: str, plugin: str) -> EndpointOffline:
        return EndpointOffline(
            f"endpoint {endpoint!r} is not online (nothing consumes its {plugin} queue); "
            f"online: {await self._online_summary()}. To queue the call until it comes back, "
            "pass wait=True (CLI: --wait)",
            endpoint=endpoint,
            plugin=plugin,
        )

    # -- calls -----------------------------------------------------------------------------

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
        """Call `plugin.method` on `endpoint`; returns the result's JSON value.

        `wait=False` fails at once with EndpointOffline when the endpoint is not serving;
        `wait=True` leaves the request in the endpoint's queue until the deadline. With
        `retry` (only for methods that run once per message_id), a transient failure after
        the request was sent (the connection dropped, the endpoint restarted) sends it again
        with the same message_id until the deadline (orbit_mq/retry.py).
        """
        await self.open()
        timeout = self.settings.timeout if timeout is None else timeout
        try:
            body = orjson.dumps(params or {})
        except TypeError as exc:  # e.g. an integer beyond 64 bits: JSON readers differ on it
            message = f"{plugin}.{method}: parameters not sendable as JSON: {exc}"
            raise InvalidArguments(message) from None
        if len(body) > self.settings.max_message_size:
            raise RequestTooLarge(
                f"request of {len(body)} bytes exceeds the {self.settings.max_message_size}-byte "
                "limit (max_message_size); send large data in chunks (staging)"
            )
        call = Call(
            target=(endpoint, plugin),
            method=method,
            body=body,
            session=session,
            deadline=time.time() + timeout,
            message_id=message_id or new_id(),
            persistent=wait,
        )
        if not retry:
            return await self._call_once(call)
        try:
            return await self._call_once(call)
        except EndpointOffline:
            raise  # it was not there when the call was made: said at once
        except TransientError as error:
            log.info("%s.%s.%s: %s; sending it again", endpoint, plugin, method, error)
        return await until_deadline(call.deadline, lambda: self._call_once(call.again()))

    async def _call_once(self, call: Call) -> Any:
        assert self._caller is not None
        endpoint, plugin = call.target
        if call.deadline <= time.time():
            raise CallTimeout(
                f"no reply from {endpoint}.{plugin}.{call.method} before the deadline"
            )
        left = call.deadline - time.time()
        if call.persistent:
            await self._ensure_request_queue(endpoint, plugin, left)
        elif not await self._served_soon(endpoint, plugin, call.deadline):
            raise await self._offline(endpoint, plugin)
        try:
            reply = await self._caller.call(call)
        except EndpointNotFound:
            raise await self._not_found(endpoint, plugin) from None
        except CallTimeout as error:  # no answer: say so if the endpoint went meanwhile
            if not call.persistent and not await self._served_by(endpoint, plugin, 5):
                raise await self._offline(endpoint, plugin) from error
            raise
        return outcome(reply, plugin)

    async def _ensure_request_queue(self, endpoint: str, plugin: str, timeout: float) -> None:
        """Make sure the plugin queue exists, so that a waiting request is kept.

        The endpoint declares its queues; a client only checks (a passive declare needs no
        permission). Only when an endpoint has never run is the queue declared here, the way
        its endpoint does, which a least-privilege client may not do (docs/security.md).
        """
        queue = request_queue(endpoint, plugin)
        with broker.translated(f"checking {queue} to wait in"):
            try:
                async with spare_channel(self.connection, "check", timeout) as amqp:
                    await amqp.queue_declare(queue, passive=True)
                return
            except aiormq.exceptions.ChannelNotFoundEntity:
                pass
        try:
            with broker.translated(f"declaring {queue} to wait in"):
                async with spare_channel(self.connection, "declare", timeout) as amqp:
                    await amqp.queue_declare(
                        queue, durable=True, arguments=broker.request_queue_arguments(self.settings)
                    )
                    await amqp.queue_bind(
                        queue, RPC_EXCHANGE, routing_key=request_key(endpoint, plugin)
                    )
        except AccessRefused:
            raise EndpointNotFound(
                f"endpoint {endpoint!r} has no {plugin} queue to wait in yet (it has never run) "
                f"and broker user {self.user!r} may not create one; start the endpoint once, "
                "then calls can wait for it",
                endpoint=endpoint,
                plugin=plugin,
            ) from None

    # -- events ----------------------------------------------------------------------------

    def subscribe(
        self, *patterns: str, durable: str | None = None, owner: str | Mine | None = MINE
    ) -> Subscription[Event]:
        """Events on orbit.events about `owner`'s work (by default this connection's user's)
        whose `{endpoint}.{plugin}.{topic}` matches a pattern (`*` one word, `#` any).

        `owner=None` asks for everyone's events, and `owner="bob"` for bob's: the broker
        refuses both unless this user was granted all events (`orbit-mq admin user add
        --all-events`), as it refuses the endpoint's audit events (`audit_events`)."""
        whose = self.user if isinstance(owner, Mine) else owner
        try:
            keys = tuple(owned_pattern(pattern, whose) for pattern in patterns)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        return self._events(keys, durable)

    def audit_events(self, *endpoints: str, durable: str | None = None) -> Subscription[Event]:
        """The audit events (`data`: an `AuditRecord`) of these endpoints (patterns of one
        word; default: every endpoint); only for users granted all events."""
        return self._events(tuple(audit_key(e) for e in endpoints or ("*",)), durable)

    def _events(self, keys: tuple[str, ...], durable: str | None) -> Subscription[Event]:
        subscription = Subscription(
            self.connection,
            EVENTS_EXCHANGE,
            keys,
            Event,
            durable=durable,
            user=self.user,
            queue_type=self.settings.queue_type,
        )
        self._subscriptions.append(subscription)
        return subscription

    def presence(self, *patterns: str) -> Subscription[EndpointInfo]:
        """Presence messages on orbit.topology (`{endpoint}.online|heartbeat|offline`)."""
        subscription = Subscription(
            self.connection, TOPOLOGY_EXCHANGE, patterns or ("#",), EndpointInfo
        )
        self._subscriptions.append(subscription)
        return subscription


DISCOVERY_QUIET = 0.25  # s without a new answer that ends discovery past its window
DISCOVERY_STRETCH = 10  # windows discovery may take in all while answers keep coming


async def _collect(window: float, answered: asyncio.Event) -> None:
    """Wait out the discovery window (answers have no count), then while answers still come."""
    with suppress(TimeoutError):
        async with asyncio.timeout(window * DISCOVERY_STRETCH):
            await asyncio.sleep(max(window - DISCOVERY_QUIET, 0))
            answered.clear()  # only answers at the window's end say more are coming
            await asyncio.sleep(min(window, DISCOVERY_QUIET))
            while answered.is_set():  # one came in the last DISCOVERY_QUIET s
                answered.clear()
                with suppress(TimeoutError):
                    await wait_within(answered.wait(), DISCOVERY_QUIET)


class EndpointHandle:
    def __init__(self, fabric: Fabric, name: str) -> None:
        self.fabric = fabric
        self.name = name

    @overload
    async def plugin(
        self,
        name: type[C],
        *,
        session: bool = True,
        ttl: float | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> C: ...
    @overload
    async def plugin(
        self,
        name: str,
        *,
        session: bool = True,
        ttl: float | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> PluginProxy: ...
    async def plugin(
        self,
        name: type[Contract] | str,
        *,
        session: bool = True,
        ttl: float | None = None,
        wait: bool = False,
        timeout: float | None = None,
    ) -> Any:
        """A proxy for one plugin; with `session=True` it registers a session first.

        Given a contract (`plugin(PsiJ)`) the proxy is typed as it; given a name, it is typed
        by the contract known here under that name (the plugins shipped with orbit_mq, or any
        imported), and sends and returns plain JSON for a plugin none describes.
        """
        contract = name if isinstance(name, type) else Contract.known.get(name)
        plugin = contract.name if contract is not None else check_name("plugin", str(name))
        cls = proxy_class(contract) if contract is not None else PluginProxy
        proxy = cls(self.fabric, self.name, plugin, wait, timeout)
        if session:
            await proxy.open_session(ttl)
            self.fabric._proxies.append(proxy)
        return proxy

    async def info(self) -> EndpointInfo:
        for info in await self.fabric.endpoints():
            if info.endpoint == self.name:
                return info
        raise EndpointOffline(
            f"endpoint {self.name!r} did not answer; online: {await self.fabric._online_summary()}",
            endpoint=self.name,
        )
