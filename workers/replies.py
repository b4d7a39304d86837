"""Sending replies: on the request's own channel (`reply_on_lane`), and on a cluster over a
connection of their own, each confirmed, so that a caller whose node is down costs that
connection alone (`Replies`).

RabbitMQ 3.10 crashes the channel that publishes to the direct reply-to address of a node that
is not running (`{case_clause,error}` in `rabbit_channel:deliver_reply`), and the channel's
connection goes with it (INTERNAL_ERROR). After a node dies, requests its callers sent are
still queued, or come again unacknowledged: their replies are such addresses. On the endpoint's
own connection that would take its consumers and events down again and again.

So, where the URL names several nodes, replies go through `Replies`. When its connection is
lost with INTERNAL_ERROR the replies are sent one at a time until one is lost alone: its address
(the caller's channel) is suspect, and it is tried on the next connection, the next node. Lost
alone on two nodes it is dead, is remembered, and later replies to it are dropped (that channel
went with its node; a caller that retries gets the stored reply of a deduplicated call). One
node is not enough: a node that hung and woke up alone (its peers gave up on it) crashes on the
address of a live caller on another node as well.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from contextlib import suppress

import aiormq
from aio_pika.abc import AbstractRobustConnection

from orbit_mq.broker import Route, connect
from orbit_mq.config import Settings
from orbit_mq.errors import ConnectionLost
from orbit_mq.lanes import Lane, quietly
from orbit_mq.wire import reply_properties
from orbit_mq.workers.logs import bounded_logger

log = bounded_logger("orbit_mq.endpoint")

DEAD_ADDRESSES = 1000  # remembered dead reply-to channels (the oldest are forgotten)
CAREFUL_TRIES = 5  # a lone reply lost for another reason (its node went) is sent again
SUSPECT_CRASHES = 3  # lone crashes on one node that make an address dead (else: two nodes)
SEND_TIMEOUT = 30.0  # s to wait for the replies connection to come back
LOST = (aiormq.exceptions.AMQPError, ConnectionError, RuntimeError, ConnectionLost)


def channel_address(reply_to: str) -> str:
    """`amq.rabbitmq.reply-to.{channel}.{key}` without its key: the caller's channel (base64
    has no dots)."""
    return reply_to.rsplit(".", 1)[0]


def _crashed(error: BaseException) -> bool:
    """Whether the broker closed the connection with INTERNAL_ERROR (a crashed channel)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:  # bounded: each link once
        if isinstance(current, aiormq.exceptions.ConnectionInternalError):
            return True
        if "INTERNAL_ERROR" in str(current):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


async def reply_on_lane(
    lane: Lane, reply_to: str, correlation_id: str | None, body: bytes, message_type: str | None
) -> None:
    """Publish a reply on `lane`, the channel its request came on (straight to aiormq: replies
    are the hot path). A reply that cannot be sent is dropped: the caller's channel went with
    the connection, and a caller that retries gets the stored answer of a deduplicated call."""
    # Direct reply-to addresses take mandatory=False (see docs/protocol.md).
    properties = reply_properties(correlation_id, message_type)
    amqp = lane.current
    if amqp is None:
        log.info("%s: a reply was dropped: the broker connection is down", lane.name)
        return
    # wait=False queues the frame without waiting for the socket, so the ack that follows
    # goes out in the same write.
    try:
        await amqp.basic_publish(body, routing_key=reply_to, properties=properties, wait=False)
    except (aiormq.exceptions.AMQPError, RuntimeError) as exc:
        log.info("%s: a reply was dropped: %s", lane.name, exc)


