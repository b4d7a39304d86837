"""Units of the psij plugin without a broker: state filling and numbering, the spec model
(PSI/J's JSON form included), output reading, executor configuration, and the tracker driven
by a fake executor."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psij
import pytest
from psij.executors.batch.slurm import SlurmExecutorConfig
from psij.serialize import JSONSerializer
from pydantic import BaseModel, ValidationError

from orbit_mq.contracts.psij import ExecutorUnavailable, JobSpec, JobState
from orbit_mq.contracts.psij.models import parse_duration
from orbit_mq.workers.journal import Journal
from orbit_mq.workers.plugins.psij import executors as ex
from orbit_mq.workers.plugins.psij import files
from orbit_mq.workers.plugins.psij.monitor import recover
from orbit_mq.workers.plugins.psij.states import Step, effective_state, plan
from orbit_mq.workers.plugins.psij.store import JobRow, JobStore
from orbit_mq.workers.plugins.psij.tracker import LiveJob, Report, Tracker

NEW, QUEUED, ACTIVE = JobState.NEW, JobState.QUEUED, JobState.ACTIVE
COMPLETED, FAILED, CANCELED = JobState.COMPLETED, JobState.FAILED, JobState.CANCELED

# -- states ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "seq", "target", "expected"),
    [
        (None, 0, NEW, [NEW]),
        (None, 0, ACTIVE, [NEW, QUEUED, ACTIVE]),
        (None, 0, FAILED, [NEW, FAILED]),
        (NEW, 1, COMPLETED, [QUEUED, ACTIVE, COMPLETED]),
        (NEW, 1, FAILED, [FAILED]),  # refused at submission
        (QUEUED, 2, CANCELED, [CANCELED]),  # cancelled while queued
        (QUEUED, 2, COMPLETED, [ACTIVE, COMPLETED]),  # a poll missed the running phase
        (ACTIVE, 3, QUEUED, []),  # late or repeated reports are dropped
        (ACTIVE, 3, ACTIVE, []),
        (COMPLETED, 4, FAILED, []),  # nothing after the end
        (CANCELED, 3, COMPLETED, []),
    ],
)
def test_plan_fills_gaps_and_numbers_steps(
    current: JobState | None, seq: int, target: JobState, expected: list[JobState]
) -> None:
    steps = plan(current, seq, target)
    assert steps == [Step(seq + i, state) for i, state in enumerate(expected, start=1)]


def test_a_requested_cancel_wins_over_the_schedulers_end() -> None:
    assert effective_state(COMPLETED, cancel_requested=True) is CANCELED
    assert effective_state(FAILED, cancel_requested=True) is CANCELED
    assert effective_state(ACTIVE, cancel_requested=True) is ACTIVE
    assert effective_state(FAILED, cancel_requested=False) is FAILED


# -- the spec model --------------------------------------------------------------------------


def _error(data: dict[str, Any]) -> tuple[str, str]:
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(data)
    first = caught.value.errors()[0]
    return ".".join(map(str, first["loc"])), first["msg"]


def test_spec_errors_name_the_field() -> None:
    assert _error({"executable": "/bin/true", "bogus": 1}) == (
        "bogus",
        "Extra inputs are not permitted",
    )
    assert _error({"executable": "x", "attributes": {"queue": "q"}})[0] == "attributes.queue"
    loc, message = _error(
        {"executable": "x", "resources": {"node_count": 2, "process_count": 3,
                                          "processes_per_node": 2}}
    )  # fmt: skip
    assert loc == "resources" and "process_count (3)" in message and "node_count (2)" in message
    loc, message = _error({"executable": "x", "resources": {"process_count": 3,
                                                             "processes_per_node": 2}})  # fmt: skip
    assert "multiple of processes_per_node" in message
    assert _error({"executable": ""})[0] == "executable"


def test_spec_accepts_what_psij_accepts() -> None:
    spec = JobSpec.model_validate(
        {
            "executable": "/bin/true",
            "environment": {"N": 3},
            "resources": {"node_count": 2, "processes_per_node": 4, "exclusive_node_access": True},
            "attributes": {"duration": timedelta(minutes=2)},
        }
    )
    assert spec.environment == {"N": "3"}
    assert spec.resources is not None and spec.resources.exclusive_node_use
    assert spec.attributes.duration == 120


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90.0 s", 90), ("90s", 90), ("2h", 7200), ("1d", 86400), ("01:30:15", 5415),
     ("01:30", 5400), ("15", 900), ("1.5 m", 90)],
)  # fmt: skip
def test_durations_read_like_psij_walltimes(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_bad_durations_are_refused() -> None:
    for bad in ("soon", "1:2:3:4", "-5 s", "3 weeks"):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)
    assert _error({"executable": "x", "attributes": {"duration": 0}})[0] == "attributes.duration"


def _psij_spec() -> psij.JobSpec:
    return psij.JobSpec(
        executable="/bin/echo",
        arguments=["a", "b"],
        directory="/tmp",
        environment={"A": "1"},
        stdout_path="/tmp/out",
        resources=psij.ResourceSpecV1(node_count=2, processes_per_node=2, exclusive_node_use=True),
        attributes=psij.JobAttributes(
            duration=timedelta(seconds=90),
            queue_name="debug",
            account="proj",
            custom_attributes={"slurm.constraint": "x", "n": 3},
        ),
        launcher="single",
    )


def test_psij_json_form_is_accepted_as_object_string_and_psij_spec() -> None:
    text = JSONSerializer().dumps(_psij_spec())
    assert '"__version": 1' in text and '"90.0 s"' in text and "project_name" in text
    forms = [json.loads(text), text, _psij_spec()]
    specs = [JobSpec.model_validate(form) for form in forms]
    assert specs[0] == specs[1] == specs[2]
    spec = specs[0]
    assert (spec.executable, spec.arguments, spec.directory) == ("/bin/echo", ["a", "b"], "/tmp")
    assert spec.resources is not None and spec.resources.node_count == 2
    assert spec.resources.exclusive_node_use
    attributes = spec.attributes
    assert (attributes.duration, attributes.queue_name, attributes.account) == (90, "debug", "proj")
    assert attributes.custom_attributes == {"slurm.constraint": "x", "n": 3}
    assert (spec.launcher, spec.stdout_path, spec.environment) == ("single", "/tmp/out", {"A": "1"})


def test_psij_json_form_errors() -> None:
    assert "ResourceSpecV1" in _error({"executable": "x", "resources": {"__version": 2}})[1]
    with pytest.raises(ValidationError, match="must be JSON"):
        JobSpec.model_validate("{not json")
    text = JSONSerializer().dumps(psij.JobSpec(executable="/bin/true"))
    assert JobSpec.model_validate(text).executable == "/bin/true"


# -- files -----------------------------------------------------------------------------------


def test_utf8_prefix_never_splits_a_character() -> None:
    euro = "€".encode()  # three bytes
    assert files.utf8_prefix(b"ab" + euro) == 5
    assert files.utf8_prefix(b"ab" + euro[:2]) == 2
    assert files.utf8_prefix(b"ab" + euro[:1]) == 2
    assert files.utf8_prefix("é".encode()) == 2
    assert files.utf8_prefix(b"") == 0


def test_output_pages_and_tails_cut_at_characters(tmp_path: Path) -> None:
    path = tmp_path / "out"
    path.write_bytes(("€" * 10).encode())  # 30 bytes
    assert files.read_page(path, 0, 4, complete=False) == ("€", 3)
    assert files.read_page(path, 3, 100, complete=True) == ("€" * 9, 30)
    assert files.read_page(path, 30, 10, complete=True) == ("", 30)
    assert files.read_page(path, 2**53 - 1, 10, complete=True) == ("", 2**53 - 1)  # far past
    assert files.read_tail(path, 4) == "€"  # starts inside a character: skipped
    assert files.read_page(tmp_path / "missing", 5, 10, complete=True) == ("", 5)
    assert files.read_tail(tmp_path / "missing") == ""


def test_exit_code_file(tmp_path: Path) -> None:
    path = tmp_path / "exit_code"
    assert files.read_exit_code(path) is None
    path.write_text("")  # being written
    assert files.read_exit_code(path) is None
    path.write_text("7\n")
    assert files.read_exit_code(path) == 7


def test_local_wrapper_records_the_exit_code(tmp_path: Path) -> None:
    exit_file = tmp_path / "exit_code"
    spec = JobSpec(executable="/bin/sh", arguments=["-c", "echo hi; exit 7"])
    wrapped = ex.psij_spec(spec, tmp_path, tmp_path / "o", tmp_path / "e", exit_file)
    assert wrapped.executable == "/bin/sh" and wrapped.name == "/bin/sh"
    assert wrapped.arguments is not None
    done = subprocess.run([wrapped.executable, *wrapped.arguments], capture_output=True)
    assert (done.returncode, done.stdout, files.read_exit_code(exit_file)) == (7, b"hi\n", 7)


def test_local_problems_are_named(tmp_path: Path) -> None:
    assert ex.local_problem(JobSpec(executable="/bin/true"), tmp_path) is None
    assert ex.local_problem(JobSpec(executable="true"), tmp_path) is None
    assert "not found" in str(ex.local_problem(JobSpec(executable="/no/x"), tmp_path))
    assert "PATH" in str(ex.local_problem(JobSpec(executable="no-such-x"), tmp_path))
    (tmp_path / "tool").write_text("#!/bin/sh\n")
    relative = JobSpec(executable="./tool")
    assert "not executable" in str(ex.local_problem(relative, tmp_path))
    (tmp_path / "tool").chmod(0o755)
    assert ex.local_problem(relative, tmp_path) is None
    assert ex.local_problem(JobSpec(executable="x", pre_launch="/etc/x"), tmp_path) is None
    nowhere = tmp_path / "no"
    assert "does not exist" in str(ex.local_problem(JobSpec(executable="/bin/true"), nowhere))


# -- executors -------------------------------------------------------------------------------


def test_installed_executors_and_unknown_ones(tmp_path: Path) -> None:
    pool = ex.ExecutorPool(tmp_path, {}, 5)
    assert {"local", "slurm", "pbs"} <= set(pool.available)
    assert "flux" not in pool.available or _imports("flux")
    with pytest.raises(ExecutorUnavailable, match=r"available: .*local") as refused:
        pool.check("nope")
    assert refused.value.details["executor"] == "nope"


def _imports(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def test_executor_config_layers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORBIT_MQ_PSIJ_SLURM_QUEUE_POLLING_INTERVAL", "2")
    monkeypatch.setenv("ORBIT_MQ_PSIJ_SLURM_KEEP_FILES", "yes")
    monkeypatch.setenv("ORBIT_MQ_PSIJ_SLURM_INITIAL_QUEUE_POLLING_DELAY", "soon")  # ignored
    configured = {"slurm": {"queue_polling_interval": 9, "queue_polling_error_threshold": 4,
                            "no_such_option": 1}}  # fmt: skip
    pool = ex.ExecutorPool(tmp_path, configured, 5)
    config = pool.config("slurm")
    # psij loads executor modules by path, so its SlurmExecutorConfig is a class of its own.
    assert type(config).__name__ == SlurmExecutorConfig.__name__
    assert (config.queue_polling_interval, config.keep_files) == (2, True)  # env wins
    assert (config.queue_polling_error_threshold, config.initial_queue_polling_delay) == (4, 1)
    assert config.work_directory == tmp_path
    local = pool.config("local")
    assert type(local) is psij.JobExecutorConfig and local.work_directory == tmp_path
    ready = SlurmExecutorConfig(queue_polling_interval=3)
    assert ex.ExecutorPool(tmp_path, {"slurm": ready}, 5).config("slurm") is ready


def test_site_custom_attributes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORBIT_MQ_PSIJ_PBS_CUSTOM_ATTRIBUTES", '{"pbs.filesystems": "home"}')
    merged = ex.site_custom_attributes("pbs", {"pbs.l": "x", "pbs.filesystems": "eagle"})
    assert merged == {"pbs.l": "x", "pbs.filesystems": "home"}
    monkeypatch.setenv("ORBIT_MQ_PSIJ_PBS_CUSTOM_ATTRIBUTES", "[1]")
    assert ex.site_custom_attributes("pbs", {}) == {}


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

    async def emit(self, topic: str, data: BaseModel) -> None:
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


@pytest.mark.parametrize(
    "spec",
    [
        {"resources": {"node_count": True}},
        {"resources": {"memory": False}},
        {"attributes": {"duration": True}},
    ],
)
def test_numbers_in_a_job_spec_refuse_booleans(spec: dict[str, Any]) -> None:
    with pytest.raises(ValidationError, match="not a boolean"):
        JobSpec.model_validate({"executable": "/bin/true", **spec})
