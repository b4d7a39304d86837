"""The endpoint's launcher for local jobs (workers/plugins/psij/launcher.py): PSI/J's single
launcher's contract, run for real by the shells it names and by PSI/J's local executor."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import psij
import pytest

from orbit_mq.contracts.psij import JobSpec
from orbit_mq.workers.plugins.psij import executors as ex
from orbit_mq.workers.plugins.psij import files
from orbit_mq.workers.plugins.psij import launcher as local

PROGRAM = JobSpec(executable="/bin/sh", arguments=["-c", "echo hi; echo oops >&2; exit 7"])


def launched(
    spec: JobSpec, tmp_path: Path, log_file: Path | None = None
) -> tuple[list[str], subprocess.CompletedProcess[str]]:
    """The spec the endpoint makes of `spec`, launched as PSI/J's local executor would."""
    exit_file = tmp_path / "exit_code"
    made = ex.psij_spec(spec, tmp_path, tmp_path / "out", tmp_path / "err", exit_file)
    config = psij.JobExecutorConfig(launcher_log_file=log_file, work_directory=tmp_path / "w")
    assert made.launcher is not None
    command = psij.Launcher.get_instance(made.launcher, config=config).get_launch_command(
        psij.Job(made)
    )
    env = {**os.environ, **{k: str(v) for k, v in (made.environment or {}).items()}}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=30)
    return command, done


def test_a_local_job_runs_under_sh_with_its_status_and_output(tmp_path: Path) -> None:
    made = ex.psij_spec(PROGRAM, tmp_path, tmp_path / "o", tmp_path / "e", tmp_path / "x")
    # no wrapper: the program is the job's own, the launcher records its status
    assert (made.launcher, made.executable) == (local.NAME, "/bin/sh")
    assert (made.environment or {})[local.EXIT_FILE_VARIABLE] == str(tmp_path / "x")
    command, done = launched(PROGRAM, tmp_path)
    assert command[0] == "/bin/sh"
    assert done.returncode == 7 and done.stdout.splitlines() == [local.DONE]
    assert (tmp_path / "out").read_text() == "hi\n" and (tmp_path / "err").read_text() == "oops\n"
    assert files.read_exit_code(tmp_path / "exit_code") == 7


def test_pre_and_post_launch_scripts_are_sourced_by_bash(tmp_path: Path) -> None:
    pre, post = tmp_path / "pre.sh", tmp_path / "post.sh"
    # bash-only syntax in both: PSI/J's own launcher is a bash script
    pre.write_text('declare -a seen=(pre); echo "${seen[0]}" > "$ORBIT_TEST_DIR/pre"\n')
    post.write_text('[[ -n "$_PSI_J_EC" ]] && echo "post $_PSI_J_EC" > "$ORBIT_TEST_DIR/post"\n')
    spec = PROGRAM.model_copy(
        update={
            "pre_launch": str(pre),
            "post_launch": str(post),
            "environment": {"ORBIT_TEST_DIR": str(tmp_path)},
        }
    )
    command, done = launched(spec, tmp_path)
    assert command[0] == "/bin/bash" and done.returncode == 7, done.stdout
    assert (tmp_path / "pre").read_text() == "pre\n"
    assert (tmp_path / "post").read_text() == "post 7\n"
    assert files.read_exit_code(tmp_path / "exit_code") == 7


def test_a_failing_pre_launch_is_a_launcher_failure(tmp_path: Path) -> None:
    pre = tmp_path / "pre.sh"
    pre.write_text("echo 'no module named compiler' >&2\nfalse\necho never\n")
    spec = PROGRAM.model_copy(update={"pre_launch": str(pre)})
    _, done = launched(spec, tmp_path)
    assert done.returncode != 0 and not (tmp_path / "out").exists()
    launcher = local.LocalLauncher(psij.JobExecutorConfig(work_directory=tmp_path / "w"))
    output = done.stdout + done.stderr
    assert launcher.is_launcher_failure(output)
    assert "no module named compiler" in launcher.get_launcher_failure_message(output)
    assert not launcher.is_launcher_failure(f"{local.DONE}\n")
    assert launcher.is_launcher_failure("") and launcher.is_launcher_failure("half a line")


