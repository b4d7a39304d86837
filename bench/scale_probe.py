"""What bench/scale.py sees as a client: the presence traffic on orbit.topology, and discovery,
both through `Fabric.endpoints()` and as the arrival times of every answer to one request."""

from __future__ import annotations

import asyncio
import statistics
import time
from contextlib import suppress
from typing import Any

import aiormq
from support import percentile

import orbit_mq
from orbit_mq.lanes import spare_channel
from orbit_mq.protocol import DISCOVER_KEY, REPLY_TO, RPC_EXCHANGE, TOPOLOGY_EXCHANGE
from orbit_mq.wire import discovery_properties

DEFAULT_ROUNDS = 3  # Fabric.endpoints() calls with the default window
LONG_ROUNDS = 2  # and with the long one


async def heartbeat_traffic(fabric: orbit_mq.Fabric, seconds: float) -> dict[str, Any]:
    """Every presence message on orbit.topology for `seconds` s: count and body bytes by kind
    (the routing key's last word: heartbeat, online, offline)."""
    kinds: dict[str, int] = {}
    sizes: list[int] = []

    async def counted(message: aiormq.abc.DeliveredMessage) -> None:
        kind = (message.routing_key or "").rsplit(".", 1)[-1]
        kinds[kind] = kinds.get(kind, 0) + 1
        sizes.append(len(message.body))

    async with spare_channel(fabric.connection, "presence sample", 30) as amqp:
        declared = await amqp.queue_declare("", exclusive=True, auto_delete=True)
        assert declared.queue is not None
        await amqp.queue_bind(declared.queue, TOPOLOGY_EXCHANGE, routing_key="#")
        began = time.perf_counter()
        await amqp.basic_consume(declared.queue, counted, no_ack=True)
        await asyncio.sleep(seconds)  # the sampling period itself
        elapsed = time.perf_counter() - began
    return {
        "seconds": round(elapsed, 2),
        "messages": len(sizes),
        "by_kind": kinds,
        "msg_per_s": round(len(sizes) / elapsed, 1),
        "bytes_per_s": round(sum(sizes) / elapsed, 1),
        "body_bytes_mean": round(statistics.fmean(sizes), 1) if sizes else 0,
    }


async def answer_times(fabric: orbit_mq.Fabric, prefix: str, count: int, window: float) -> Any:
    """One discovery request (the message Fabric.endpoints() sends, with a `window` s expiry),
    the arrival of every answer from the fleet `prefix` in ms, until all `count` came or the
    window ended."""
    arrivals: dict[str, float] = {}
    everyone = asyncio.Event()
    needle = f'"endpoint":"{prefix}-'.encode()

    async def on_answer(message: aiormq.abc.DeliveredMessage) -> None:
        if needle in message.body:
            name = message.body.split(needle, 1)[1].split(b'"', 1)[0].decode()
            arrivals.setdefault(name, 1000 * (time.perf_counter() - sent))
            if len(arrivals) >= count:
                everyone.set()

    async with spare_channel(fabric.connection, "discovery probe", 30) as amqp:
        await amqp.basic_consume(REPLY_TO, on_answer, no_ack=True)
        properties = discovery_properties(fabric.user, window)
        sent = time.perf_counter()
        await amqp.basic_publish(
            b"{}", exchange=RPC_EXCHANGE, routing_key=DISCOVER_KEY, properties=properties
        )
        with suppress(TimeoutError):  # the window ended before every answer came
            await asyncio.wait_for(everyone.wait(), window)
    times = list(arrivals.values())
    return {
        "window_s": window,
        "answered": len(times),
        "first_ms": round(min(times), 1) if times else None,
        "p50_ms": round(percentile(times, 0.5), 1) if times else None,
        "p90_ms": round(percentile(times, 0.9), 1) if times else None,
        "last_ms": round(max(times), 1) if times else None,
    }


async def seen(fabric: orbit_mq.Fabric, prefix: str, window: float | None) -> dict[str, Any]:
    began = time.perf_counter()
    found = await fabric.endpoints(window)
    elapsed = time.perf_counter() - began
    ours = sum(1 for info in found if info.endpoint.startswith(f"{prefix}-"))
    return {"seen": ours, "seconds": round(elapsed, 2)}


async def discovery(fabric: orbit_mq.Fabric, prefix: str, count: int, long: float) -> Any:
    """When the answers to one request arrive (the probe, waiting up to `long` s for all), then
    Fabric.endpoints() with the default window, each call after a quiet `long` s (the answers
    of the one before are all in), then back to back (the endpoints may still be answering the
    call before), then with the long window."""
    answers = await answer_times(fabric, prefix, count, long)
    spaced = []
    for _ in range(DEFAULT_ROUNDS):
        spaced.append(await seen(fabric, prefix, None))
        await asyncio.sleep(long)  # a quiet period between samples, not a synchronisation
    back_to_back = [await seen(fabric, prefix, None) for _ in range(DEFAULT_ROUNDS)]
    await asyncio.sleep(long)  # the back-to-back answers die out before the long calls
    longer = [await seen(fabric, prefix, long) for _ in range(LONG_ROUNDS)]
    return {
        "expected": count,
        "answers": answers,
        "default_window_s": fabric.settings.discovery_window,
        "default_window_spaced": spaced,
        "default_window_back_to_back": back_to_back,
        "long_window_s": long,
        "long_window": longer,
    }