class Replies:
    def __init__(self, settings: Settings, name: str, route: Route | None = None) -> None:
        self._settings = settings
        self._name = name
        self._route = route
        self._connection: AbstractRobustConnection | None = None
        self._lane: Lane | None = None
        self._dead: OrderedDict[str, None] = OrderedDict()
        self._suspects: OrderedDict[str, list[str]] = OrderedDict()  # address -> nodes
        self._careful = False  # after a lost connection: one reply at a time
        self._one_at_a_time = asyncio.Lock()
        self._waiting = 0  # replies waiting for their turn to go alone
        self._generation = 0  # connections made after the first
        self._reconnected = asyncio.Event()

    async def open(self) -> None:
        self._connection = await connect(
            self._settings, f"orbit-mq endpoint {self._name} replies", self._route
        )
        self._lane = Lane(self._connection, f"{self._name} replies", confirms=True, kept=True)
        self._connection.reconnect_callbacks.add(self._on_reconnect)
        self._connection.close_callbacks.add(self._on_close)
        await self._lane.get()

    def _on_close(self, *_: object) -> None:
        self._careful = True  # at once: no reply may go beside the first lone one after this

    def _on_reconnect(self, *_: object) -> None:
        self._generation += 1
        self._reconnected.set()

    async def _until_reconnected(self, generation: int, timeout: float) -> None:
        """Until a connection newer than `generation` is made (TimeoutError after `timeout`
        s): the lost one may still look open for a moment."""
        async with asyncio.timeout(timeout):
            while self._generation == generation:
                self._reconnected.clear()
                await self._reconnected.wait()

    async def close(self) -> None:
        if self._lane is not None:
            await self._lane.close()
        if self._connection is not None:
            await quietly(self._connection.close())

    async def send(
        self, reply_to: str, correlation_id: str | None, body: bytes, message_type: str | None
    ) -> None:
        address = channel_address(reply_to)
        if address in self._dead:
            log.info("%s replies: dropped a reply to a channel whose node is down", self._name)
            return
        channel = self._lane.current if self._lane is not None else None
        # Full speed only on an open channel: a reply that would wait for the next connection
        # waits its turn to go alone, so that nothing else is sent beside a lone reply.
        if not self._careful and channel is not None:
            try:
                await self._publish(reply_to, correlation_id, body, message_type, channel)
                return
            except LOST:
                self._careful = True  # this one, or another sent with it, was the cause
        self._waiting += 1
        try:
            async with self._one_at_a_time:
                await self._send_alone(address, reply_to, correlation_id, body, message_type)
        finally:
            self._waiting -= 1

    async def _send_alone(
        self,
        address: str,
        reply_to: str,
        correlation_id: str | None,
        body: bytes,
        message_type: str | None,
    ) -> None:
        for _ in range(CAREFUL_TRIES):
            if address in self._dead:
                log.info("%s replies: dropped a reply to a channel whose node is down", self._name)
                return
            generation = self._generation
            url = getattr(self._connection, "url", None)  # the node it is on (broker.py)
            node = f"{url.host}:{url.port}" if url is not None else ""
            try:
                await self._publish(reply_to, correlation_id, body, message_type)
                # Back to full speed once none waits to go alone: until then nothing is sent
                # beside a lone reply, so a crash it meets is its own.
                self._careful = self._waiting > 1
                self._suspects.pop(address, None)
                return
            except LOST as exc:
                if _crashed(exc):  # alone, so this address crashed the channel
                    self._suspect(address, node)
            # The next try goes on the connection made after this loss, or, when none comes
            # (the connection was fine, the channel alone was lost), after a short wait.
            with suppress(TimeoutError):
                await self._until_reconnected(generation, self._settings.reconnect_interval * 2)
        log.info("%s replies: a reply was dropped after %d tries", self._name, CAREFUL_TRIES)

    def _suspect(self, address: str, node: str) -> None:
        """A lone reply to `address` crashed the connection on `node`. Dead once it did so on
        two nodes (or SUSPECT_CRASHES times): a node that was hung and woke up alone (its peers
        gave up on it) crashes on the address of a live caller on another node too."""
        nodes = self._suspects.setdefault(address, [])
        nodes.append(node)
        while len(self._suspects) > DEAD_ADDRESSES:
            self._suspects.popitem(last=False)
        if len(set(nodes)) > 1 or len(nodes) >= SUSPECT_CRASHES:
            del self._suspects[address]
            self._remember_dead(address)

    def _remember_dead(self, address: str) -> None:
        log.warning(
            "%s replies: a caller's channel is on a node that is down (the broker closed the "
            "replies connection); replies to it are dropped",
            self._name,
        )
        self._dead[address] = None
        while len(self._dead) > DEAD_ADDRESSES:
            self._dead.popitem(last=False)

    async def _publish(
        self,
        reply_to: str,
        correlation_id: str | None,
        body: bytes,
        message_type: str | None,
        channel: aiormq.abc.AbstractChannel | None = None,
    ) -> None:
        assert self._lane is not None
        amqp = channel or await self._lane.get(SEND_TIMEOUT)
        # Direct reply-to addresses take mandatory=False (see docs/protocol.md); the confirm
        # says the broker handled it (a lost connection before it: the reply may not be sent).
        await amqp.basic_publish(
            body, routing_key=reply_to, properties=reply_properties(correlation_id, message_type)
        )
