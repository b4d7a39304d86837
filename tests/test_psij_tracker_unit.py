"""Units of the psij plugin's tracker without a broker: transitions filled, ordered and
journaled, cancels during submission, and recovery after a restart, driven by a fake
executor."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psij
import pytest
from pydantic import BaseModel

from orbit_mq.contracts.psij import JobState
from orbit_mq.workers.journal import Journal
from orbit_mq.workers.plugins.psij import files
from orbit_mq.workers.plugins.psij.endings import Report
from orbit_mq.workers.plugins.psij.monitor import recover
from orbit_mq.workers.plugins.psij.states import Step
from orbit_mq.workers.plugins.psij.store import JobRow, JobStore
from orbit_mq.workers.plugins.psij.tracker import LiveJob, Tracker

NEW, QUEUED, ACTIVE = JobState.NEW, JobState.QUEUED, JobState.ACTIVE
COMPLETED, FAILED, CANCELED = JobState.COMPLETED, JobState.FAILED, JobState.CANCELED

# -- the tracker, with a fake executor -------------------------------------------------------


class FakeExecutor:
    """Submits nothing; the test sets the job's psij status as a scheduler would."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.release.set()
        self.canceled: list[str] = []

    def submit(self, job: psij.Job) -> None:
        assert self.release.wait(10)
        job.executor = self  # type: ignore[assignment]
        job._native_id = "42"
        job.status = psij.JobStatus(psij.JobState.QUEUED)

    def cancel(self, job: psij.Job) -> None:
        self.canceled.append(job.id)

    def _notify_callback(self, job: psij.Job, status: psij.JobStatus) -> None:
        """psij's Job calls this on its executor after every status change."""


class FakePool:
    def __init__(self) -> None:
        self.executor = FakeExecutor()
        self.available = ["fake"]

    def get(self, name: str) -> FakeExecutor:
        return self.executor


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.journal = Journal(None)
        self.store = JobStore(self.journal.db)
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.pool = FakePool()
        self.tracker = Tracker(self.journal, self.store, self.emit, self.pool)  # type: ignore[arg-type]
        self.tmp_path = tmp_path

    async def emit(
        self, topic: str, data: BaseModel, key: str | None = None, *, owner: str | None = None
    ) -> None:
        assert self.journal.db.in_transaction  # journaled together with the state
        self.events.append((topic, data.model_dump(mode="json")))

    def job(self) -> LiveJob:
        psij_job = psij.Job()
        root = self.tmp_path / psij_job.id
        now = time.time()
        row = JobRow(
            job_id=psij_job.id, executor="fake", native_id=None, state=NEW, seq=1,
            exit_code=None, message=None, submitted=now, updated=now, name="x", session=None,
            user="u", cancel_requested=False, stream_output=False, stdout_sent=0,
            stderr_sent=0, spec={"executable": "/bin/true"}, job_dir=root,
            stdout_path=root / "stdout", stderr_path=root / "stderr", exit_file=None,
        )  # fmt: skip
        files.JobDir(root).prepare(b"{}")
        spec = psij.JobSpec(executable="/bin/true")
        return LiveJob(row, psij_job=psij_job, psij_spec=spec)

    def states(self, job_id: str) -> list[tuple[int, str]]:
        return [(d["seq"], d["state"]) for topic, d in self.events if d["job_id"] == job_id]


