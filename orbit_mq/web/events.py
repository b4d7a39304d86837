"""`GET /api/v1/events`: a user's events as server-sent events that survive a reconnection.

Each (user, pattern set) has one `Stream`: the user's durable subscription
`orbit.sub.{owner}.web-{hash of the patterns}` (`Fabric.subscribe(..., durable=...)`), consumed
while at least one browser listens, and a log of the events taken from it, numbered 1, 2, 3 …
Every event goes out with `id: {token}.{n}` (`token`: the stream's, new in each gateway
process). A browser that reconnects sends the last id it got as `Last-Event-ID` and receives
every logged event after it, then the live ones. Nothing falls between: while nobody listens
the subscription is closed and its queue keeps the events on the broker; every event taken
from the queue (acked) is in the log first. The log keeps the last LOG_SIZE events, and lives
as long as the user's connection (see `identity.Users.idle`); when that closes, so does the
durable queue. See docs/explorer.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections import OrderedDict, deque
from collections.abc import AsyncIterator
from contextlib import suppress

from orbit_mq.client import Fabric
from orbit_mq.errors import OrbitError
from orbit_mq.lanes import spare_channel
from orbit_mq.protocol import Event
from orbit_mq.subscribe import Subscription
from orbit_mq.waiting import wait_within

log = logging.getLogger("orbit_mq.web")

LOG_SIZE = 10_000  # events a stream keeps for browsers that reconnect
SEEN_SIZE = 20_000  # event ids remembered to drop a redelivered event
KEEP_ALIVE = 15.0  # s between comment lines on a quiet stream (finds dead connections)
MAX_PATTERNS = 20
MAX_STREAMS = 16  # pattern sets (and so durable queues) per user


def stream_name(patterns: tuple[str, ...]) -> str:
    """The durable subscription's name: the same for the same set of patterns."""
    digest = hashlib.sha256("\n".join(sorted(set(patterns))).encode()).hexdigest()
    return f"web-{digest[:24]}"


def frame(event_id: str, event: Event) -> bytes:
    return f"id: {event_id}\ndata: {event.model_dump_json()}\n\n".encode()


class Stream:
    """One durable subscription of one user and the log of what was taken from it."""

    def __init__(self, fabric: Fabric, patterns: tuple[str, ...]) -> None:
        self.fabric = fabric
        self.patterns = patterns
        self.name = stream_name(patterns)
        self.token = secrets.token_hex(4)
        self.listeners = 0
        self.last = 0  # number of the newest event in the log
        self._log: deque[tuple[int, Event]] = deque(maxlen=LOG_SIZE)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._queue: str | None = None
        self.ended = False  # the subscription failed, or the connection closed: listeners end

    # -- consuming -----------------------------------------------------------------------------

    async def attach(self) -> None:
        """One more listener; the first one starts consuming (errors: the subscribe's)."""
        if self._task is None:
            subscription = self.fabric.subscribe(*self.patterns, durable=self.name)
            await subscription.start()
            self._queue = subscription.queue_name
            self._task = asyncio.create_task(self._consume(subscription))
        self.listeners += 1

    async def detach(self) -> None:
        """One listener fewer; after the last one the subscription is closed, its queue keeps
        what follows."""
        self.listeners -= 1
        if self.listeners <= 0 and self._task is not None:
            await self.stop()

    async def stop(self) -> None:
        """Stop consuming: what the browsers have not been sent stays in the queue."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # shielded: when the caller is cancelled too (a browser that went away), the task
            # must still finish closing its subscription, which returns undelivered events
            with suppress(asyncio.CancelledError):
                await asyncio.shield(task)

    async def _consume(self, subscription: Subscription[Event]) -> None:
        try:
            async with subscription:
                async for event in subscription:
                    self._append(event)
        except OrbitError as exc:
            log.warning("event stream %s ended: %s", self.name, exc)
            self.ended = True
        finally:
            self._wake()

    def _append(self, event: Event) -> None:
        if event.id is not None:
            if event.id in self._seen:
                return  # delivered again (an ack lost when the subscription closed)
            self._seen[event.id] = None
            while len(self._seen) > SEEN_SIZE:
                self._seen.popitem(last=False)
        self.last += 1
        self._log.append((self.last, event))
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def end(self) -> None:
        """Stop for good: the listeners' responses end (the browsers reconnect)."""
        self.ended = True
        await self.stop()
        self._wake()

    async def retire(self) -> None:
        """End, and delete the durable queue (the user's connection is closing when nobody
        listened for its idle time)."""
        await self.end()
        if self._queue is None:
            return
        with suppress(OrbitError, OSError, RuntimeError):
            async with spare_channel(self.fabric.connection, "web retire", 5) as amqp:
                await amqp.queue_delete(self._queue)

    # -- reading -------------------------------------------------------------------------------

    def start_after(self, last_event_id: str | None) -> int:
        """The number after which a listener starts: that of its Last-Event-ID when the id is
        this stream's; a new listener (no id) gets what comes from now on; an id of another
        stream (the gateway restarted) gets all that is still logged."""
        if not last_event_id:
            return self.last
        token, _, number = last_event_id.strip().partition(".")
        if token == self.token and number.isdigit():
            return min(int(number), self.last)
        return self._log[0][0] - 1 if self._log else self.last

    def after(self, number: int) -> list[tuple[int, Event]]:
        return [(n, event) for n, event in self._log if n > number]

    async def frames(self, after: int, keep_alive: float = KEEP_ALIVE) -> AsyncIterator[bytes]:
        """The SSE text: a `: subscribed` comment, then every event after `after`, for ever
        (comments every `keep_alive` s when quiet); ends if the subscription fails."""
        yield b"retry: 2000\n: subscribed\n\n"
        position = after
        while not self.ended:
            changed = self._changed
            for number, event in self.after(position):
                position = number
                yield frame(f"{self.token}.{number}", event)
            if self.after(position):
                continue
            try:
                await wait_within(changed.wait(), keep_alive)
            except TimeoutError:
                yield b": keep-alive\n\n"
