"""Subscriptions to orbit.events and orbit.topology, as async iterators of typed messages."""

from __future__ import annotations

import logging
from typing import Any, Generic, Self, TypeVar

from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueueIterator,
    AbstractRobustConnection,
)
from pydantic import BaseModel, ValidationError

from orbit_mq.broker import translated
from orbit_mq.errors import ConfigError
from orbit_mq.protocol import check_name

log = logging.getLogger("orbit_mq.subscribe")

M = TypeVar("M", bound=BaseModel)


def durable_queue_name(name: str) -> str:
    return f"orbit.sub.{check_name('subscription', name)}"


class Subscription(Generic[M]):
    """Messages from one exchange matching topic patterns, in the order the broker holds them.

    A durable subscription (`durable="name"`) uses the queue `orbit.sub.{name}`, which keeps
    events while nobody listens; each event is acked when the next one is asked for, so an
    event being handled when the subscriber dies is delivered again.
    """

    def __init__(
        self,
        connection: AbstractRobustConnection,
        exchange: str,
        patterns: tuple[str, ...],
        model: type[M],
        durable: str | None = None,
        prefetch: int = 256,
    ) -> None:
        if not patterns:
            raise ConfigError("subscribe needs at least one routing-key pattern, e.g. 'hpc1.#'")
        self._connection = connection
        self._exchange = exchange
        self.patterns = patterns
        self._model = model
        self._durable = durable
        self._prefetch = prefetch
        self._channel: AbstractChannel | None = None
        self._iterator: AbstractQueueIterator | None = None
        self._unacked: AbstractIncomingMessage | None = None

    async def start(self) -> Self:
        """Bind the queue now (events published after this are kept for the iterator)."""
        if self._iterator is not None:
            return self
        with translated(f"subscribing to {self._exchange} {', '.join(self.patterns)}"):
            self._channel = await self._connection.channel()
            await self._channel.set_qos(prefetch_count=self._prefetch)
            if self._durable:
                queue = await self._channel.declare_queue(
                    durable_queue_name(self._durable), durable=True
                )
            else:
                queue = await self._channel.declare_queue(exclusive=True, auto_delete=True)
            for pattern in self.patterns:
                await queue.bind(self._exchange, pattern)
            self._iterator = queue.iterator(no_ack=not self._durable)
            await self._iterator.consume()
        return self

    async def close(self) -> None:
        await self._ack_previous()
        if self._iterator is not None:
            await self._iterator.close()
        if self._channel is not None and not self._channel.is_closed:
            await self._channel.close()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *_: Any) -> None:
        await self.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> M:
        await self.start()
        assert self._iterator is not None
        await self._ack_previous()
        while True:
            with translated("reading a subscription"):
                message = await self._iterator.__anext__()
            try:
                item = self._model.model_validate_json(message.body)
            except ValidationError as exc:
                log.warning("skipping a malformed message on %s: %s", self._exchange, exc)
                if self._durable:
                    await message.ack()
                continue
            if self._durable:
                self._unacked = message
            return item

    async def _ack_previous(self) -> None:
        if self._unacked is not None:
            message, self._unacked = self._unacked, None
            with translated("acknowledging an event"):
                await message.ack()