async def test_tracker_fills_orders_and_journals(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.tracker.start()
    job = rig.job()
    await (await rig.tracker.create([job]))  # recorded, then handed to the executor
    job_id = job.row.job_id
    rig.tracker.report(job_id, Report(COMPLETED, time.time(), exit_code=0))
    rig.tracker.report(job_id, Report(ACTIVE, time.time()))  # late: dropped
    rig.tracker.report(job_id, Report(FAILED, time.time()))  # after the end: dropped
    await asyncio.wait_for(job.done.wait(), 5)
    await rig.tracker.barrier()
    expected = [(1, "NEW"), (2, "QUEUED"), (3, "ACTIVE"), (4, "COMPLETED")]
    assert rig.states(job_id) == expected
    assert rig.events[-1][1]["exit_code"] == 0 and rig.events[1][1]["native_id"] == "42"
    row = rig.store.get(job_id)
    assert row is not None and (row.state, row.seq, row.native_id) == (COMPLETED, 4, "42")
    assert [(entry.seq, entry.state.value) for entry in rig.store.history(job_id)] == expected
    lines = (job.row.job_dir / "status.jsonl").read_text().splitlines()
    assert [(json.loads(line)["seq"], json.loads(line)["state"]) for line in lines] == expected
    assert job_id not in rig.tracker.live
    await rig.tracker.stop()


async def test_cancel_during_submission_reaches_the_executor(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.tracker.start()
    job = rig.job()
    rig.pool.executor.release.clear()  # the submission hangs until released
    submitting = await rig.tracker.create([job])
    async with asyncio.timeout(5):
        while not job.row.handed:  # noqa: ASYNC110 (set in a thread: nothing to await)
            await asyncio.sleep(0.01)
    await rig.tracker.cancel(job.row.job_id)  # the executor does not have the job yet
    assert rig.pool.executor.canceled == []
    rig.pool.executor.release.set()
    await submitting
    assert rig.pool.executor.canceled == [job.row.job_id]
    # The scheduler reports the job finished anyway: it was asked to cancel, so CANCELED.
    rig.tracker.report(job.row.job_id, Report(FAILED, time.time(), exit_code=143))
    await asyncio.wait_for(job.done.wait(), 5)
    assert rig.states(job.row.job_id) == [(1, "NEW"), (2, "QUEUED"), (3, "CANCELED")]
    assert rig.events[-1][1]["message"] == "canceled on request"
    assert rig.store.get(job.row.job_id).cancel_requested  # type: ignore[union-attr]
    await rig.tracker.stop()


async def test_a_refused_submission_fails_with_the_reason(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.tracker.start()
    job = rig.job()

    def refuse(psij_job: psij.Job) -> None:
        raise psij.SubmitException("sbatch: error: invalid partition")

    rig.pool.executor.submit = refuse  # type: ignore[method-assign]
    await (await rig.tracker.create([job]))
    await asyncio.wait_for(job.done.wait(), 5)
    assert rig.states(job.row.job_id) == [(1, "NEW"), (2, "FAILED")]
    assert "invalid partition" in rig.events[-1][1]["message"]
    await rig.tracker.stop()


# -- recovery after a restart ----------------------------------------------------------------


def _attach(executor: FakeExecutor, job: psij.Job, native_id: str) -> None:
    job.executor = executor  # type: ignore[assignment]
    job._native_id = native_id
    job.status = psij.JobStatus(psij.JobState.ACTIVE)


async def _recovered(rig: Rig, **changes: Any) -> LiveJob:
    """A job the journal knows as ACTIVE, taken back by `recover` after a restart."""
    job = rig.job()
    for key, value in changes.items():
        setattr(job.row, key, value)
    rig.store.insert(job.row)
    rig.store.mark_handed(job.row.job_id)
    if job.row.cancel_requested:
        rig.store.mark_cancel(job.row.job_id)
    for step in (Step(2, QUEUED), Step(3, ACTIVE)):
        rig.store.record(job.row.job_id, step, time.time())
    (row,) = rig.store.unfinished()
    revived = LiveJob(row, psij_spec=job.psij_spec)
    await recover(rig.tracker, [revived])
    await rig.tracker.barrier()
    return revived


def _dead_pid() -> str:
    process = subprocess.Popen(["/bin/true"])
    process.wait()
    return str(process.pid)


@pytest.mark.parametrize(
    ("changes", "state", "exit_code", "message"),
    [
        ({"native_id": None}, "FAILED", None, "may or may not have started"),
        ({"native_id": "1", "executor": "gone"}, "FAILED", None, "no longer available"),
        ({"native_id": "dead", "exit_file": "5"}, "FAILED", 5, "exit code 5"),
        ({"native_id": "dead", "exit_file": "0"}, "COMPLETED", 0, None),
        ({"native_id": "dead", "exit_file": None}, "FAILED", None, "left no exit code"),
    ],
)
async def test_recovery_ends_what_cannot_be_reattached(
    tmp_path: Path, changes: dict[str, Any], state: str, exit_code: int | None, message: str
) -> None:
    rig = Rig(tmp_path)
    rig.tracker.start()
    if changes.get("native_id") == "dead":  # a local job whose process is gone
        changes["native_id"] = _dead_pid()
        recorded, changes["exit_file"] = changes["exit_file"], tmp_path / "exit_code"
        if recorded is not None:
            changes["exit_file"].write_text(recorded)
    job = await _recovered(rig, **changes)
    await asyncio.wait_for(job.done.wait(), 5)
    last = rig.events[-1][1]
    assert (last["seq"], last["state"], last["exit_code"]) == (4, state, exit_code)
    if message:
        assert message in last["message"]
    await rig.tracker.stop()


async def test_recovery_reattaches_and_repeats_a_requested_cancel(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    executor = rig.pool.executor
    executor.attach = lambda job, native_id: _attach(executor, job, native_id)  # type: ignore[attr-defined]
    rig.tracker.start()
    job = await _recovered(rig, native_id="77", cancel_requested=True)
    assert job.attached and job.submitted and job.row.job_id in rig.tracker.live
    assert job.psij_job is not None and rig.pool.executor.canceled == [job.psij_job.id]
    job.psij_job.status = psij.JobStatus(psij.JobState.COMPLETED, exit_code=0)
    await asyncio.wait_for(job.done.wait(), 5)
    assert rig.states(job.row.job_id) == [(4, "CANCELED")]  # its earlier events went before
    await rig.tracker.stop()


async def test_recovery_submits_a_job_accepted_but_never_handed_over(tmp_path: Path) -> None:
    """What an endpoint that stopped right after recording a job leaves: NEW, never handed to
    its executor. The next start submits it, under its recorded id."""
    rig = Rig(tmp_path)
    rig.tracker.start()
    job = rig.job()
    rig.store.insert(job.row)
    (row,) = rig.store.unfinished()
    assert not row.handed
    revived = LiveJob(row, psij_spec=job.psij_spec)
    await recover(rig.tracker, [revived])
    await rig.tracker.barrier()
    assert revived.submitted and revived.psij_job is not None
    assert revived.psij_job.id == row.job_id  # the launcher's command line carries it
    assert rig.states(row.job_id) == [(2, "QUEUED")]
    assert rig.store.get(row.job_id).handed  # type: ignore[union-attr]
    await rig.tracker.stop()


async def test_a_job_cancelled_before_its_handover_is_never_submitted(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.tracker.start()
    job = rig.job()
    job.row.cancel_requested = True
    rig.store.insert(job.row)
    rig.store.mark_cancel(job.row.job_id)
    (row,) = rig.store.unfinished()
    revived = LiveJob(row, psij_spec=job.psij_spec)
    rig.pool.executor.submit = lambda psij_job: pytest.fail("submitted")  # type: ignore[method-assign]
    await recover(rig.tracker, [revived])
    await asyncio.wait_for(revived.done.wait(), 5)
    assert rig.states(row.job_id) == [(2, "CANCELED")]
    await rig.tracker.stop()


@pytest.mark.parametrize("update_from", [True, False])
def test_steps_recorded_together_match_steps_recorded_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, update_from: bool
) -> None:
    """JobStore.record_many (one statement for many rows; UPDATE … FROM where SQLite has it)
    leaves the journal as `record` and `set_native_id` step by step do."""
    from orbit_mq.workers.plugins.psij import store as store_module

    monkeypatch.setattr(store_module, "UPDATE_FROM", update_from)
    one_by_one, together = Rig(tmp_path / "a"), Rig(tmp_path / "b")
    jobs = [one_by_one.job() for _ in range(3)]
    for rig in (one_by_one, together):
        for job in jobs:
            rig.store.insert(job.row)
    a, b, c = (job.row.job_id for job in jobs)
    now = time.time()
    steps = [
        (a, Step(2, QUEUED), now, None, "waits for a node"),
        (b, Step(2, QUEUED), now, None, None),
        (a, Step(3, ACTIVE), now + 1, None, None),
        (b, Step(3, FAILED), now + 2, 5, "exit code 5"),
    ]
    for job_id, step, when, exit_code, message in steps:
        one_by_one.store.record(job_id, step, when, exit_code=exit_code, message=message)
    for job_id, native_id in ((a, "10"), (c, "12")):
        one_by_one.store.set_native_id(job_id, native_id)
    together.store.record_many(steps, {a: "10", c: "12"})
    for job_id in (a, b, c):
        assert together.store.get(job_id) == one_by_one.store.get(job_id)
        assert together.store.history(job_id) == one_by_one.store.history(job_id)
    assert together.store.get(a).message == "waits for a node"  # type: ignore[union-attr]


async def test_jobs_of_concurrent_requests_are_recorded_and_handed_once_each(
    tmp_path: Path,
) -> None:
    """Creates that wait together share a transaction; the hand-over takes them in batches,
    each job submitted once, with its directory and first status line made before."""
    rig = Rig(tmp_path)
    rig.tracker.start()
    submitted: list[str] = []
    submit = rig.pool.executor.submit

    def counting(psij_job: psij.Job) -> None:
        spec = json.loads((tmp_path / psij_job.id / "spec.json").read_text())
        assert spec == {"executable": "/bin/true"}  # written in the same thread call, before
        submitted.append(psij_job.id)
        submit(psij_job)

    rig.pool.executor.submit = counting  # type: ignore[method-assign]
    requests = [[rig.job() for _ in range(7)] for _ in range(5)]
    handing = await asyncio.gather(*(rig.tracker.create(jobs) for jobs in requests))
    await asyncio.gather(*handing)
    await rig.tracker.barrier()
    ids = [job.row.job_id for jobs in requests for job in jobs]
    assert sorted(submitted) == sorted(ids)
    for job_id in ids:
        assert rig.states(job_id)[:2] == [(1, "NEW"), (2, "QUEUED")]
        row = rig.store.get(job_id)
        assert row is not None and row.handed and row.native_id == "42"
        lines = (tmp_path / job_id / "status.jsonl").read_text().splitlines()
        assert [json.loads(line)["state"] for line in lines][:2] == ["NEW", "QUEUED"]
    await rig.tracker.stop()


async def test_a_request_whose_rows_are_refused_fails_alone(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    rig.tracker.start()
    taken, fine = rig.job(), rig.job()
    taken.row.request_key = "key"
    await (await rig.tracker.create([taken]))
    repeat = rig.job()
    repeat.row.request_key = "key"  # a request key another job has: refused by the journal
    results = await asyncio.gather(
        rig.tracker.create([repeat]), rig.tracker.create([fine]), return_exceptions=True
    )
    assert isinstance(results[0], sqlite3.IntegrityError)
    await results[1]  # type: ignore[misc]
    assert rig.store.get(repeat.row.job_id) is None and rig.store.get(fine.row.job_id)
    assert repeat.row.job_id not in rig.tracker.live
    await rig.tracker.stop()


async def test_a_job_cancelled_before_its_hand_over_gets_its_directory_only(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path)
    rig.tracker.start()
    job = rig.job()
    job.row.cancel_requested = True
    await (await rig.tracker.create([job]))
    await asyncio.wait_for(job.done.wait(), 5)
    assert rig.states(job.row.job_id) == [(1, "NEW"), (2, "CANCELED")]
    row = rig.store.get(job.row.job_id)
    assert row is not None and not row.handed and job.psij_job.executor is None  # type: ignore[union-attr]
    lines = (job.row.job_dir / "status.jsonl").read_text().splitlines()
    assert [json.loads(line)["state"] for line in lines] == ["NEW", "CANCELED"]
    assert json.loads((job.row.job_dir / "spec.json").read_text()) == job.row.spec
    await rig.tracker.stop()
