"""At-least-once on the wire, exactly once to the caller: the outbox publishes again only what
the broker did not confirm, and a subscription drops repeats by the dedupe key."""

from __future__ import annotations

import asyncio
from typing import Any

import aiormq

from orbit_mq.subscribe import Seen
from orbit_mq.workers.journal import Journal
from orbit_mq.workers.outbox import Outbox


class FlakyChannel:
    """Confirms the first `confirm` publishes of each round, then fails the rest, as a channel
    whose connection drops part-way through a round of confirms."""

    def __init__(self, confirm: list[int]) -> None:
        self.rounds = list(confirm)
        self.published: list[tuple[str, bytes]] = []
        self._left = 0

    async def get(self, timeout: float | None = None) -> FlakyChannel:
        self._left = self.rounds.pop(0) if self.rounds else 10**6
        return self

    async def basic_publish(self, body: bytes, **kwargs: Any) -> Any:
        self.published.append((kwargs["properties"].message_id, body))
        await asyncio.sleep(0)
        if self._left <= 0:
            raise aiormq.exceptions.ConnectionClosed(320, "CONNECTION_FORCED")
        self._left -= 1
        return aiormq.spec.Basic.Ack(delivery_tag=len(self.published))


async def test_only_unconfirmed_events_are_published_again_as_exact_copies() -> None:
    journal = Journal(None)
    channel = FlakyChannel(confirm=[3, 1])  # 3 of 6 confirmed, then 1 of 3, then all
    outbox = Outbox(journal, channel.get)  # type: ignore[arg-type]
    for seq in range(1, 7):
        outbox.add("orbit.events", "ep.psij.job_status", b'{"seq":%d}' % seq, f"job:{seq}")
    outbox.start()
    assert await outbox.drain(timeout=10)
    await outbox.stop()
    keys = [key for key, _ in channel.published]
    assert keys == [f"job:{n}" for n in (1, 2, 3, 4, 5, 6, 4, 5, 6, 5, 6)]
    assert outbox.republished == 5
    bodies: dict[str, set[bytes]] = {}
    for key, body in channel.published:
        bodies.setdefault(key, set()).add(body)
    assert all(len(copies) == 1 for copies in bodies.values())  # a repeat is an exact copy
    assert journal.pending_events() == []


def test_seen_drops_repeats_and_older_numbers_of_a_sequence() -> None:
    seen = Seen()
    key = "ep.psij.job_status"
    delivered = [
        message_id
        for message_id in ["a:1", "a:2", "a:1", "a:2", "a:3", "b:1", "a:3", "a:4", "x", "x"]
        if seen.first_time(key, message_id)
    ]
    assert delivered == ["a:1", "a:2", "a:3", "b:1", "a:4", "x"]
    assert seen.first_time("ep.psij.job_output", "a:stdout:0")  # offsets start at 0
    assert not seen.first_time("ep.psij.job_output", "a:stdout:0")
    assert seen.first_time(key, None) and seen.first_time(key, None)  # no key: always new


def test_seen_is_bounded() -> None:
    seen = Seen(size=100)
    for number in range(1000):
        assert seen.first_time("k", f"id-{number}-x")
    assert len(seen._ids) == 100
