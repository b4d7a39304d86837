"""Publishes journaled events in the order they were written, with publisher confirms.

An event is first committed to the journal's outbox, then published; it leaves the outbox
only when the broker confirmed it. After a crash or a broker outage the rest is published
again, oldest first. A consumer may therefore see an event twice after a crash (never zero
times); job events carry a per-job `seq` to drop such repeats.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress

import aiormq

from orbit_mq.protocol import CONTENT_TYPE
from orbit_mq.workers.journal import Journal, OutboxEntry

log = logging.getLogger("orbit_mq.endpoint")

ChannelGetter = Callable[[], Awaitable[aiormq.abc.AbstractChannel]]
RETRY_INTERVAL = 1.0
BATCH = 500


class Outbox:
    def __init__(self, journal: Journal, channel: ChannelGetter) -> None:
        self.journal = journal
        self._channel = channel
        self._wake = asyncio.Event()
        self._empty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, exchange: str, routing_key: str, body: bytes) -> None:
        """Commit an event to the outbox; it is published soon after, in order."""
        self.journal.add_event(exchange, routing_key, body)
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
        while True:
            with suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RETRY_INTERVAL)
            self._wake.clear()
            entries = self.journal.pending_events(BATCH)
            if not entries:
                self._empty.set()
                continue
            try:
                await self._publish(entries)
            except Exception as exc:  # the broker is away: keep the events, try again soon
                log.warning("%d events wait for the broker: %s", len(entries), exc)
                continue
            self.journal.published([entry.id for entry in entries])
            self._wake.set()  # there may be more

    async def _publish(self, entries: list[OutboxEntry]) -> None:
        amqp = await self._channel()
        properties = aiormq.spec.Basic.Properties(content_type=CONTENT_TYPE, delivery_mode=2)
        # Started in order on one channel, so the broker receives them in order; the
        # confirms are awaited together.
        confirms = [
            asyncio.ensure_future(
                amqp.basic_publish(
                    entry.body,
                    exchange=entry.exchange,
                    routing_key=entry.routing_key,
                    properties=properties,
                )
            )
            for entry in entries
        ]
        results = await asyncio.gather(*confirms, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
            if isinstance(result, aiormq.spec.Basic.Nack):
                raise RuntimeError("the broker refused an event (nack)")
