"""Channels that outlive reconnections: part of the broker seam (see broker.py).

aio-pika's robust connection re-establishes the TCP connection after a broker restart; the
channels on it are ours. A `Lane` is one aiormq channel, opened on first use and again after
it was lost, with a `setup` that re-declares what it needs (queues, bindings, its consumer).
A lane that consumes is `kept` open: reopened as soon as the connection is back, or shortly
after the broker closed the channel alone (its reason is logged). Delivery tags belong to the
channel they came on: an ack for a delivery of a closed channel is never sent on a new one.

(aio-pika's robust channels restore themselves too, but a channel closed while its connection
went down could stay closed for good, which no caller can repair; this keeps that in one place.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any, cast

import aiormq
from aio_pika.abc import AbstractRobustConnection

from orbit_mq.errors import ConnectionLost

log = logging.getLogger("orbit_mq.broker")

Setup = Callable[[aiormq.Channel], Awaitable[None]]
REOPEN_PAUSE = 1.0  # s before a channel the broker closed alone is opened again
MAX_REOPEN_PAUSE = 30.0


class Lane:
    def __init__(
        self,
        connection: AbstractRobustConnection,
        name: str,
        *,
        confirms: bool = False,
        prefetch: int | None = None,
        setup: Setup | None = None,
        kept: bool = False,
    ) -> None:
        self.connection = connection
        self.name = name
        self.confirms = confirms
        self.prefetch = prefetch
        self.setup = setup
        self.kept = kept
        self.opened = 0  # channels opened so far (the first, then one per loss)
        self._channel: aiormq.Channel | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._reopening: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Future[None]] = set()  # channels being closed by `renew`
        if kept:
            connection.reconnect_callbacks.add(self._reconnected)

    @property
    def current(self) -> aiormq.Channel | None:
        """The open channel, if there is one."""
        channel = self._channel
        return channel if channel is not None and not channel.is_closed else None

    async def get(self, timeout: float | None = None) -> aiormq.Channel:
        """The lane's open channel, opening one (and running `setup`) if needed; waits up to
        `timeout` s for a lost connection to come back, then raises ConnectionLost."""
        if self._closed:
            raise ConnectionLost(f"{self.name}: closed")
        channel = self.current
        if channel is not None:
            return channel
        try:
            async with asyncio.timeout(timeout):
                return await self._open()
        except TimeoutError:
            raise ConnectionLost(
                f"{self.name}: the broker connection did not come back within {timeout:.0f} s"
            ) from None

    async def _open(self) -> aiormq.Channel:
        async with self._lock:
            channel = self.current
            if channel is not None or self._closed:
                if channel is None:
                    raise ConnectionLost(f"{self.name}: closed")
                return channel
            await self.connection.ready()
            transport = self.connection.transport
            if transport is None:
                raise ConnectionLost(f"{self.name}: the broker connection is down")
            try:
                opened = await transport.connection.channel(publisher_confirms=self.confirms)
            except (aiormq.exceptions.AMQPConnectionError, ConnectionError, RuntimeError) as exc:
                raise ConnectionLost(f"{self.name}: the broker connection dropped ({exc})") from exc
            channel = cast(aiormq.Channel, opened)
            try:
                if self.prefetch:
                    await channel.basic_qos(prefetch_count=self.prefetch)
                if self.setup is not None:
                    await self.setup(channel)
            except BaseException as exc:
                await quietly(channel.close())
                if isinstance(exc, aiormq.exceptions.AMQPConnectionError | ConnectionError):
                    raise ConnectionLost(
                        f"{self.name}: the broker connection dropped ({exc})"
                    ) from exc
                raise
            self._channel = channel
            self.opened += 1
            channel.closing.add_done_callback(self._lost)
            channel.on_consumer_cancel_callbacks.add(self._cancelled)
            return channel

    def _lost(self, closing: asyncio.Future[Any]) -> None:
        if self._closed or not self.kept:
            return
        reason = None if closing.cancelled() else closing.exception()
        transport = self.connection.transport
        if transport is None or transport.connection.is_closed:
            return  # the connection went: `_reconnected` reopens the lane
        if isinstance(reason, aiormq.exceptions.ChannelClosed):  # the broker's own decision
            log.warning(
                "the broker closed the channel of %s: %s; it is opened again in %.0f s",
                self.name,
                reason,
                REOPEN_PAUSE,
            )
        self._reopen(REOPEN_PAUSE)

    def _cancelled(self, frame: aiormq.spec.Basic.Cancel) -> None:
        """The broker cancelled a consumer (its queue was deleted, or moved): a kept lane
        starts over on a new channel, declaring and consuming again."""
        channel = self.current
        if self._closed or not self.kept or channel is None:
            return
        log.warning(
            "the broker cancelled consumer %s of %s; consuming again", frame.consumer_tag, self.name
        )
        self._channel = None  # `get` opens a new one; the old one is closed first
        self._reopen(REOPEN_PAUSE, stale=channel)

    def renew(self, refused: aiormq.abc.AbstractChannel) -> None:
        """Replace a channel the broker answered a publish on with basic.nack: `get` opens a
        new one, and `refused` is closed (what waited on it, e.g. direct replies, fails as on
        a lost channel). RabbitMQ 3.10 refuses every later publish of a channel to a quorum
        queue once its first one met the queue without a leader (its node had just died),
        even after a new leader is elected; a new channel is taken at once (docs/scaling.md)."""
        if self._channel is refused:
            self._channel = None
            log.warning("%s: the broker refused a publish; the channel is replaced", self.name)
        task = asyncio.ensure_future(quietly(refused.close()))
        self._closing.add(task)  # a reference until it is done
        task.add_done_callback(self._closing.discard)

    async def _reconnected(self, *_: Any) -> None:
        self._reopen(0)

    def _reopen(self, pause: float, stale: aiormq.Channel | None = None) -> None:
        if self._reopening is not None and not self._reopening.done():
            return
        self._reopening = asyncio.ensure_future(self._reopen_after(pause, stale))

    async def _reopen_after(self, pause: float, stale: aiormq.Channel | None) -> None:
        """Open the lane again, after `pause` s, with longer pauses while that fails (a pause
        between attempts, not a synchronisation); a new connection starts it over."""
        if stale is not None:
            await quietly(stale.close())
        while not self._closed:
            await asyncio.sleep(pause)
            try:
                await self.get()
                return
            except Exception as exc:
                pause = min(max(pause * 2, REOPEN_PAUSE), MAX_REOPEN_PAUSE)
                log.warning("%s: not reopened (%s); trying again in %.0f s", self.name, exc, pause)

    async def close(self) -> None:
        """Close the channel and stop keeping it open."""
        self._closed = True
        self.connection.reconnect_callbacks.discard(self._reconnected)
        if self._reopening is not None:
            self._reopening.cancel()
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            await quietly(channel.close())


async def quietly(action: Awaitable[Any]) -> None:
    """Await a broker call whose failure only means the channel or connection is gone (what it
    would have settled, the broker settles by itself: an unacked delivery is redelivered)."""
    with suppress(aiormq.exceptions.AMQPError, ConnectionError, RuntimeError):
        await action


@asynccontextmanager
async def spare_channel(
    connection: AbstractRobustConnection, name: str, timeout: float | None = None
) -> AsyncIterator[aiormq.Channel]:
    """A channel for one short exchange (a passive declare, a discovery round), closed after;
    an error the broker answers with closes only it."""
    lane = Lane(connection, name)
    try:
        yield await lane.get(timeout)
    finally:
        await lane.close()
