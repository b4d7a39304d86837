"""Units of the psij plugin without a broker: state filling and numbering, the spec model
(PSI/J's JSON form included), output reading and executor configuration (the tracker:
tests/test_psij_tracker_unit.py)."""

from __future__ import annotations

import json
import subprocess
from datetime import timedelta
from pathlib import Path
from typing import Any

import psij
import pytest
from psij.executors.batch.slurm import SlurmExecutorConfig
from psij.serialize import JSONSerializer
from pydantic import ValidationError

from orbit_mq.contracts.psij import ExecutorUnavailable, JobSpec, JobState
from orbit_mq.contracts.psij.models import parse_duration
from orbit_mq.workers.plugins.psij import executors as ex
from orbit_mq.workers.plugins.psij import files
from orbit_mq.workers.plugins.psij.states import Step, effective_state, plan

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
    """Under a launcher other than the endpoint's, a /bin/sh wrapper records the status."""
    exit_file = tmp_path / "exit_code"
    spec = JobSpec(executable="/bin/sh", arguments=["-c", "echo hi; exit 7"], launcher="multiple")
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
