"""Publishes journaled events in the order they were written, with publisher confirms.

An event is first committed to the journal's outbox, then published; it leaves the outbox as
soon as the broker confirmed it. Only the events whose confirm did not arrive (the connection
dropped, the broker restarted, a nack) are published again, oldest first, after a pause or at
the next start. A repeat is an exact copy: the same body and the same `message_id`, the
event's dedupe key (docs/protocol.md §9). The wire is therefore at-least-once; subscribers
drop repeats by that key (the SDK does).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import aiormq

from orbit_mq.protocol import (
    AUDIT_PLUGIN,
    AUDIT_TOPIC,
    EVENTS_EXCHANGE,
    AuditRecord,
    Event,
    audit_key,
    event_key,
    legacy_event_key,
)
from orbit_mq.retry import retrying
from orbit_mq.waiting import wait_within
from orbit_mq.wire import event_properties
from orbit_mq.workers.journal import Journal, OutboxEntry

ChannelGetter = Callable[[], Awaitable[aiormq.abc.AbstractChannel]]
Renew = Callable[[aiormq.abc.AbstractChannel], None]
IDLE_CHECK = 1.0  # s: the outbox looks at the journal at least this often
BATCH = 500  # events published per confirm round


class Unconfirmed(Exception):
    """Events the broker did not confirm: they are published again."""


def _any(error: BaseException) -> bool:
    return isinstance(error, Exception)


class Outbox:
    def __init__(
        self, journal: Journal, channel: ChannelGetter, renew: Renew | None = None
    ) -> None:
        """`renew` replaces a channel the broker refused a publish on (Lane.renew)."""
        self.journal = journal
        self._channel = channel
        self._renew = renew
        self._wake = asyncio.Event()
        self._empty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._attempted: set[int] = set()  # ids sent at least once by this process
        self.republished = 0  # events sent again because their confirm never came

    def add(self, exchange: str, routing_key: str, body: bytes, message_id: str) -> None:
        """Commit an event to the outbox; it is published soon after, in order."""
        self.journal.queue_event(exchange, routing_key, body, message_id)
        self._empty.clear()
        self._wake.set()

    def start(self) -> None:
        self._wake.set()  # whatever a previous run left behind goes out first
        self._task = asyncio.create_task(self._run(), name="orbit-outbox")

    async def drain(self, timeout: float) -> bool:
        """Wait until everything is published (True) or `timeout` passes (False)."""
        try:
            await wait_within(self._empty.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            with suppress(TimeoutError):
                await wait_within(self._wake.wait(), IDLE_CHECK)
            self._wake.clear()
            # While the broker is away, the rest waits and goes out again (backing off).
            async for trying in retrying(forever=True, when=_any, what="publishing events"):
                with trying:
                    await self._publish_pending()

    async def _publish_pending(self) -> None:
        """Publish what the outbox holds, oldest first, until it is empty; an event leaves it
        when its own confirm arrives, and a failure leaves the rest for the next try."""
        while entries := self.journal.pending_events(BATCH):
            self.republished += sum(entry.id in self._attempted for entry in entries)
            self._attempted.update(entry.id for entry in entries)
            confirmed, failure = await self._publish(entries)
            self.journal.published(confirmed)
            self._attempted.difference_update(confirmed)
            if failure is not None:
                left = len(entries) - len(confirmed)
                raise Unconfirmed(f"{left} events wait for the broker's confirm ({failure})")
        self._empty.set()

    async def _publish(self, entries: list[OutboxEntry]) -> tuple[list[int], BaseException | None]:
        """Publish `entries` in order; the ids the broker confirmed, and why any was not."""
        try:
            amqp = await self._channel()
        except Exception as exc:
            return [], exc
        # Started in order on one channel, so the broker receives them in order; the
        # confirms are awaited together.
        confirms = [
            asyncio.ensure_future(
                amqp.basic_publish(
                    entry.body,
                    exchange=entry.exchange,
                    routing_key=entry.routing_key,
                    properties=event_properties(entry.message_id),
                )
            )
            for entry in entries
        ]
        results = await asyncio.gather(*confirms, return_exceptions=True)
        confirmed: list[int] = []
        failure: BaseException | None = None
        if self._renew is not None and any(
            isinstance(result, aiormq.exceptions.DeliveryError) for result in results
        ):
            self._renew(amqp)  # a nack: this channel would be refused again (orbit_mq/lanes.py)
        for entry, result in zip(entries, results, strict=True):
            if isinstance(result, aiormq.spec.Basic.Ack):
                confirmed.append(entry.id)
            elif failure is None:
                failure = (
                    result
                    if isinstance(result, BaseException)
                    else RuntimeError(f"the broker refused event {entry.message_id} ({result})")
                )
        return confirmed, failure


class EventWriter:
    """Puts an endpoint's events in its outbox under their routing keys (docs/protocol.md §9):
    each about one owner's work under that owner's word, audit events under the admins' key,
    and, where `legacy` is set, every owned event once more under its protocol 1 key."""

    def __init__(self, endpoint: str, outbox: Outbox, legacy: bool = False) -> None:
        self.endpoint = endpoint
        self.outbox = outbox
        self.legacy = legacy

    def publish(
        self, plugin: str, topic: str, data: dict[str, Any], key: str | None, owner: str
    ) -> None:
        message_id = key or uuid.uuid4().hex
        body = self._body(message_id, plugin, topic, data, owner)
        self.outbox.add(
            EVENTS_EXCHANGE, event_key(self.endpoint, plugin, topic, owner), body, message_id
        )
        if self.legacy:
            key1 = legacy_event_key(self.endpoint, plugin, topic)
            self.outbox.add(EVENTS_EXCHANGE, key1, body, message_id)

    def audit(self, record: AuditRecord) -> None:
        message_id = uuid.uuid4().hex
        body = self._body(message_id, AUDIT_PLUGIN, AUDIT_TOPIC, record.model_dump(mode="json"))
        self.outbox.add(EVENTS_EXCHANGE, audit_key(self.endpoint), body, message_id)

    def _body(
        self,
        message_id: str,
        plugin: str,
        topic: str,
        data: dict[str, Any],
        owner: str | None = None,
    ) -> bytes:
        event = Event(
            id=message_id, endpoint=self.endpoint, plugin=plugin, topic=topic, owner=owner,
            data=data,
        )  # fmt: skip
        return event.model_dump_json().encode()
