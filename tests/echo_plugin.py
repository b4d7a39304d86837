"""A plugin made for the tests: every kind of method the dispatcher must handle."""

from __future__ import annotations

import asyncio
import threading

from pydantic import BaseModel

from orbit_mq.errors import Conflict, NotFound
from orbit_mq.rpc import CallContext, Session, rpc
from orbit_mq.workers.plugin import Plugin


class ThingNotFound(NotFound):
    """A domain error, as plugins define them."""


class Point(BaseModel):
    x: int
    y: int


class Echo(Plugin):
    name = "echo"
    version = "9.9.9"
    errors = (ThingNotFound,)

    @rpc
    async def echo(self, text: str, times: int = 1) -> list[str]:
        """Repeat `text`."""
        return [text] * times

    @rpc
    async def add(self, point: Point, dx: int = 0) -> Point:
        return Point(x=point.x + dx, y=point.y)

    @rpc
    async def whoami(self, ctx: CallContext) -> dict[str, str | None]:
        return {"user": ctx.user, "message_id": ctx.message_id}

    async def start(self) -> None:
        self.sleeping = asyncio.Event()  # set while a `sleep` call runs: tests wait on it
        self.bumps = 0
        self.slow_runs = 0
        self.slow_finished = asyncio.Event()  # set whenever a `slow` call ends

    @rpc(dedupe=True)
    async def bump(self, pause: float = 0) -> int:
        """Not idempotent: counts its runs (dedupe makes a repeated message_id run once)."""
        self.bumps += 1
        seen = self.bumps
        await asyncio.sleep(pause)
        return seen

    @rpc
    async def sleep(self, seconds: float) -> float:
        self.sleeping.set()
        await asyncio.sleep(seconds)
        return seconds

    @rpc
    async def slow(self, seconds: float) -> int:
        """Not deduplicated: counts its runs, returns which run this was."""
        self.slow_runs += 1
        run = self.slow_runs
        await asyncio.sleep(seconds)
        self.slow_finished.set()
        return run

    @rpc
    def blocking_sleep(self, seconds: float) -> str:
        """A plain def: runs in a worker thread."""
        threading.Event().wait(seconds)
        return threading.current_thread().name

    @rpc
    async def fail(self, kind: str) -> None:
        if kind == "conflict":
            raise Conflict("already there", {"thing": 1})
        if kind == "domain":
            raise ThingNotFound("no such thing", {"thing": 2})
        raise ValueError(f"boom ({kind})")

    @rpc
    async def emit_many(self, count: int) -> int:
        for seq in range(1, count + 1):
            await self.emit("tick", {"seq": seq})
        return count

    @rpc
    async def remember(self, session: Session, value: str) -> list[str]:
        """Needs a session: keeps values per client."""
        values: list[str] = session.state.setdefault("values", [])
        values.append(value)
        return values

    @rpc
    async def big(self, size: int) -> str:
        return "x" * size
