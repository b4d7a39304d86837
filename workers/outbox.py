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
from collections.abc import Awaitable, Callable
from contextlib import suppress

import aiormq

from orbit_mq.wire import event_properties
from orbit_mq.workers.journal import Journal, OutboxEntry
from orbit_mq.workers.logs import bounded_logger

log = bounded_logger("orbit_mq.endpoint")

ChannelGetter = Callable[[], Awaitable[aiormq.abc.AbstractChannel]]
RETRY_INTERVAL = 1.0  # s between attempts while the broker is away
BATCH = 500  # events published per confirm round


class Outbox:
    def __init__(self, journal: Journal, channel: ChannelGetter) -> None:
        self.journal = journal
        self._channel = channel
        self._wake = asyncio.Event()
        self._empty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.republished = 0  # events sent again because their confirm never came

    def add(self, exchange: str, routing_key: str, body: bytes, message_id: str) -> None:
        """Commit an event to the outbox; it is published soon after, in order."""
        self.journal.add_event(exchange, routing_key, body, message_id)
        self._empty.clear()
        self._wake.set()

    def start(self) -> None:
        self._wake.set()  # whatever a previous run left behind goes out first
        self._task = asyncio.create_task(self._run(), name="orbit-outbox")

    async def drain(self, timeout: float) -> bool:
        """Wait until everything is published (True) or `timeout` passes (False)."""
        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        attempted: set[int] = set()  # ids sent at least once by this process
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RETRY_INTERVAL)
            self._wake.clear()
            entries = self.journal.pending_events(BATCH)
            if not entries:
                self._empty.set()
                continue
            self.republished += sum(entry.id in attempted for entry in entries)
            attempted.update(entry.id for entry in entries)
            confirmed, failure = await self._publish(entries)
            self.journal.published(confirmed)
            attempted.difference_update(confirmed)
            if failure is not None:  # the broker is away: the rest waits, and goes out again
                log.warning(
                    "%d events wait for the broker's confirm (%s); they are published again",
                    len(entries) - len(confirmed),
                    failure,
                )
                continue
            self._wake.set()  # there may be more

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
