"""Turning what an executor reports into the gap-free sequence of states a job's events carry.

Executors skip states (a quick job may be seen COMPLETED straight after NEW), repeat them, and
report some late (a local attach says QUEUED and ACTIVE again). Clients get every state once,
in order, numbered 1, 2, 3 … per job, and nothing after a terminal state.
"""

from __future__ import annotations

from dataclasses import dataclass

from orbit_mq.contracts.psij.models import JobState

_RANK = {
    JobState.NEW: 0,
    JobState.QUEUED: 1,
    JobState.STAGE_IN: 2,
    JobState.ACTIVE: 3,
    JobState.STAGE_OUT: 4,
    JobState.CLEANUP: 5,
    JobState.COMPLETED: 6,
    JobState.FAILED: 6,
    JobState.CANCELED: 6,
}
# States that can only be reached from one other state (as PSI/J's JobStateOrder has it);
# FAILED and CANCELED can follow any non-terminal state. The staging states are recorded only
# as a job's wrapper reports them, never filled in.
_PREVIOUS = {
    JobState.QUEUED: JobState.NEW,
    JobState.ACTIVE: JobState.QUEUED,
    JobState.COMPLETED: JobState.ACTIVE,
}


@dataclass(frozen=True)
class Step:
    """One state to record and announce, with its number in the job's sequence."""

    seq: int
    state: JobState


def effective_state(reported: JobState, cancel_requested: bool) -> JobState:
    """The state to show: once a cancel was asked for, the job ends CANCELED even where the
    scheduler reports it FAILED or COMPLETED (PBS sites report cancelled jobs that way)."""
    if cancel_requested and reported in (JobState.COMPLETED, JobState.FAILED):
        return JobState.CANCELED
    return reported


def plan(current: JobState | None, seq: int, target: JobState) -> list[Step]:
    """The steps from `current` (None before the job exists) to `target`, numbered after `seq`.

    Missing intermediate states are filled in; a target at or below the current state, or
    anything after a terminal state, gives no steps.
    """
    if current is not None and (current.final or _RANK[target] <= _RANK[current]):
        return []
    floor = -1 if current is None else _RANK[current]
    states = [target]
    while (previous := _PREVIOUS.get(states[0])) is not None and _RANK[previous] > floor:
        states.insert(0, previous)
    if current is None and states[0] is not JobState.NEW:
        states.insert(0, JobState.NEW)  # every job's first event is NEW
    return [Step(seq + i, state) for i, state in enumerate(states, start=1)]
