"""The endpoint: connects out to the broker, serves its plugins' queues, announces its presence.

Each plugin gets its own channel (with a prefetch limit) and durable queue
`orbit.ep.{endpoint}.{plugin}`; every delivery runs as its own task, so a slow call never
holds up a fast one. The connection is robust: after a broker restart it reconnects,
re-declares and consumes again, and requests the broker kept are served.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime
from functools import partial
from typing import Any, cast

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractRobustChannel,
    AbstractRobustConnection,
    DeliveryMode,
)
from aiormq.abc import ConsumerCallback, DeliveredMessage

from orbit_mq import __version__
from orbit_mq.broker import (
    Route,
    connect,
    declare_topology,
    request_queue_arguments,
    translated,
)
from orbit_mq.config import Settings, url_user
from orbit_mq.errors import ConfigError, OrbitError
from orbit_mq.protocol import (
    CONTENT_TYPE,
    DISCOVER_KEY,
    EVENTS_EXCHANGE,
    HEADER_DEADLINE,
    HEADER_PROTOCOL,
    HEADER_SESSION,
    RPC_EXCHANGE,
    TOPOLOGY_EXCHANGE,
    EndpointInfo,
    Event,
    PresenceStatus,
    check_name,
    event_key,
    presence_key,
    request_key,
    request_queue,
)
from orbit_mq.workers.dispatch import Dispatcher, Request
from orbit_mq.workers.hostinfo import detect_host_role
from orbit_mq.workers.journal import Journal, journal_path
from orbit_mq.workers.outbox import Outbox
from orbit_mq.workers.plugin import Plugin, PluginContext

log = logging.getLogger("orbit_mq.endpoint")


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _deadline(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        log.warning("ignoring a malformed %s header: %r", HEADER_DEADLINE, value)
        return None


def request_from_message(message: DeliveredMessage) -> Request:
    properties = message.header.properties
    headers = properties.headers or {}
    return Request(
        body=message.body,
        method=properties.message_type,
        user=properties.user_id,
        reply_to=properties.reply_to,
        correlation_id=properties.correlation_id,
        message_id=properties.message_id,
        session=_text(headers.get(HEADER_SESSION)),
        deadline_ms=_deadline(headers.get(HEADER_DEADLINE)),
        protocol=_text(headers.get(HEADER_PROTOCOL)),
    )


async def _quietly(action: Any) -> None:
    """Run a broker call whose failure only means the connection is gone (the broker redelivers)."""
    with suppress(aiormq.exceptions.AMQPError, ConnectionError, RuntimeError):
        await action


@asynccontextmanager
async def settled(message: DeliveredMessage) -> AsyncIterator[None]:
    """The one place a request is acked: once answered, or when it cannot be (never requeued
    forever); if the endpoint is stopping mid-call it goes back to the queue instead."""
    channel, tag = message.channel, cast(int, message.delivery_tag)
    try:
        yield
    except asyncio.CancelledError:
        await _quietly(channel.basic_reject(tag, requeue=True))
        raise
    except Exception:
        log.exception("request %s could not be handled; acking it", tag)
    # wait=False: the ack joins the reply in one socket write (see broker._CorkedWriter)
    await _quietly(channel.basic_ack(tag, wait=False))


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
        self.plugin_classes = list(plugins)
        self.user = url_user(self.settings.url)
        self.plugins: dict[str, Plugin] = {}
        self.started = time.time()
        self.role = detect_host_role()
        self._connection: AbstractRobustConnection | None = None
        self._events: AbstractRobustChannel | None = None
        self._consumers: dict[str, tuple[aiormq.abc.AbstractChannel, str]] = {}
        self._inflight: set[asyncio.Task[Any]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix=f"orbit-{name}")
        self.journal = Journal(journal_path(self.settings.home, self.name))
        self.journal.forget_old_replies()  # stored replies are kept for REPLY_RETENTION only
        self._outbox: Outbox | None = None

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
        self._connection = await connect(
            self.settings, f"orbit-mq endpoint {self.name}", self.route
        )
        self._connection.reconnect_callbacks.add(self._on_reconnect)
        with translated(f"starting endpoint {self.name!r}"):
            self._events = await self._robust_channel(publisher_confirms=True)
            await declare_topology(self._events)
            self._outbox = Outbox(self.journal, self._events.get_underlay_channel)
            self._outbox.start()
            allowed = frozenset(self.settings.allowed_users or [self.user])
            for cls in self.plugin_classes:
                await self._serve_plugin(cls, allowed)
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
            ", ".join(sorted(allowed)),
        )

    async def stop(self, grace: float = 30.0) -> None:
        """Stop consuming, let in-flight calls finish (up to `grace` s), say offline, close."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        for amqp, tag in self._consumers.values():
            await _quietly(amqp.basic_cancel(tag))
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
                await self._announce(PresenceStatus.OFFLINE)
        if self._outbox is not None:
            if not await self._outbox.drain(timeout=10):
                log.warning("events not yet published stay in the journal for the next start")
            await self._outbox.stop()
        if self._connection is not None:
            await _quietly(self._connection.close())
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.journal.close()
        log.info("endpoint %r stopped", self.name)

    async def run(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop gracefully."""
        await self.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.stop()

    # -- serving ---------------------------------------------------------------------------

    async def _robust_channel(self, publisher_confirms: bool) -> AbstractRobustChannel:
        assert self._connection is not None
        channel = await self._connection.channel(publisher_confirms=publisher_confirms)
        assert isinstance(channel, AbstractRobustChannel)
        return channel

    async def _serve_plugin(self, cls: type[Plugin], allowed: frozenset[str]) -> None:
        assert self._connection is not None
        try:
            plugin = cls(PluginContext(self.name, self.settings, self._publish_event, self.journal))
            await plugin.start()
        except OrbitError:
            raise  # already says what is wrong
        except Exception as exc:
            raise ConfigError(f"plugin {cls.name!r} failed to start: {exc}") from exc
        self.plugins[plugin.name] = plugin
        channel = await self._robust_channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=self.settings.prefetch)
        queue = await channel.declare_queue(
            request_queue(self.name, plugin.name),
            durable=True,
            arguments=request_queue_arguments(self.settings),
        )
        await queue.bind(RPC_EXCHANGE, request_key(self.name, plugin.name))
        dispatcher = Dispatcher(
            plugin,
            allowed_users=allowed,
            max_message_size=self.settings.max_message_size,
            executor=self._executor,
        )
        await self._consume(channel, queue.name, partial(self._on_request, dispatcher, channel))

    async def _consume(
        self, channel: AbstractRobustChannel, queue: str, callback: ConsumerCallback, **kw: Any
    ) -> None:
        """Consume with aiormq directly (the hot path), again after every reconnection."""

        async def consume(*_: Any) -> None:
            if self._stopping.is_set():
                return
            amqp = await channel.get_underlay_channel()
            ok = await amqp.basic_consume(queue, callback, **kw)
            assert ok.consumer_tag is not None
            self._consumers[queue] = (amqp, ok.consumer_tag)

        channel.reopen_callbacks.add(consume)
        await consume()

    async def _on_request(
        self, dispatcher: Dispatcher, channel: AbstractChannel, message: DeliveredMessage
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._inflight.add(task)
        try:
            async with settled(message):
                await dispatcher.handle(
                    request_from_message(message), partial(self._reply, channel)
                )
        finally:
            self._inflight.discard(task)

    async def _reply(
        self,
        channel: AbstractChannel,
        reply_to: str,
        correlation_id: str | None,
        body: bytes,
        message_type: str | None,
    ) -> None:
        # Straight to aiormq: replies are the hot path and need none of aio-pika's wrapping.
        # Direct reply-to addresses take mandatory=False (see docs/protocol.md).
        properties = aiormq.spec.Basic.Properties(
            correlation_id=correlation_id, content_type=CONTENT_TYPE, message_type=message_type
        )
        amqp = cast(aiormq.Channel, await channel.get_underlay_channel())
        # wait=False queues the frame without waiting for the socket, so the ack that follows
        # goes out in the same write.
        await amqp.basic_publish(body, routing_key=reply_to, properties=properties, wait=False)

    async def _serve_discovery(self) -> None:
        assert self._events is not None
        # Named (not server-named) so the robust channel can declare it again after a reconnect.
        queue = await self._events.declare_queue(
            f"orbit.discover.{self.name}.{uuid.uuid4().hex[:8]}", exclusive=True, auto_delete=True
        )
        await queue.bind(RPC_EXCHANGE, DISCOVER_KEY)
        await self._consume(self._events, queue.name, self._on_discover, no_ack=True)

    async def _on_discover(self, message: DeliveredMessage) -> None:
        properties = message.header.properties
        if not properties.reply_to or self._events is None:
            return
        body = self.info(PresenceStatus.ONLINE).model_dump_json().encode()
        reply = self._reply(
            self._events, properties.reply_to, properties.correlation_id, body, None
        )
        await _quietly(reply)

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
            plugins=[type(plugin).info() for plugin in self.plugins.values()],
        )

    async def _announce(self, status: PresenceStatus) -> None:
        """Presence goes straight out (a stale one is worth nothing), events via the outbox."""
        assert self._events is not None
        body = self.info(status).model_dump_json().encode()
        with translated(f"publishing {status} presence"):
            target = await self._events.get_exchange(TOPOLOGY_EXCHANGE, ensure=False)
            await target.publish(
                aio_pika.Message(
                    body, content_type=CONTENT_TYPE, delivery_mode=DeliveryMode.PERSISTENT
                ),
                routing_key=presence_key(self.name, status),
            )

    async def _publish_event(self, plugin: str, topic: str, data: dict[str, Any]) -> None:
        assert self._outbox is not None, "events are published only after start()"
        event = Event(endpoint=self.name, plugin=plugin, topic=topic, data=data)
        key = event_key(self.name, plugin, topic)
        self._outbox.add(EVENTS_EXCHANGE, key, event.model_dump_json().encode())

    async def _heartbeat(self) -> None:
        interval = self.settings.heartbeat_interval
        while not self._stopping.is_set():
            with suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), interval)
                return
            try:
                await self._announce(PresenceStatus.HEARTBEAT)
            except Exception as exc:  # the broker may be restarting; the next beat will tell
                log.warning("heartbeat not published: %s", exc)

    async def _expire_sessions(self) -> None:
        ttls = [plugin.sessions.default_ttl for plugin in self.plugins.values()] or [60.0]
        period = min(max(min(ttls) / 4, 0.05), 1.0)
        while not self._stopping.is_set():
            with suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), period)
                return
            for plugin in self.plugins.values():
                await plugin.sessions.expire()

    async def _on_reconnect(self, *_: Any) -> None:
        log.info("endpoint %r reconnected to the broker", self.name)
        with suppress(Exception):
            await self._announce(PresenceStatus.ONLINE)
