"""Subscriptions to orbit.events and orbit.topology, as async iterators of typed messages.

A subscription rides out broker restarts: its channel is reopened, its queue declared and bound
again, and consumption resumes, without the iterator raising. Each message is delivered to the
caller once, whatever the wire did (docs/protocol.md §9): repeats of a message id are dropped,
and of a sequence (ids `{key}:{n}`, e.g. a job's `{job_id}:{seq}`) only increasing numbers
pass, so a job's transitions come exactly once and in order.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections import OrderedDict
from typing import Any, Generic, Self, TypeVar, cast

import aiormq
from aio_pika.abc import AbstractRobustConnection
from aiormq.abc import DeliveredMessage
from pydantic import BaseModel, ValidationError

from orbit_mq.broker import quorum_arguments, translated
from orbit_mq.errors import ConfigError
from orbit_mq.lanes import Lane, quietly
from orbit_mq.protocol import check_name, private_subscription_queue, subscription_queue
from orbit_mq.shorten import shorten

log = logging.getLogger("orbit_mq.subscribe")

M = TypeVar("M", bound=BaseModel)

MEMORY = 100_000  # message ids and sequences remembered per subscription
_SEQUENCE_ID = re.compile(r"^(.+):(\d+)$")


def durable_queue_name(user: str, name: str) -> str:
    """The queue of broker user `user`'s durable subscription `name`: theirs alone, since
    the broker gives each user rights on queues under their own owner word only."""
    return subscription_queue(user, check_name("subscription", name))


class Seen:
    """What a subscription already delivered: message ids, and the last number of each
    sequence. Bounded: the oldest entries are forgotten first."""

    def __init__(self, size: int = MEMORY) -> None:
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._last: OrderedDict[tuple[str, str], int] = OrderedDict()

    def first_time(self, routing_key: str, message_id: str | None) -> bool:
        """Whether a message is new, remembering it if so (one without an id always is)."""
        if not message_id:
            return True
        if message_id in self._ids:
            return False
        match = _SEQUENCE_ID.match(message_id)
        if match is not None:
            stream, number = (routing_key, match[1]), int(match[2])
            if self._last.get(stream, -1) >= number:
                return False  # a repeat, or older than what was delivered
            self._last[stream] = number
            self._last.move_to_end(stream)
            self._trim(self._last)
        self._ids[message_id] = None
        self._trim(self._ids)
        return True

    def _trim(self, table: OrderedDict[Any, Any]) -> None:
        while len(table) > self.size:
            table.popitem(last=False)


class Subscription(Generic[M]):
    """Messages from one exchange matching topic patterns, in the order the broker holds them.

    A durable subscription (`durable="name"`) uses the queue `orbit.sub.{user}.{name}` (`user`:
    the owner word of the broker user subscribing), which keeps
    events while nobody listens; each event is acked when the next one is asked for (or at
    `close()`), so an event being handled when the subscriber dies is delivered again (a new
    subscription delivers it once more: at least once across processes). A non-durable one
    uses a private queue that lives as long as the connection: events published while it is
    being re-established after a broker restart are not seen (use a durable one, or, for a
    job, `Job.watch`, which reads them from the endpoint's journal). Either way at most
    `prefetch` messages wait in this process: a reader that falls behind leaves the rest in
    its queue on the broker and catches up from there.
    """

    def __init__(
        self,
        connection: AbstractRobustConnection,
        exchange: str,
        patterns: tuple[str, ...],
        model: type[M],
        durable: str | None = None,
        prefetch: int = 256,
        user: str = "",
        queue_type: str = "classic",
    ) -> None:
        if not patterns:
            raise ConfigError("subscribe needs at least one routing-key pattern, e.g. 'hpc1.#'")
        self._connection = connection
        self._exchange = exchange
        self.patterns = patterns
        self._model = model
        self._durable = durable
        self._prefetch = prefetch
        # A durable queue of a cluster is a quorum queue where request queues are: a classic
        # one lives on one node, and while that node is down its events are dropped.
        self._arguments = quorum_arguments(queue_type) if durable else {}
        self.queue_name = (
            durable_queue_name(user, durable)
            if durable
            else private_subscription_queue(uuid.uuid4().hex)
        )
        self._lane: Lane | None = None
        self._inbox: asyncio.Queue[DeliveredMessage | None] = asyncio.Queue()
        self._unacked: DeliveredMessage | None = None
        self._seen = Seen()
        self._closed = False

    async def start(self) -> Self:
        """Bind the queue now (events published after this are kept for the iterator)."""
        if self._lane is not None:
            return self
        if self._closed:
            raise ConfigError("this subscription was closed; subscribe again")
        self._lane = Lane(
            self._connection,
            f"subscription {self.queue_name}",
            prefetch=self._prefetch,
            setup=self._setup,
            kept=True,
        )
        with translated(f"subscribing to {self._exchange} {', '.join(self.patterns)}"):
            await self._lane.get()
        return self

    async def _setup(self, amqp: aiormq.Channel) -> None:
        """Declare and bind the queue and consume it (again after every reconnection)."""
        durable = bool(self._durable)
        await amqp.queue_declare(
            self.queue_name,
            durable=durable,
            exclusive=not durable,
            auto_delete=not durable,
            arguments=self._arguments,
        )
        for pattern in self.patterns:
            await amqp.queue_bind(self.queue_name, self._exchange, routing_key=pattern)
        # Acknowledged as they are taken (durable ones: when the next is asked for), so that
        # at most `prefetch` wait in this process and a slow reader leaves the rest in its
        # queue on the broker (flow control), instead of in memory here.
        await amqp.basic_consume(self.queue_name, self._inbox.put, no_ack=False)

    async def close(self) -> None:
        """Stop consuming: nothing is left consuming the queue, and what the caller has not
        received goes back to it (a durable queue keeps it for the next subscription)."""
        if self._closed:
            return
        self._closed = True
        await self._ack_previous()
        if self._lane is not None:
            await self._lane.close()  # closing the channel ends its consumer
        self._inbox.put_nowait(None)  # ends an iteration waiting in __anext__

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *_: Any) -> None:
        await self.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> M:
        await self.start()
        await self._ack_previous()
        while True:
            message = await self._inbox.get()
            if message is None or self._closed:
                self._inbox.put_nowait(None)
                raise StopAsyncIteration
            item = self._accept(message)
            if item is not None and self._durable:
                self._unacked = message
            else:
                await self._ack(message)
            if item is not None:
                return item

    def _accept(self, message: DeliveredMessage) -> M | None:
        """The message as a model, or None for a repeat or a malformed one."""
        properties = message.header.properties
        routing_key = message.routing_key or ""
        if not self._seen.first_time(routing_key, properties.message_id):
            return None
        try:
            return self._model.model_validate_json(message.body)
        except ValidationError as exc:
            log.warning(
                "skipping a malformed message on %s (%s): %s",
                self._exchange,
                shorten(routing_key),
                shorten(str(exc)),
            )
            return None

    async def _ack_previous(self) -> None:
        if self._unacked is not None:
            message, self._unacked = self._unacked, None
            await self._ack(message)

    async def _ack(self, message: DeliveredMessage) -> None:
        # On the channel it came on: after a reconnection that channel is closed and the ack
        # is not sent (its tag means nothing on the new channel); the broker delivers the
        # message again and `Seen` drops the repeat.
        if not message.channel.is_closed:
            await quietly(message.channel.basic_ack(cast(int, message.delivery_tag)))
