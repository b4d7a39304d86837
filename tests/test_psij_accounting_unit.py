"""What the scheduler's accounting says about a job PSI/J saw only leave the queue (the
commands are faked: their output is the real format of Slurm 22.05 and PBS Pro 2022)."""

from __future__ import annotations

import json

import pytest

from orbit_mq.contracts.psij import JobState
from orbit_mq.workers.plugins.psij.accounting import accounted


def answers(**by_command: str | None):  # type: ignore[no-untyped-def]
    """A runner answering each command (by its name) with the given stdout; None: it failed."""
    asked: list[list[str]] = []

    def run(argv: list[str]) -> str | None:
        asked.append(argv)
        return by_command.get(argv[0])

    run.asked = asked  # type: ignore[attr-defined]
    return run


@pytest.mark.parametrize(
    ("sacct", "state", "code", "words"),
    [
        ("CANCELLED by 1000|0:15\n", JobState.CANCELED, None, "cancelled at the scheduler"),
        ("TIMEOUT|0:0\n", JobState.FAILED, None, "time limit"),
        ("OUT_OF_MEMORY|0:125\n", JobState.FAILED, None, "out of memory"),
        ("FAILED|2:0\n", JobState.FAILED, 2, "failed"),
        ("COMPLETED|0:0\n", JobState.FAILED, None, "exit code is unknown"),
    ],
)
def test_slurm_accounting(sacct: str, state: JobState, code: int | None, words: str) -> None:
    found = accounted("slurm", "42", answers(sacct=sacct))
    assert found is not None and (found.state, found.exit_code) == (state, code)
    assert found.message and words in found.message and "sacct" in found.message


def test_without_accounting_slurm_is_asked_with_scontrol() -> None:
    line = "JobId=42 JobName=x JobState=CANCELLED Reason=None ExitCode=0:15 RunTime=00:00:03\n"
    run = answers(sacct=None, scontrol=line)
    found = accounted("slurm", "42", run)
    assert found is not None and found.state is JobState.CANCELED
    assert [argv[0] for argv in run.asked] == ["sacct", "scontrol"]


@pytest.mark.parametrize("sacct", ["RUNNING|0:0\n", "PENDING|0:0\n", ""])
def test_a_job_not_ended_or_unknown_is_not_guessed(sacct: str) -> None:
    assert accounted("slurm", "42", answers(sacct=sacct, scontrol=None)) is None


@pytest.mark.parametrize(
    ("exit_status", "state", "words"),
    [
        (0, JobState.COMPLETED, None),
        (3, JobState.FAILED, "exit code 3"),
        (271, JobState.FAILED, "signal 15"),
        (-1, JobState.FAILED, "could not run"),
    ],
)
def test_pbs_history(exit_status: int, state: JobState, words: str | None) -> None:
    record = {"Jobs": {"42.pbs": {"job_state": "F", "Exit_status": exit_status}}}
    found = accounted("pbs", "42.pbs", answers(qstat=json.dumps(record)))
    assert found is not None and found.state is state
    assert (found.message is None) if words is None else (words in (found.message or ""))


def test_pbs_job_still_running_is_not_guessed() -> None:
    record = {"Jobs": {"42.pbs": {"job_state": "R"}}}
    assert accounted("pbs", "42.pbs", answers(qstat=json.dumps(record))) is None
    assert accounted("local", "1", answers()) is None
