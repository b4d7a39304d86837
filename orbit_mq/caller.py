"""The SDK's request/reply engine: one channel, direct reply-to, many calls in flight.

Calls to the same plugin made in the same event-loop turn are coalesced into one
`orbit.batch` message (each keeps its own id, deadline and error); a lone call goes out
as a plain request. This runs below aio-pika's convenience layer (straight aiormq frames)
because it is the hot path.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiormq
from aio_pika.abc import AbstractRobustConnection
from aiormq.abc import DeliveredMessage

from orbit_mq.broker import translated
from orbit_mq.config import Settings, broker_urls
from orbit_mq.errors import CallTimeout, ConnectionLost, EndpointNotFound
from orbit_mq.lanes import Lane
from orbit_mq.protocol import BATCH_TYPE, REPLY_TO, RPC_EXCHANGE
from orbit_mq.wire import BatchItem, batch_body, replies, request_properties

Target = tuple[str, str]  # (endpoint, plugin)

# Ids are a random per-process prefix and a counter: unique everywhere, and cheaper than a
# uuid4 per call on the hot path.
_ID_PREFIX = uuid.uuid4().hex[:16]
_ids = itertools.count(1)


# Coalescing limits: far below any endpoint's max_message_size (16 MiB by default).
SOLO_BYTES = 64 * 1024
BATCH_BYTES = 1024 * 1024


def new_id() -> str:
    return f"{_ID_PREFIX}-{next(_ids)}"


@dataclass
class Call:
    target: Target
    method: str
    body: bytes  # JSON object of parameters
    session: str | None
    deadline: float  # time.time()
    message_id: str
    persistent: bool = False
    sent_on: object | None = None  # the channel it was published on (its replies come there)
    id: str = field(default_factory=lambda: new_id())
    future: asyncio.Future[Any] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def deadline_ms(self) -> int:
        return int(self.deadline * 1000)

    def again(self) -> Call:
        """The same call (same message_id and deadline) to send once more."""
        return dataclasses.replace(
            self, id=new_id(), future=asyncio.get_running_loop().create_future(), sent_on=None
        )


def batches(calls: list[Call]) -> list[list[Call]]:
    """`calls` in sending order, grouped into batches of at most BATCH_BYTES of parameters;
    a call with more than SOLO_BYTES goes alone (merging big calls saves nothing and could
    push a batch over the endpoint's message size limit)."""
    groups: list[list[Call]] = []
    group: list[Call] = []
    size = 0
    for call in calls:
        solo = len(call.body) > SOLO_BYTES
        if group and (solo or size + len(call.body) > BATCH_BYTES):
            groups.append(group)
            group, size = [], 0
        if solo:
            groups.append([call])
            continue
        group.append(call)
        size += len(call.body)
    if group:
        groups.append(group)
    return groups


class Caller:
    def __init__(self, connection: AbstractRobustConnection, settings: Settings, user: str) -> None:
        self._connection = connection
        self._settings = settings
        self._user = user
        self._pending: dict[str, Call] = {}
        self._buffers: dict[tuple[Target, str | None], list[Call]] = {}
        self._flushing: set[asyncio.Future[None]] = set()
        # batch correlation id -> its calls, for an error that answers the batch as a whole
        self._batches: dict[str, list[Call]] = {}

    async def open(self) -> None:
        # Two lanes, each consuming its own direct replies: plain calls go without publisher
        # confirms on one broker (the endpoint's queue was checked before); calls that must
        # wait in a queue are persistent and confirmed, with mandatory routing. On a cluster
        # plain calls are confirmed too: a quorum queue whose leader's node just died refuses
        # a publish (basic.nack) until a new leader is elected, and without confirms that
        # refusal is silent, leaving the call to wait for its deadline (docs/scaling.md).
        self._fast = Lane(
            self._connection,
            "requests",
            confirms=len(broker_urls(self._settings.url)) > 1,
            setup=self._consume_replies,
            kept=True,
        )
        self._safe = Lane(
            self._connection,
            "waiting requests",
            confirms=True,
            setup=self._consume_replies,
            kept=True,
        )
        with translated("opening the request channels"):
            await self._fast.get()
            await self._safe.get()

    async def close(self) -> None:
        for lane in (self._fast, self._safe):
            await lane.close()

    async def _consume_replies(self, amqp: aiormq.Channel) -> None:
        await amqp.basic_consume(REPLY_TO, self._on_reply, no_ack=True)
        amqp.closing.add_done_callback(lambda _: self._fail_pending(amqp))

    def _fail_pending(self, amqp: aiormq.Channel) -> None:
        # Direct replies are bound to the channel that sent the request: once it is gone, no
        # reply can arrive. The request itself may still run.
        error = ConnectionLost(
            "the broker connection dropped while the call waited; it may or may not have run"
        )
        for call in list(self._pending.values()):
            if call.sent_on is amqp and not call.future.done():
                call.future.set_exception(error)

    async def call(self, call: Call) -> Any:
        """Send `call` and wait for its reply: the raw reply object (`{"ok": …}`)."""
        self._pending[call.id] = call
        # A plain timer instead of asyncio.wait_for: one handle, no extra future. Started
        # first, so a call waiting for the connection to come back still ends at its deadline.
        timer = asyncio.get_running_loop().call_later(
            max(call.deadline - time.time(), 0.001), _expire, call
        )
        try:
            if self._settings.coalesce and not call.persistent:
                self._enqueue(call)
            else:
                await self._publish_one(call)
            return await call.future
        finally:
            timer.cancel()
            self._pending.pop(call.id, None)

    def _enqueue(self, call: Call) -> None:
        key = (call.target, call.session)
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = []
            asyncio.get_running_loop().call_soon(self._start_flush, key)
        buffer.append(call)

    def _start_flush(self, key: tuple[Target, str | None]) -> None:
        calls = self._buffers.pop(key)
        task = asyncio.ensure_future(self._flush(calls))
        self._flushing.add(task)  # keep a reference until it is done
        task.add_done_callback(self._flushing.discard)

    async def _flush(self, calls: list[Call]) -> None:
        groups = batches(calls)
        if len(groups) == 1:
            await self._flush_group(groups[0])
        else:  # each waits for its own confirm (on a cluster), none for the one before
            await asyncio.gather(*(self._flush_group(group) for group in groups))

    async def _flush_group(self, group: list[Call]) -> None:
        try:
            if len(group) == 1:
                await self._publish_one(group[0])
            else:
                await self._publish_batch(group)
        except Exception as exc:
            for call in group:
                if not call.future.done():
                    call.future.set_exception(exc)

    async def _publish_one(self, call: Call) -> None:
        await self._publish(
            [call],
            call.target,
            call.body,
            method=call.method,
            correlation_id=call.id,
            message_id=call.message_id,
            session=call.session,
            deadline=call.deadline,
            persistent=call.persistent,
        )

    async def _publish_batch(self, calls: list[Call]) -> None:
        items = batch_body(
            BatchItem(c.id, c.method, c.body, c.message_id, c.deadline_ms, c.session) for c in calls
        )
        batch_id = new_id()
        deadline = max(call.deadline for call in calls)
        self._batches[batch_id] = calls
        loop = asyncio.get_running_loop()
        loop.call_later(max(deadline - time.time(), 0) + 1, self._batches.pop, batch_id, None)
        await self._publish(
            calls,
            calls[0].target,
            items,
            method=BATCH_TYPE,
            correlation_id=batch_id,
            message_id=batch_id,
            session=calls[0].session,
            deadline=deadline,
            persistent=False,
        )

    async def _publish(
        self,
        calls: list[Call],
        target: Target,
        body: bytes,
        *,
        method: str,
        correlation_id: str,
        message_id: str,
        session: str | None,
        deadline: float,
        persistent: bool,
    ) -> None:
        properties = request_properties(
            method=method,
            correlation_id=correlation_id,
            message_id=message_id,
            user=self._user,
            deadline=deadline,
            session=session,
            persistent=persistent,
        )
        with translated(f"publishing a request to {target[0]}.{target[1]}"):
            lane = self._safe if persistent else self._fast
            amqp = await lane.get(max(deadline - time.time(), 0.001))
            for call in calls:
                call.sent_on = amqp
            try:
                confirmation = await amqp.basic_publish(
                    body,
                    exchange=RPC_EXCHANGE,
                    routing_key=f"{target[0]}.{target[1]}",
                    properties=properties,
                    mandatory=persistent,
                    wait=persistent,
                )
            except aiormq.exceptions.DeliveryError:  # a nack: PublishRefused (transient)
                lane.renew(amqp)  # this channel would be refused again (lanes.py)
                raise
        if isinstance(confirmation, DeliveredMessage):
            raise EndpointNotFound(
                f"nothing serves {target[0]}.{target[1]}", endpoint=target[0], plugin=target[1]
            )

    async def _on_reply(self, message: DeliveredMessage) -> None:
        properties = message.header.properties
        for call_id, reply in replies(message.body, properties.message_type):
            if call_id is not None:
                self._resolve(call_id, reply)
            elif properties.correlation_id in self._batches:  # refused before any call ran
                for call in self._batches.pop(properties.correlation_id):
                    self._resolve(call.id, reply)
            else:
                self._resolve(properties.correlation_id, reply)

    def _resolve(self, call_id: str | None, reply: Any) -> None:
        call = self._pending.get(call_id or "")
        if call is not None and not call.future.done():
            call.future.set_result(reply)


def _expire(call: Call) -> None:
    if not call.future.done():
        call.future.set_exception(
            CallTimeout(
                f"no reply from {call.target[0]}.{call.target[1]}.{call.method} before the deadline"
            )
        )
