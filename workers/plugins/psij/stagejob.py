"""The job side of PSI/J staging: `python -m orbit_mq.workers.plugins.psij.stagejob PLAN`.

A job whose spec stages files runs this in place of its program, on the node the job runs on:
stage in, run the program, stage out, clean up, exit with the program's exit code (1 when a
stage failed). Each step is appended to the job directory's `staging.jsonl` as it begins
(`{"state": "STAGE_IN", "time": …}`), and a failure as `{"failed": "…"}`; the endpoint turns
those lines into the job's STAGE_IN, ACTIVE, STAGE_OUT and CLEANUP states. SIGTERM (a cancel)
goes to the program; the stage-outs marked on_cancel still run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from orbit_mq.contracts.psij.models import JobState
from orbit_mq.contracts.psij.staging import StageFlag, StageMode

STAGING_FAILED = 1


class StageError(Exception):
    pass


def main(plan_file: str) -> int:
    plan = json.loads(Path(plan_file).read_text())
    markers = Path(plan["markers"])

    def mark(**entry: Any) -> None:
        with markers.open("a") as out:
            out.write(json.dumps({**entry, "time": time.time()}) + "\n")

    try:
        if plan["stage_in"]:
            mark(state=JobState.STAGE_IN)
            for item in plan["stage_in"]:
                _transfer(item)
    except StageError as exc:
        mark(failed=f"stage in: {exc}")
        return STAGING_FAILED
    mark(state=JobState.ACTIVE)
    code, canceled = _run(plan["command"])
    outcome = StageFlag.ON_CANCEL if canceled else StageFlag.ON_SUCCESS
    if not canceled and code != 0:
        outcome = StageFlag.ON_ERROR
    failure = None
    outs = [item for item in plan["stage_out"] if outcome in item["flags"]]
    if outs:
        mark(state=JobState.STAGE_OUT)
        for item in outs:
            try:
                _transfer(item)
            except StageError as exc:
                failure = failure or f"stage out: {exc}"
    if plan["cleanup"] and outcome in plan["cleanup_flags"]:
        mark(state=JobState.CLEANUP)
        for path in plan["cleanup"]:
            _remove(Path(path))
    if failure is not None:
        mark(failed=failure)
        return code or STAGING_FAILED
    return code


def read_steps(path: Path) -> tuple[list[tuple[str, float]], str | None]:
    """The steps a job's stager wrote to `path` ((state, time), in order) and its failure."""
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return [], None
    steps: list[tuple[str, float]] = []
    failure = None
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:  # a line being written
            continue
        if "state" in entry:
            steps.append((entry["state"], float(entry["time"])))
        elif "failed" in entry:
            failure = str(entry["failed"])
    return steps, failure


def _run(command: list[str]) -> tuple[int, bool]:
    """Run the program; a SIGTERM to this process is passed on to it."""
    canceled = False
    try:
        child = subprocess.Popen(command)
    except OSError as exc:
        print(f"cannot run {command[0]}: {exc.strerror or exc}", file=sys.stderr)
        return 127, False

    def forward(signum: int, _: Any) -> None:
        nonlocal canceled
        canceled = True
        child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    code = child.wait()
    return (128 - code if code < 0 else code), canceled


def _transfer(item: dict[str, Any]) -> None:
    source, target = Path(item["source"]), Path(item["target"])
    if not source.exists() and not source.is_symlink():
        if StageFlag.IF_PRESENT in item["flags"]:
            return
        raise StageError(f"{source} does not exist")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if item["mode"] == StageMode.LINK:
            target.symlink_to(source.absolute())
        elif item["mode"] == StageMode.MOVE:
            shutil.move(source, target)
        elif source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            shutil.copy2(source, target)
    except OSError as exc:
        raise StageError(f"{source} → {target}: {exc.strerror or exc}") from None


def _remove(path: Path) -> None:
    # A missing path is no error for a cleanup (PSI/J's rule).
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(path)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
