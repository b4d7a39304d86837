"""What the endpoint's journal guarantees: repeated requests run once, sessions outlive a
restart, and events written to the outbox are published even if they were left by a crash."""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import StartEndpoint

import orbit_mq
from orbit_mq.protocol import EVENTS_EXCHANGE, Event, event_key
from orbit_mq.workers.journal import REPLY_RETENTION, Journal, journal_path


async def test_repeated_message_id_runs_once(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str
) -> None:
    await start_endpoint()
    first = await fabric.call(name, "echo", "bump", message_id="req-1")
    again = await fabric.call(name, "echo", "bump", message_id="req-1")
    other = await fabric.call(name, "echo", "bump", message_id="req-2")
    assert (first, again, other) == (1, 1, 2)


async def test_concurrent_repeats_wait_for_the_first(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str
) -> None:
    await start_endpoint()
    results = await asyncio.gather(
        *(fabric.call(name, "echo", "bump", {"pause": 0.2}, message_id="same") for _ in range(5))
    )
    assert results == [1] * 5


async def test_stored_replies_survive_an_endpoint_restart(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str
) -> None:
    endpoint = await start_endpoint()
    assert await fabric.call(name, "echo", "bump", message_id="kept") == 1
    await endpoint.stop()
    await start_endpoint()
    assert await fabric.call(name, "echo", "bump", message_id="kept") == 1
    assert await fabric.call(name, "echo", "bump", message_id="new") == 1  # a fresh counter


async def test_sessions_survive_an_endpoint_restart(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str
) -> None:
    endpoint = await start_endpoint()
    echo = await fabric.endpoint(name).plugin("echo")
    assert await echo.remember(value="a") == ["a"]
    await endpoint.stop()
    await start_endpoint()
    assert await echo.remember(value="b") == ["a", "b"]
    assert (await echo.health()).sessions == 1


async def test_events_left_in_the_outbox_are_published_at_start(
    start_endpoint: StartEndpoint, fabric: orbit_mq.Fabric, name: str, settings: orbit_mq.Settings
) -> None:
    # What a crashed endpoint leaves: events committed to its outbox but never confirmed.
    journal = Journal(journal_path(settings.home, name))
    for seq in (1, 2):
        event = Event(endpoint=name, plugin="echo", topic="tick", data={"seq": seq})
        key = event_key(name, "echo", "tick", fabric.user)
        journal.add_event(EVENTS_EXCHANGE, key, event.model_dump_json().encode(), f"left:{seq}")
    journal.close()
    async with fabric.subscribe(f"{name}.echo.tick") as ticks:
        await start_endpoint()
        await fabric.call(name, "echo", "emit_many", {"count": 1})
        async with asyncio.timeout(10):
            seqs = []
            async for event in ticks:
                seqs.append(event.data["seq"])
                if len(seqs) == 3:
                    break
    assert seqs == [1, 2, 1]  # the leftovers first, in order


def test_journal_outbox_is_ordered_and_emptied(tmp_path: pytest.TempPathFactory) -> None:
    journal = Journal(None)
    ids = [journal.add_event("x", f"k{i}", b"{}", f"m{i}") for i in range(3)]
    assert [entry.routing_key for entry in journal.pending_events()] == ["k0", "k1", "k2"]
    journal.published(ids[:2])
    assert [entry.id for entry in journal.pending_events()] == ids[2:]


async def test_stored_replies_are_forgotten_after_their_retention() -> None:
    journal = Journal(None)
    await journal.store_reply("echo", "alice", "old", b"{}")
    assert journal.forget_old_replies(now=time.time() + REPLY_RETENTION + 1) == 1
    assert journal.stored_reply("echo", "alice", "old") is None


async def test_a_stored_reply_is_its_callers_alone() -> None:
    journal = Journal(None)
    await journal.store_reply("echo", "alice", "same", b"1")
    await journal.store_reply("echo", "bob", "same", b"2")  # his own; hers stays
    assert journal.stored_reply("echo", "alice", "same") == b"1"
    assert journal.stored_reply("echo", "bob", "same") == b"2"
    assert journal.stored_reply("echo", "carol", "same") is None


async def test_replies_stored_in_one_turn_share_a_statement_and_its_commit() -> None:
    journal = Journal(None)
    statements: list[str] = []
    journal.db.set_trace_callback(statements.append)
    await asyncio.gather(*(journal.store_reply("echo", "alice", f"m{i}", b"r") for i in range(50)))
    writes = [s for s in statements if s.startswith(("INSERT", "BEGIN", "COMMIT"))]
    assert [w.split(" ")[0] for w in writes] == ["BEGIN", "INSERT", "COMMIT"]
    assert all(journal.stored_reply("echo", "alice", f"m{i}") == b"r" for i in range(50))
    # inside a transaction another holds open across an await: they commit together
    journal.db.execute("BEGIN IMMEDIATE")
    await journal.store_reply("echo", "alice", "late", b"r")
    journal.db.execute("ROLLBACK")
    assert journal.stored_reply("echo", "alice", "late") is None
