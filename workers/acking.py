"""The one place a request delivery is acknowledged.

A request is acked once it is answered, or `ack_within` seconds after it arrived, whichever
comes first. The bound keeps every delivery far below the broker's `consumer_timeout` (30 min
by default, less at some sites): a channel holding a delivery longer than that is closed by
the broker, and every request it had not acked is delivered again. A long call acked early
is protected by the journal instead of by redelivery (dedupe and job records, see
docs/reliability.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

from aiormq.abc import DeliveredMessage

from orbit_mq.lanes import quietly
from orbit_mq.workers.logs import bounded_logger

log = bounded_logger("orbit_mq.endpoint")


class Settlement:
    """The fate of one delivery: acked (at most once) or handed back to the queue."""

    def __init__(self, message: DeliveredMessage) -> None:
        self._channel = message.channel
        self._tag = cast(int, message.delivery_tag)
        self.acked = False

    async def ack(self) -> None:
        if self.acked:
            return
        self.acked = True
        # The delivery's own channel: after a reconnection it is closed and the ack is not
        # sent (a tag never reaches a newer channel); the broker has put the request back.
        # wait=False: the ack joins the reply in one socket write (broker._CorkedWriter).
        await quietly(self._channel.basic_ack(self._tag, wait=False))

    async def requeue(self) -> None:
        if not self.acked:
            self.acked = True
            await quietly(self._channel.basic_reject(self._tag, requeue=True))


@asynccontextmanager
async def settled(message: DeliveredMessage, ack_within: float) -> AsyncIterator[Settlement]:
    """Ack the delivery when the block ends (answered, or failed in a way that retrying cannot
    fix: never requeued forever), or after `ack_within` s if the block is still running.
    Cancelled (the endpoint is stopping), an unacked delivery goes back to the queue."""
    settlement = Settlement(message)
    loop = asyncio.get_running_loop()
    early: list[asyncio.Task[None]] = []
    timer = loop.call_later(ack_within, lambda: early.append(loop.create_task(settlement.ack())))
    try:
        yield settlement
    except asyncio.CancelledError:
        timer.cancel()
        await settlement.requeue()
        raise
    except Exception:
        log.exception("request %s could not be handled; acking it", settlement._tag)
    finally:
        timer.cancel()
    await settlement.ack()
