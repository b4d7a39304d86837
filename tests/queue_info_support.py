"""Shared by the queue_info unit tests: recorded scheduler outputs and a scripted runner."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from orbit_mq.contracts.queue_info import CommandFailed
from orbit_mq.workers.plugins.queue_info.base import CommandResult

DATA = Path(__file__).parent / "data" / "queue_info"


def recorded(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def env_file(name: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in recorded(name).splitlines() if "=" in line)
    return {key: value for key, value in pairs}


class Scripted:
    """A command runner answering from a table: argv[0] (or the whole argv) → output or error."""

    def __init__(self, answers: dict[str, str | Exception]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []
        self.called = asyncio.Event()

    async def __call__(self, argv: Sequence[str]) -> CommandResult:
        self.calls.append(list(argv))
        self.called.set()
        answer = self.answers.get(" ".join(argv[:2]), self.answers.get(argv[0]))
        if answer is None:
            raise CommandFailed.of(argv[0], 127, f"{argv[0]}: not scripted")
        if isinstance(answer, Exception):
            raise answer
        return CommandResult(answer, "")
