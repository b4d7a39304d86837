"""How a batch job really ended, from the scheduler's accounting, for jobs whose end PSI/J cannot
tell.

PSI/J's batch executors take a job that left the queue for COMPLETED and read its exit code from
the `.ec` file the job's script writes last. A job cancelled, killed at its time limit or lost
with its node while the endpoint was away leaves no such file, and would be reported COMPLETED
without an exit code. For those the endpoint asks the scheduler:

- Slurm: `sacct -j ID -X -n -P -o State,ExitCode` (accounting), else `scontrol show job -o ID`
  (which knows a finished job for MinJobAge, 300 s by default);
- PBS: `qstat -x -f -F json ID` (job history).

A job none of them knows ends FAILED saying so: never COMPLETED on a guess. Blocking: call it
in a thread.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from orbit_mq.contracts.psij.models import JobState
from orbit_mq.workers.plugins.queue_info.base import command_environment

COMMAND_TIMEOUT = 20.0  # s per scheduler command


@dataclass(frozen=True)
class Accounted:
    state: JobState
    exit_code: int | None
    message: str | None = None


Run = Callable[[list[str]], str | None]  # a command's stdout, None where it failed


def run(argv: list[str]) -> str | None:
    env = command_environment()  # the C locale, no format overrides: output as parsed here
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, env=env, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def accounted(executor: str, native_id: str, runner: Run = run) -> Accounted | None:
    """How the scheduler says `native_id` ended; None where it cannot say (or it still runs)."""
    if executor == "slurm":
        return _slurm(native_id, runner)
    if executor == "pbs":
        return _pbs(native_id, runner)
    return None


# -- Slurm -------------------------------------------------------------------------------------

_SLURM_FAILED = {
    "FAILED": "the job failed",
    "TIMEOUT": "the job reached its time limit",
    "NODE_FAIL": "a node of the job failed",
    "OUT_OF_MEMORY": "the job ran out of memory",
    "BOOT_FAIL": "the job's nodes failed to boot",
    "DEADLINE": "the job reached its deadline",
    "PREEMPTED": "the job was preempted",
}


def _slurm(native_id: str, runner: Run) -> Accounted | None:
    out = runner(["sacct", "-j", native_id, "-X", "-n", "-P", "-o", "State,ExitCode"])
    if out and out.strip():
        state, _, code = out.strip().splitlines()[0].partition("|")
        return _slurm_outcome(state, code, "sacct")
    out = runner(["scontrol", "show", "job", "-o", native_id])
    if out:
        fields = dict(re.findall(r"(\w+)=(\S*)", out))
        if "JobState" in fields:
            return _slurm_outcome(fields["JobState"], fields.get("ExitCode", ""), "scontrol")
    return None


def _slurm_outcome(state: str, code: str, source: str) -> Accounted | None:
    """`COMPLETED` / `0:0`, `CANCELLED by 1000` / `0:15`, `TIMEOUT` / `0:0` …"""
    name = state.split()[0].rstrip("+") if state.strip() else ""
    status = code.partition(":")[0]
    exit_code = int(status) if status.isdigit() and int(status) else None
    said = f"({source}: {state.strip()}, exit code {code or 'unknown'})"
    if name == "COMPLETED":
        # The exit code Slurm keeps is that of PSI/J's job script, which records the
        # program's own in the exit-code file and then ends 0: with that file gone, the
        # program's is unknown.
        return Accounted(
            JobState.FAILED,
            None,
            f"the job's script completed, but its exit-code file is gone: the program's exit "
            f"code is unknown {said}",
        )
    if name == "CANCELLED":
        return Accounted(JobState.CANCELED, exit_code, f"cancelled at the scheduler {said}")
    if name in _SLURM_FAILED:
        return Accounted(JobState.FAILED, exit_code, f"{_SLURM_FAILED[name]} {said}")
    return None  # PENDING, RUNNING, … : not ended as far as the scheduler knows


# -- PBS ---------------------------------------------------------------------------------------


def _pbs(native_id: str, runner: Run) -> Accounted | None:
    out = runner(["qstat", "-x", "-f", "-F", "json", native_id])
    if not out:
        return None
    try:
        jobs = json.loads(out).get("Jobs", {})
    except ValueError:
        return None
    record = next(iter(jobs.values()), None) if isinstance(jobs, dict) else None
    if not isinstance(record, dict) or record.get("job_state") not in ("F", "X"):
        return None
    code = record.get("Exit_status")
    if not isinstance(code, int):
        return None
    said = f"(qstat -x: Exit_status {code})"
    if code == 0:
        return Accounted(JobState.COMPLETED, 0)
    if code < 0:  # PBS's own codes: the job never ran, or was killed by PBS
        return Accounted(JobState.FAILED, code, f"PBS could not run the job {said}")
    if code >= 256:  # 256 + signal: killed, e.g. by qdel or at its walltime
        return Accounted(JobState.FAILED, code, f"killed by signal {code - 256} {said}")
    return Accounted(JobState.FAILED, code, f"exit code {code} {said}")
