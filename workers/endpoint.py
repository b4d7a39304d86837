"""The endpoint: connects out to the broker, serves its plugins' queues, announces its presence.

Each plugin gets its own channel (a `Lane`, with a prefetch limit) and durable queue
`orbit.ep.{endpoint}.{plugin}`; every delivery runs as its own task of the endpoint, so a
slow call never holds up a fast one, and a call is never abandoned because its channel went.
After a broker restart the connection comes back, every lane re-declares and consumes again,
and the requests the broker kept are served.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from datetime import UTC, datetime
from functools import partial
from typing import Any

import aiormq
from aio_pika.abc import AbstractRobustConnection
from aiormq.abc import DeliveredMessage

from orbit_mq import __version__
from orbit_mq.broker import (
    Route,
    connect,
    ensure_topology,
    request_queue_arguments,
    translated,
)
from orbit_mq.config import Settings, broker_urls
from orbit_mq.contracts.control import Control
from orbit_mq.errors import BrokerError, ConfigError, OrbitError, Unavailable
from orbit_mq.lanes import Lane, quietly
from orbit_mq.protocol import (
    DISCOVER_KEY,
    RPC_EXCHANGE,
    TOPOLOGY_EXCHANGE,
    AuditRecord,
    EndpointInfo,
    PresenceStatus,
    check_name,
    discovery_queue,
    presence_key,
    request_key,
    request_queue,
)
from orbit_mq.tls import login_user
from orbit_mq.waiting import wait_within
from orbit_mq.wire import Request, presence_properties
from orbit_mq.workers.acking import settled
from orbit_mq.workers.control import ControlPlugin
from orbit_mq.workers.dispatch import Dispatcher
from orbit_mq.workers.hostinfo import detect_host_role
from orbit_mq.workers.journal import Journal, journal_path
from orbit_mq.workers.logs import bounded_logger
from orbit_mq.workers.outbox import EventWriter, Outbox
from orbit_mq.workers.ownership import Ownership
from orbit_mq.workers.plugin import Plugin, PluginContext
from orbit_mq.workers.replies import Replies, reply_on_lane

log = bounded_logger("orbit_mq.endpoint")

DRAIN_POLL = 0.5  # s between looks at the running work while draining
DRAIN_REPORT = 30.0  # s between progress lines while draining


class Endpoint:
    def __init__(
        self,
        name: str,
        plugins: Sequence[type[Plugin]],
        settings: Settings | None = None,
        route: Route | None = None,
    ) -> None:
        self.name = check_name("endpoint", name)
        self.route = route  # where to connect instead of the URL's host (an SSH tunnel)
        self.settings = settings or Settings()
        self.pool = self.settings.pool
        if self.pool == self.name:
            raise ConfigError(
                f"endpoint {name!r} cannot be a member of a pool of its own name; name the "
                f"member after its host, e.g. --name {name}-{socket.gethostname().split('.')[0]}"
            )
        # Every endpoint also serves `control` (stopping it remotely), unless given its own.
        served = {cls.name for cls in plugins}
        self.plugin_classes = [*plugins, *([] if Control.name in served else [ControlPlugin])]
        self.user = login_user(self.settings)
        self.plugins: dict[str, Plugin] = {}
        self.started = time.time()
        self.role = detect_host_role()
        self.allowed = frozenset(self.settings.allowed_users or [self.user])
        self.admins = frozenset(self.settings.admin_users or [self.user])
        self.ownership = Ownership(self.user, self.admins, self._audit_event)
        self._connection: AbstractRobustConnection | None = None
        self._events: Lane | None = None  # events, presence, discovery
        self._lanes: dict[str, Lane] = {}  # plugin name -> the lane consuming its queue
        self._consumers: dict[str, tuple[aiormq.abc.AbstractChannel, str]] = {}  # requests
        self._discovery: tuple[aiormq.abc.AbstractChannel, str] | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._taking_requests = True  # False once a stop or a drain began
        self._remote_stop: asyncio.Task[None] | None = None
        self._draining = False
        self._connected = False
        self._discoverable = False
        self._executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix=f"orbit-{name}")
        self.journal = Journal(journal_path(self.settings.home, self.name))
        self.journal.forget_old_replies()  # stored replies are kept for REPLY_RETENTION only
        self._outbox: Outbox | None = None
        self._events_out: EventWriter | None = None
        self._replies: Replies | None = None  # on a cluster (workers/replies.py)

    @property
    def connection(self) -> AbstractRobustConnection:
        """The broker connection (its `url` is the node it is on, or tries next)."""
        if self._connection is None:
            raise RuntimeError(f"endpoint {self.name!r} is not started")
        return self._connection

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect, start every plugin and serve it, announce `online`. If any of it fails,
        what was started is stopped again before the error propagates."""
        try:
            await self._start()
        except BaseException:
            await self.stop(grace=0)
            raise

    async def _start(self) -> None:
        connection = await connect(self.settings, f"orbit-mq endpoint {self.name}", self.route)
        self._connection, self._connected = connection, True
        connection.reconnect_callbacks.add(self._on_reconnect)
        connection.close_callbacks.add(self._connection_lost)
        if len(broker_urls(self.settings.url)) > 1:
            self._replies = Replies(self.settings, self.name, self.route)
            await self._replies.open()
        with translated(f"starting endpoint {self.name!r}"):
            self._events = Lane(
                connection,
                f"{self.name} events",
                confirms=True,
                setup=self._setup_events,
                kept=True,
            )
            await self._events.get()
            self._outbox = Outbox(self.journal, self._events.get, self._events.renew)
            self._events_out = EventWriter(self.name, self._outbox, self.settings.legacy_events)
            self._outbox.start()
            for cls in self.plugin_classes:
                await self._serve_plugin(cls)
            await self._serve_discovery()
        await self._announce(PresenceStatus.ONLINE)
        self._background = [
            asyncio.create_task(self._heartbeat(), name=f"{self.name}-heartbeat"),
            asyncio.create_task(self._expire_sessions(), name=f"{self.name}-sessions"),
        ]
        log.info(
            "endpoint %r online as %r with plugins %s (serving users: %s)",
            self.name,
            self.user,
            ", ".join(self.plugins),
            ", ".join(sorted(self.allowed)),
        )

    async def stop(self, grace: float = 30.0) -> None:
        """Stop consuming, let in-flight calls finish (up to `grace` s), say offline, close."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        await self._stop_taking_requests()
        if self._discovery is not None:
            await quietly(self._discovery[0].basic_cancel(self._discovery[1]))
        if self._inflight:
            log.info("waiting for %d in-flight calls", len(self._inflight))
            _, late = await asyncio.wait(set(self._inflight), timeout=grace)
            for task in late:  # cancelled calls are handed back to the queue by settled()
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=5)
        for task in self._background:
            task.cancel()
        for plugin in self.plugins.values():  # first: what they emit while stopping goes out
            plugin.sessions.save()
            try:
                await plugin.stop()
            except Exception:
                log.exception("plugin %s failed to stop cleanly", plugin.name)
        if self._background:  # it was online (start completed)
            with suppress(Exception):
                await self._announce(PresenceStatus.OFFLINE, timeout=5)
        if self._outbox is not None:
            if not await self._outbox.drain(timeout=10):
                log.warning("events not yet published stay in the journal for the next start")
            await self._outbox.stop()
        for lane in [*self._lanes.values(), *filter(None, [self._events])]:
            await lane.close()
        if self._replies is not None:
            await self._replies.close()
        if self._connection is not None:
            await quietly(self._connection.close())
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.journal.close()
        self._stopped.set()
        log.info("endpoint %r stopped", self.name)

    async def _stop_taking_requests(self) -> None:
        """Cancel the request consumers: what is sent from now on waits in the queues."""
        self._taking_requests = False
        consumers, self._consumers = self._consumers, {}
        for amqp, tag in consumers.values():
            await quietly(amqp.basic_cancel(tag))

    async def run(self) -> None:
        """Serve until SIGTERM or SIGINT, or until an admin's remote stop has stopped it; then
        stop gracefully."""
        await self.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._stopped.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.stop()

    # -- remote control (the control plugin, workers/control.py) ---------------------------

    def in_flight(self) -> int:
        return len(self._inflight)

    async def running_work(self) -> dict[str, int]:
        counts = {name: await plugin.running_work() for name, plugin in self.plugins.items()}
        return {name: count for name, count in counts.items() if count}

    def request_stop(self, drain: bool, drain_timeout: float | None, user: str) -> None:
        """Begin a remote stop (once): it runs after the reply to the request is sent."""
        if self._remote_stop is not None or self._stopping.is_set():
            return
        log.warning("endpoint %r: stop requested by %r (drain: %s)", self.name, user, drain)
        self._remote_stop = asyncio.create_task(
            self._stop_remotely(drain, drain_timeout), name=f"{self.name}-remote-stop"
        )

    async def _stop_remotely(self, drain: bool, drain_timeout: float | None) -> None:
        # The stop request's own reply still goes out: stop() lets calls in flight finish.
        await self._stop_taking_requests()
        if drain:
            self._draining = True
            await self._drain(drain_timeout)
        await self.stop()

    async def _drain(self, timeout: float | None) -> None:
        """Wait until the plugins' running work has ended (or `timeout` s, or a stop)."""
        began = time.monotonic()
        reported = began
        while not self._stopping.is_set():
            running = await self.running_work()
            if not running:
                log.info("endpoint %r drained: no work runs any more", self.name)
                return
            now = time.monotonic()
            if timeout is not None and now - began >= timeout:
                log.warning(
                    "endpoint %r: drain timed out after %g s; still running: %s (the next "
                    "start re-attaches them)",
                    self.name,
                    timeout,
                    running,
                )
                return
            if now - reported >= DRAIN_REPORT:
                log.info("endpoint %r draining; still running: %s", self.name, running)
                reported = now
            with suppress(TimeoutError):
                await wait_within(self._stopping.wait(), DRAIN_POLL)

    # -- serving ---------------------------------------------------------------------------

    async def _serve_plugin(self, cls: type[Plugin]) -> None:
        assert self._connection is not None
        try:
            context = PluginContext(
                self.name,
                self.settings,
                self._publish_event,
                self.journal,
                self._executor,
                endpoint_control=self if cls.name == Control.name else None,
                ownership=self.ownership,
            )
            plugin = cls(context)
            await plugin.start()
        except OrbitError:
            raise  # already says what is wrong
        except Exception as exc:
            raise ConfigError(f"plugin {cls.name!r} failed to start: {exc}") from exc
        self.plugins[plugin.name] = plugin
        dispatcher = Dispatcher(
            plugin,
            allowed_users=self.allowed,
            max_message_size=self.settings.max_message_size,
            executor=self._executor,
            pool=self.pool,
        )
        for served in (plugin.name, *plugin.aliases):
            lane = Lane(
                self._connection,
                request_queue(self.name, served),
                prefetch=self.settings.prefetch,
                setup=partial(self._setup_plugin, served, dispatcher),
                kept=True,
            )
            self._lanes[served] = lane
            await lane.get()

    async def _setup_plugin(
        self, plugin: str, dispatcher: Dispatcher, amqp: aiormq.Channel
    ) -> None:
        """Declare and bind the plugin's queue (and its pool's) and consume them (again after
        every reconnection). Pool members compete for the pool's queue: each call goes to one."""
        pool = [self.pool] if self.pool is not None and dispatcher.plugin.pooled else []
        for name in (self.name, *pool):
            queue = request_queue(name, plugin)
            await amqp.queue_declare(
                queue, durable=True, arguments=request_queue_arguments(self.settings)
            )
            await amqp.queue_bind(queue, RPC_EXCHANGE, routing_key=request_key(name, plugin))
            if self._taking_requests:
                ok = await amqp.basic_consume(queue, partial(self._on_request, dispatcher, plugin))
                assert ok.consumer_tag is not None
                self._consumers[queue] = (amqp, ok.consumer_tag)

    async def _on_request(
        self, dispatcher: Dispatcher, plugin: str, message: DeliveredMessage
    ) -> None:
        # The call runs in a task of the endpoint, not in aiormq's consumer task: aiormq
        # cancels those when their channel closes, which would abandon a call half done (a
        # job recorded but never handed to its executor, an answer never sent).
        task = asyncio.create_task(self._serve(dispatcher, plugin, message))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _serve(self, dispatcher: Dispatcher, plugin: str, message: DeliveredMessage) -> None:
        request = Request.of(message)
        reply = partial(self._reply, self._lanes[plugin])
        async with settled(message, self.settings.ack_within) as settlement:
            try:
                await dispatcher.handle(request, reply)
            except asyncio.CancelledError:
                if settlement.acked:  # it cannot go back to its queue: tell the caller
                    stopping = Unavailable(
                        f"endpoint {self.name!r} stopped before the call finished; call again"
                    )
                    await quietly(dispatcher.refuse(request, reply, stopping))
                raise

    async def _reply(
        self,
        lane: Lane,
        reply_to: str,
        correlation_id: str | None,
        body: bytes,
        message_type: str | None,
    ) -> None:
        """Publish a reply: on the channel the request came on, or on a cluster over a
        connection of its own (workers/replies.py)."""
        if self._replies is not None:
            await self._replies.send(reply_to, correlation_id, body, message_type)
        else:
            await reply_on_lane(lane, reply_to, correlation_id, body, message_type)

    async def _setup_events(self, amqp: aiormq.Channel) -> None:
        assert self._connection is not None
        await ensure_topology(self._connection, self.user, self.settings.queue_type)
        if self._discoverable:  # its plugins are served: it may answer discovery
            await self._consume_discovery(amqp)

    async def _serve_discovery(self) -> None:
        assert self._events is not None
        self._discoverable = True
        await self._consume_discovery(await self._events.get())

    async def _consume_discovery(self, amqp: aiormq.Channel) -> None:
        # Named (not server-named) so that it is the same queue after a reconnection.
        queue = discovery_queue(self.name, os.getpid())
        await amqp.queue_declare(queue, exclusive=True, auto_delete=True)
        await amqp.queue_bind(queue, RPC_EXCHANGE, routing_key=DISCOVER_KEY)
        if not self._stopping.is_set():
            ok = await amqp.basic_consume(queue, self._on_discover, no_ack=True)
            assert ok.consumer_tag is not None
            self._discovery = (amqp, ok.consumer_tag)

    async def _on_discover(self, message: DeliveredMessage) -> None:
        properties = message.header.properties
        if not properties.reply_to or self._events is None:
            return
        body = self.info(PresenceStatus.ONLINE).model_dump_json().encode()
        await self._reply(self._events, properties.reply_to, properties.correlation_id, body, None)

    # -- presence and events ---------------------------------------------------------------

    def info(self, status: PresenceStatus) -> EndpointInfo:
        return EndpointInfo(
            endpoint=self.name,
            status=status,
            version=__version__,
            host=socket.gethostname(),
            host_role=self.role.role,
            pid=os.getpid(),
            user=self.user,
            started=datetime.fromtimestamp(self.started, UTC),
            uptime=time.time() - self.started,
            heartbeat_interval=self.settings.heartbeat_interval,
            draining=self._draining,
            pool=self.pool,
            plugins=[
                info.model_copy(update={"name": served})
                for plugin in self.plugins.values()
                for info in [type(plugin).info()]
                for served in (plugin.name, *plugin.aliases)
            ],
        )

    async def _announce(self, status: PresenceStatus, timeout: float | None = None) -> None:
        """Presence goes straight out (a stale one is worth nothing), events via the outbox."""
        assert self._events is not None
        body = self.info(status).model_dump_json().encode()
        properties = presence_properties()
        with translated(f"publishing {status} presence"):
            amqp = await self._events.get(timeout)
            await amqp.basic_publish(
                body,
                exchange=TOPOLOGY_EXCHANGE,
                routing_key=presence_key(self.name, status),
                properties=properties,
            )

    async def _publish_event(
        self, plugin: str, topic: str, data: dict[str, Any], key: str | None, owner: str
    ) -> None:
        assert self._events_out is not None, "events are published only after start()"
        self._events_out.publish(plugin, topic, data, key, owner)

    def _audit_event(self, record: AuditRecord) -> None:
        if self._events_out is not None:  # before serving, the log line is the only record
            self._events_out.audit(record)

    async def _heartbeat(self) -> None:
        interval = self.settings.heartbeat_interval
        while not self._stopping.is_set():
            with suppress(TimeoutError):
                await wait_within(self._stopping.wait(), interval)
                return
            try:
                await self._announce(PresenceStatus.HEARTBEAT, timeout=interval)
            except BrokerError as exc:  # the broker is away: `_connection_lost` said so
                log.debug("heartbeat not published: %s", exc)

    async def _expire_sessions(self) -> None:
        ttls = [plugin.sessions.default_ttl for plugin in self.plugins.values()] or [60.0]
        period = min(max(min(ttls) / 4, 0.05), 1.0)
        while not self._stopping.is_set():
            with suppress(TimeoutError):
                await wait_within(self._stopping.wait(), period)
                return
            for plugin in self.plugins.values():
                await plugin.sessions.expire()

    def _connection_lost(self, _: Any, reason: BaseException | None) -> None:
        if self._connected and not self._stopping.is_set():
            log.warning(
                "endpoint %r lost its broker connection (%s); reconnecting every %s s",
                self.name,
                reason or "closed",
                self.settings.reconnect_interval,
            )
        self._connected = False

    async def _on_reconnect(self, *_: Any) -> None:
        self._connected = True
        log.info("endpoint %r reconnected to the broker", self.name)
        with suppress(Exception):
            await self._announce(PresenceStatus.ONLINE, timeout=10)
