"""Discovery's collection: the window, then on while answers keep coming, within a bound."""

from __future__ import annotations

import asyncio

from orbit_mq.client import DISCOVERY_STRETCH, _collect


async def answers(answered: asyncio.Event, count: int, every: float, sent: list[int]) -> None:
    for _ in range(count):
        await asyncio.sleep(every)
        sent.append(1)
        answered.set()


async def test_answers_still_coming_after_the_window_are_waited_for() -> None:
    answered, sent = asyncio.Event(), list[int]()
    producer = asyncio.create_task(answers(answered, 12, 0.05, sent))
    await _collect(0.1, answered)  # 0.1 s window; answers go on for 0.6 s, 0.05 s apart
    assert len(sent) >= 11, sent  # it waited for (nearly) all of them
    await producer


async def test_a_quiet_end_of_the_window_ends_discovery_and_a_flood_is_bounded() -> None:
    answered, sent = asyncio.Event(), list[int]()
    answered.set()  # early answers only
    await _collect(0.3, answered)
    assert not sent
    loop = asyncio.get_running_loop()
    endless = asyncio.create_task(answers(answered, 10_000, 0.01, sent))
    started = loop.time()
    await _collect(0.05, answered)
    endless.cancel()
    assert loop.time() - started < 0.05 * DISCOVERY_STRETCH + 0.5