def test_a_configured_log_file_gets_stamped_lines(tmp_path: Path) -> None:
    log = tmp_path / "launcher.log"
    command, done = launched(PROGRAM, tmp_path, log_file=log)
    assert command[0] == "/bin/bash" and done.returncode == 7
    lines = log.read_text().splitlines()
    assert any(line.endswith("Command done: 7") for line in lines), lines
    stamp, job_id = lines[0].split(" ")[:2], lines[0].split(" ")[2]
    assert len(stamp[0]) == 10 and len(stamp[1]) == 8 and job_id == command[2]


def test_other_launchers_keep_the_wrapper(tmp_path: Path) -> None:
    paths = (tmp_path / "o", tmp_path / "e", tmp_path / "x")
    wrapped = ex.psij_spec(PROGRAM.model_copy(update={"launcher": "multiple"}), tmp_path, *paths)
    assert wrapped.launcher == "multiple" and wrapped.executable == "/bin/sh"
    assert ex.EXIT_WRAPPER in (wrapped.arguments or [])
    assert local.EXIT_FILE_VARIABLE not in (wrapped.environment or {})
    batch = ex.psij_spec(PROGRAM, tmp_path, tmp_path / "o", tmp_path / "e", None)
    assert batch.launcher is None  # batch executors: PSI/J's launcher on the compute node


def test_the_script_is_deployed_once_by_content(tmp_path: Path) -> None:
    first = local.LocalLauncher(psij.JobExecutorConfig(work_directory=tmp_path))
    again = local.LocalLauncher(psij.JobExecutorConfig(work_directory=tmp_path))
    assert first.script == again.script and first.script.read_text() == local.SCRIPT
    assert [p.name for p in tmp_path.iterdir()] == [first.script.name]  # no partial left


@pytest.mark.timeout(60)
def test_psij_local_executor_runs_jobs_through_it(tmp_path: Path) -> None:
    """PSI/J's own executor: the launcher's DONE line and status are what it reads."""
    executor = psij.JobExecutor.get_instance(
        "local", config=psij.JobExecutorConfig(work_directory=tmp_path / "w")
    )
    ended: dict[str, psij.JobStatus] = {}
    all_ended = threading.Event()
    specs = {"ok": "exit 0", "seven": "exit 7", "pre": None}
    pre = tmp_path / "pre.sh"
    pre.write_text("echo 'module: not found' >&2\nfalse\n")

    def changed(job: psij.Job, status: psij.JobStatus) -> None:
        if status.final:
            ended[job.spec.name if job.spec else ""] = status
            if len(ended) == len(specs):
                all_ended.set()

    for name, script in specs.items():
        spec = ex.psij_spec(
            JobSpec(executable="/bin/sh", arguments=["-c", script or "exit 0"], name=name),
            tmp_path,
            tmp_path / f"{name}.out",
            tmp_path / f"{name}.err",
            tmp_path / f"{name}.exit",
        )
        if script is None:
            spec.pre_launch = pre
        job = psij.Job(spec)
        job.set_job_status_callback(changed)
        executor.submit(job)
    assert all_ended.wait(30), ended
    assert ended["ok"].state == psij.JobState.COMPLETED
    assert (ended["seven"].state, ended["seven"].exit_code) == (psij.JobState.FAILED, 7)
    assert ended["pre"].state == psij.JobState.FAILED
    assert "module: not found" in (ended["pre"].message or "")
    assert files.read_exit_code(tmp_path / "seven.exit") == 7


def test_a_spec_may_name_the_launcher() -> None:
    ex.check_launcher(JobSpec(executable="/bin/true", launcher=local.NAME))  # known to psij
    assert local.NAME in psij.Launcher.get_launcher_names()
