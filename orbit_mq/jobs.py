"""Job handles: what `psij.submit_job(spec)` returns in the SDK.

    psij = await fabric.endpoint("hpc1").plugin("psij")
    job = await psij.submit_job(spec)
    async for status in job.watch():      # every transition, in order, exactly once
        print(status.seq, status.state)
    await job.wait()
    async for chunk in job.output(follow=True):
        print(chunk.text, end="")

`watch` subscribes to the job's `job_status` events and fills any gap (events missed while
the connection was down, or published before the subscription) from the endpoint's journal
(`get_job_status(...).history`), so no transition is lost or repeated.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orbit_mq.errors import CallTimeout, OrbitError, TransientError

if TYPE_CHECKING:
    from orbit_mq.protocol import Event
    from orbit_mq.proxy import PluginProxy
    from orbit_mq.subscribe import Subscription

TERMINAL = frozenset({"COMPLETED", "FAILED", "CANCELED"})
POLL_INTERVAL = 0.5  # s between output polls while following a running job
RECHECK_INTERVAL = 5.0  # s without an event after which `watch` reads the journal
NO_OUTPUT = 2**53 - 1  # an output offset no file reaches (and a safe JSON integer)
RECOVERY_WINDOW = 120.0  # s a re-check may keep failing (broker or endpoint restarting)
# What a re-check can meet while the broker or the endpoint is coming back.
TRANSIENT = (TransientError, CallTimeout, TimeoutError)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Transition:
    """One job state change."""

    job_id: str
    state: str
    seq: int
    time: str
    native_id: str | None = None
    exit_code: int | None = None
    message: str | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    @classmethod
    def from_data(cls, job_id: str, data: dict[str, Any]) -> Transition:
        return cls(
            job_id=job_id,
            state=str(data["state"]),
            seq=int(data["seq"]),
            time=str(data.get("time", "")),
            native_id=data.get("native_id"),
            exit_code=data.get("exit_code"),
            message=data.get("message"),
        )


@dataclass(frozen=True)
class OutputChunk:
    stream: str  # "stdout" or "stderr"
    offset: int
    text: str


def _field(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, dict) else getattr(value, name, None)


def _dump(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value
    dumped: dict[str, Any] = value.model_dump(mode="json")
    return dumped


class Job:
    """A job submitted through a psij plugin proxy."""

    def __init__(self, proxy: PluginProxy, info: Any) -> None:
        self.proxy = proxy
        self.info = info
        self.job_id: str = _field(info, "job_id")

    def __repr__(self) -> str:
        return f"<Job {self.job_id} on {self.proxy.endpoint} state={self.state}>"

    @classmethod
    async def attach(cls, psij: PluginProxy, job_id: str) -> Job:
        """A handle for a job submitted earlier (by anyone the endpoint serves):

        job = await orbit_mq.Job.attach(psij, "0b6f…")
        await job.wait()

        Raises `JobNotFound` (a `NotFound`) when the endpoint does not know the id."""
        job = cls(psij, {"job_id": job_id})
        await job.status()
        return job

    @property
    def state(self) -> str:
        state = _field(self.info, "state")
        return str(getattr(state, "value", state))

    @property
    def native_id(self) -> str | None:
        value: str | None = _field(self.info, "native_id")
        return value

    async def status(self, stdout_offset: int = 0, stderr_offset: int = 0) -> Any:
        """The job's full status (state, exit code, history, output from the offsets)."""
        status = await self.proxy.call(
            "get_job_status",
            {"job_id": self.job_id, "stdout_offset": stdout_offset, "stderr_offset": stderr_offset},
        )
        self.info = status
        return status

    async def cancel(self) -> Any:
        self.info = await self.proxy.call("cancel_job", {"job_id": self.job_id})
        return self.info

    async def watch(self) -> AsyncIterator[Transition]:
        """Every state transition from the first, in order, ending with the terminal one."""
        fabric, endpoint = self.proxy.fabric, self.proxy.endpoint
        last = 0
        async with fabric.subscribe(f"{endpoint}.psij.job_status") as events:
            # Subscribed first, then read the journal: nothing can fall between the two.
            pending = await self._history()
            failing_since: float | None = None
            while True:
                for transition in pending:
                    if transition.seq == last + 1:
                        last = transition.seq
                        yield transition
                        if transition.terminal:
                            return
                try:
                    pending = await self._after(events, last)
                    failing_since = None
                except TRANSIENT as exc:
                    failing_since = failing_since or time.monotonic()
                    if time.monotonic() - failing_since > RECOVERY_WINDOW:
                        raise
                    log.info("job %s: re-check failed (%s); trying again", self.job_id, exc)
                    pending = []

    async def _after(self, events: Subscription[Event], last: int) -> list[Transition]:
        """The transitions after `last`: from the next event of this job, or from the journal
        when that event shows a gap or none came for a while (events published while the
        subscription was being re-established after a broker restart never reach it)."""
        try:
            event = await asyncio.wait_for(self._next_event(events), RECHECK_INTERVAL)
        except TimeoutError:
            return await self._history_after(last)
        transition = Transition.from_data(self.job_id, event.data)
        if transition.seq <= last:
            return []  # already seen (a repeat after an endpoint crash)
        if transition.seq > last + 1:
            return await self._history_after(last)
        return [transition]

    async def _history_after(self, last: int) -> list[Transition]:
        # Bounded, so a call lost in a broker restart is retried at the next re-check.
        async with asyncio.timeout(RECHECK_INTERVAL * 2):
            return [t for t in await self._history() if t.seq > last]

    async def _next_event(self, events: Subscription[Event]) -> Event:
        async for event in events:
            if event.data.get("job_id") == self.job_id:
                return event
        raise OrbitError(f"job {self.job_id}: the event subscription ended")

    async def _history(self) -> list[Transition]:
        # Offsets past the end of the output: the state history without any of the output.
        status = _dump(await self.status(NO_OUTPUT, NO_OUTPUT))
        final = {key: status.get(key) for key in ("native_id", "exit_code", "message")}
        history = sorted(status.get("history") or [], key=lambda item: item["seq"])
        return [
            Transition.from_data(
                self.job_id,
                {
                    **item,
                    **(final if item["state"] in TERMINAL else {"native_id": final["native_id"]}),
                },
            )
            for item in history
        ]

    async def wait(self, timeout: float | None = None) -> Transition:
        """The terminal transition, waiting for it at most `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                async for transition in self.watch():
                    if transition.terminal:
                        return transition
        except TimeoutError:
            raise CallTimeout(f"job {self.job_id} did not finish within {timeout} s") from None
        raise CallTimeout(f"job {self.job_id}: its status events ended before a terminal state")

    async def output(self, follow: bool = False) -> AsyncIterator[OutputChunk]:
        """The job's stdout and stderr, page by page; with `follow`, also what is written
        later, until the job ends."""
        offsets = {"stdout": 0, "stderr": 0}
        while True:
            status = _dump(await self.status(offsets["stdout"], offsets["stderr"]))
            new = False
            for stream in ("stdout", "stderr"):
                text = status.get(stream) or ""
                if text:
                    new = True
                    yield OutputChunk(stream, offsets[stream], text)
                offsets[stream] = int(status.get(f"{stream}_offset") or offsets[stream])
            if not new and (not follow or str(status.get("state")) in TERMINAL):
                return  # everything written so far has been read (and, following, it ended)
            if not new:
                await asyncio.sleep(POLL_INTERVAL)  # polling the endpoint between writes


def job_handles(proxy: PluginProxy, result: Any) -> Any:
    """Turn submit results (one JobInfo or a list of them) into Job handles."""
    if isinstance(result, list):
        return [Job(proxy, info) for info in result]
    return Job(proxy, result)
